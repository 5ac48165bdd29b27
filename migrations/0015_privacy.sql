-- Data protection: exports (one end user, or a whole tenant) as jobs with a ZIP at the end, and
-- deletions that leave nothing readable behind.

-- A deleted chunk's words leave the full-text index at once, instead of lingering in old index
-- segments until a merge (SQLite 3.42's FTS5 secure-delete).
INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('secure-delete', 1);

CREATE TABLE exports (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    -- NULL: the whole tenant. An erased end user's exports go with them.
    end_user_id      TEXT REFERENCES end_users(id) ON DELETE CASCADE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'ready', 'failed')),
    -- Who asked: `user:<id>`, `key:<id>` or `end_user` (from the chat page).
    requested_by     TEXT NOT NULL,
    -- The end user's download link (24 h), stored as SHA-256 like every other secret.
    link_hash        TEXT UNIQUE,
    bytes            INTEGER,
    error            TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at      TEXT,
    expires_at       TEXT
) STRICT;
CREATE INDEX exports_by_tenant ON exports(tenant_id, created_at);
