-- Access that ends when it should: access tokens carry the generation they were issued in, and
-- signing out everywhere or a new password moves it on, ending every open session at once.
ALTER TABLE users ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
