-- The knowledge base: uploaded documents, their chunks, full-text search over the chunks, the
-- chunks' embeddings, and the durable job queue that ingests documents.
-- The usearch files under index/ are a cache of chunk_vectors and are rebuilt from it.

CREATE TABLE documents (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    title            TEXT NOT NULL,
    filename         TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('pdf', 'docx', 'html', 'markdown', 'text')),
    size_bytes       INTEGER NOT NULL,
    sha256           TEXT NOT NULL,
    collection       TEXT,
    tags             TEXT NOT NULL DEFAULT '[]',     -- JSON array of strings
    status           TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    progress         REAL NOT NULL DEFAULT 0,        -- 0..1 while processing
    error            TEXT,                           -- for people, when failed
    page_count       INTEGER,
    chunk_count      INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ingested_at      TEXT
) STRICT;
CREATE INDEX documents_by_tenant ON documents(tenant_id, created_at);

CREATE TABLE chunks (
    id               INTEGER PRIMARY KEY,            -- also the key in the vector index
    tenant_id        TEXT NOT NULL,
    document_id      TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal          INTEGER NOT NULL,
    text             TEXT NOT NULL,
    heading_path     TEXT NOT NULL DEFAULT '',       -- "Chapter > Section", '' when none
    page             INTEGER,                        -- PDFs: 1-based page of the chunk's start
    char_start       INTEGER NOT NULL,               -- offsets in the document's extracted text
    char_end         INTEGER NOT NULL,
    token_count      INTEGER NOT NULL
) STRICT;
CREATE INDEX chunks_by_document ON chunks(document_id, ordinal);
CREATE INDEX chunks_by_tenant ON chunks(tenant_id);

-- BM25 over chunk text and headings; kept in step with chunks by the triggers below.
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, heading_path,
    content = 'chunks', content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading_path) VALUES (new.id, new.text, new.heading_path);
END;
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading_path)
    VALUES ('delete', old.id, old.text, old.heading_path);
END;
CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading_path)
    VALUES ('delete', old.id, old.text, old.heading_path);
    INSERT INTO chunks_fts(rowid, text, heading_path) VALUES (new.id, new.text, new.heading_path);
END;

-- One row per chunk and embedder ("name:dimensions"); little-endian f32 values.
CREATE TABLE chunk_vectors (
    chunk_id         INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    embedder         TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    vector           BLOB NOT NULL,
    PRIMARY KEY (chunk_id, embedder)
) STRICT, WITHOUT ROWID;
CREATE INDEX chunk_vectors_by_tenant ON chunk_vectors(tenant_id, embedder);

-- Where each embedder that made vectors was loaded from, so that after a change of embedder
-- the previous one can keep answering queries until every chunk is re-embedded.
CREATE TABLE embedders (
    key              TEXT PRIMARY KEY,               -- "name:dimensions"
    path             TEXT NOT NULL,
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- Durable background work. A worker claims a queued row; rows left 'running' by a crash are
-- queued again at start.
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    tenant_id        TEXT REFERENCES tenants(id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,                  -- e.g. 'ingest'
    subject_id       TEXT NOT NULL,                  -- e.g. the document id
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX jobs_pending ON jobs(status, id);
