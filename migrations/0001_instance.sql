-- Instance-wide facts and settings that belong to no tenant (the instance's id, setup state).
-- Tenant-owned tables come in later migrations and always carry tenant_id.
CREATE TABLE instance_settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

INSERT INTO instance_settings (key, value) VALUES ('instance_id', lower(hex(randomblob(16))));
