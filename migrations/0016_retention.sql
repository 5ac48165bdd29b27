-- Retention: how long a tenant keeps conversations, end users, exports and its audit log. A
-- NULL period keeps that kind of data until someone deletes it. The daily `retention` job
-- applies the policy and records its last run here.

CREATE TABLE retention_policies (
    tenant_id          TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    conversation_days  INTEGER CHECK (conversation_days IS NULL OR conversation_days >= 1),
    end_user_days      INTEGER CHECK (end_user_days IS NULL OR end_user_days >= 1),
    export_hours       INTEGER CHECK (export_hours IS NULL OR export_hours >= 1),
    -- The instance keeps at least 30 days of audit log, whatever a tenant asks.
    audit_days         INTEGER CHECK (audit_days IS NULL OR audit_days >= 30),
    last_run_at        TEXT,
    -- JSON: the rows the last run removed, per kind.
    last_result        TEXT,
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- The queries a run makes: the oldest rows of one tenant first.
CREATE INDEX end_users_by_activity ON end_users(tenant_id, last_active_at);
CREATE INDEX audit_log_by_tenant_time ON audit_log(tenant_id, created_at);
CREATE INDEX exports_by_expiry ON exports(tenant_id, expires_at);
