-- A knowledge gap is resolved when the team answers it (usually with a new document).
ALTER TABLE knowledge_gaps ADD COLUMN resolved_at TEXT;
ALTER TABLE knowledge_gaps ADD COLUMN document_id TEXT;
CREATE INDEX knowledge_gaps_open ON knowledge_gaps(tenant_id, resolved_at);
