-- Creators the instance owner suspended. (The owner's sign-up policy is stored in
-- instance_settings under 'signup' and wins over the configuration.)
ALTER TABLE tenants ADD COLUMN suspended_at TEXT;
