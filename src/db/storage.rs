//! Storage for quotas: what a tenant's stored originals take and the owner's limit for it.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;

/// A tenant's own quota setting (MB; `None`: the server's default) and the bytes it stores.
#[derive(Debug, Clone, Copy)]
pub struct TenantStorageRow {
    pub quota_mb: Option<i64>,
    pub used_bytes: i64,
}

pub trait StorageStore {
    /// `None` when there is no such tenant.
    fn tenant_storage(&self, tenant_id: &str) -> Result<Option<TenantStorageRow>, DbError>;
}

impl StorageStore for Connection {
    fn tenant_storage(&self, tenant_id: &str) -> Result<Option<TenantStorageRow>, DbError> {
        Ok(self
            .query_row(
                "SELECT t.storage_quota_mb,
                        (SELECT coalesce(sum(d.size_bytes), 0) FROM documents d WHERE d.tenant_id = t.id)
                 FROM tenants t WHERE t.id = ?1",
                params![tenant_id],
                |r| {
                    Ok(TenantStorageRow {
                        quota_mb: r.get(0)?,
                        used_bytes: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }
}
