-- The coach's settings, visitors, conversations, messages and knowledge gaps.

ALTER TABLE coaches ADD COLUMN persona TEXT NOT NULL DEFAULT '';
ALTER TABLE coaches ADD COLUMN greeting TEXT NOT NULL
    DEFAULT 'Hi! Ask me anything about the program.';
ALTER TABLE coaches ADD COLUMN confidence_threshold REAL NOT NULL DEFAULT 0.35;
ALTER TABLE coaches ADD COLUMN fallback_message TEXT NOT NULL
    DEFAULT 'I''m not sure about that one, and I''d rather not guess.';
ALTER TABLE coaches ADD COLUMN answer_length TEXT NOT NULL DEFAULT 'medium';  -- short|medium|long
ALTER TABLE coaches ADD COLUMN temperature REAL NOT NULL DEFAULT 0.2;
ALTER TABLE coaches ADD COLUMN redact_pii INTEGER NOT NULL DEFAULT 0;

-- An end user of a coach, known only by an opaque token (stored hashed).
CREATE TABLE visitors (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    token_hash       TEXT NOT NULL UNIQUE,
    origin           TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX visitors_by_tenant ON visitors(tenant_id);

-- A visitor's conversation, or a staff member's test conversation (user_id).
CREATE TABLE conversations (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    visitor_id       TEXT REFERENCES visitors(id) ON DELETE CASCADE,
    user_id          TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX conversations_by_tenant ON conversations(tenant_id, updated_at);
CREATE INDEX conversations_by_visitor ON conversations(visitor_id);

CREATE TABLE messages (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    tenant_id        TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content          TEXT NOT NULL,
    citations        TEXT NOT NULL DEFAULT '[]',     -- JSON array, assistant messages
    confidence       REAL,                           -- assistant messages, 0..1
    fallback         INTEGER NOT NULL DEFAULT 0,     -- 1: the coach said it does not know
    stats            TEXT,                           -- JSON: timings and token counts
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX messages_by_conversation ON messages(conversation_id);

-- Questions the coach could not answer from the knowledge base (PII masked).
CREATE TABLE knowledge_gaps (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    conversation_id  TEXT REFERENCES conversations(id) ON DELETE SET NULL,
    message_id       TEXT,
    question         TEXT NOT NULL,
    best_score       REAL NOT NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX knowledge_gaps_by_tenant ON knowledge_gaps(tenant_id, created_at);
