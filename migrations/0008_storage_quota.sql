-- Per-tenant storage quota for uploaded originals, set by the instance owner, in MB:
-- NULL follows the server's storage_quota_mb, 0 is unlimited.
ALTER TABLE tenants ADD COLUMN storage_quota_mb INTEGER CHECK (storage_quota_mb >= 0);
