-- Real-time chat: ordered messages (a sequence number per conversation, so a reconnecting client
-- asks for what it missed), staff replies and conversation events, client message ids (a message
-- resent after a dropped connection is stored once), human handoff, receipts, widget branding.

CREATE TABLE messages_v5 (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    tenant_id        TEXT NOT NULL,
    seq              INTEGER NOT NULL,               -- 1, 2, 3... within the conversation
    client_id        TEXT,                           -- chosen by the sending client, for de-duplication
    -- user: the end user; assistant: the AI coach; staff: a person of the team;
    -- event: something that happened (a person joined, a handoff was requested).
    role             TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'staff', 'event')),
    author_id        TEXT,                           -- staff messages: the user who wrote it
    author_name      TEXT,
    content          TEXT NOT NULL,
    citations        TEXT NOT NULL DEFAULT '[]',
    confidence       REAL,
    fallback         INTEGER NOT NULL DEFAULT 0,
    stats            TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

INSERT INTO messages_v5 (id, conversation_id, tenant_id, seq, role, content, citations,
                         confidence, fallback, stats, created_at)
SELECT id, conversation_id, tenant_id,
       row_number() OVER (PARTITION BY conversation_id ORDER BY rowid),
       role, content, citations, confidence, fallback, stats, created_at
FROM messages ORDER BY rowid;

DROP TABLE messages;
ALTER TABLE messages_v5 RENAME TO messages;
CREATE UNIQUE INDEX messages_by_conversation ON messages(conversation_id, seq);
CREATE UNIQUE INDEX messages_by_client_id ON messages(conversation_id, client_id)
    WHERE client_id IS NOT NULL;

-- ai: the coach answers; human: a person took over and the AI stays silent.
ALTER TABLE conversations ADD COLUMN mode TEXT NOT NULL DEFAULT 'ai';
ALTER TABLE conversations ADD COLUMN assigned_user_id TEXT REFERENCES users(id) ON DELETE SET NULL;
ALTER TABLE conversations ADD COLUMN handoff_requested_at TEXT;
-- The highest sequence number given out; messages are numbered in the same transaction.
ALTER TABLE conversations ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
-- Receipts: the highest sequence number each side has received and read.
ALTER TABLE conversations ADD COLUMN visitor_delivered_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN visitor_read_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN staff_delivered_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN staff_read_seq INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET last_seq =
    (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE messages.conversation_id = conversations.id);

-- The chat page's and widget's look.
ALTER TABLE coaches ADD COLUMN avatar_url TEXT NOT NULL DEFAULT '';
ALTER TABLE coaches ADD COLUMN brand_color TEXT NOT NULL DEFAULT '#2f6f5e';
ALTER TABLE coaches ADD COLUMN widget_position TEXT NOT NULL DEFAULT 'right';  -- left|right
-- Shown next to the widget's closed bubble to invite a first question; empty: none.
ALTER TABLE coaches ADD COLUMN opening_message TEXT NOT NULL DEFAULT '';
