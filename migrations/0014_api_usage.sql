-- Use of the OpenAI-compatible API (/v1), per tenant, day, credential and endpoint: what the
-- analytics screen shows a creator about their tools and scripts. One row is added to per call.
CREATE TABLE api_usage (
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    day                TEXT NOT NULL,              -- YYYY-MM-DD, UTC
    credential         TEXT NOT NULL,              -- `key:<api key id>` or `user:<user id>`
    label              TEXT NOT NULL,              -- the key's prefix or the member's email, as last seen
    endpoint           TEXT NOT NULL CHECK (endpoint IN ('chat.completions', 'embeddings')),
    requests           INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, credential, endpoint)
) STRICT, WITHOUT ROWID;
