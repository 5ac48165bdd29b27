//! Storage quotas: the bytes of a tenant's uploaded originals against its limit, which is the
//! owner's setting for that tenant (`tenants.storage_quota_mb`) or else the server's
//! `storage_quota_mb`. Zero means unlimited in both places.
//!
//! An upload is checked twice: while it streams in (against the room left when it started, so
//! a huge file stops at the quota, not at its end) and when its row is written, inside the same
//! IMMEDIATE transaction, so concurrent uploads cannot overshoot together.

use serde::Serialize;

use super::KnowledgeError;
use crate::auth::TenantScope;
use crate::db::DbError;
use crate::db::storage::StorageStore;

/// The built-in `storage_quota_mb`.
pub const DEFAULT_QUOTA_MB: u64 = 1024;

const MB: u64 = 1024 * 1024;

/// A tenant's stored originals and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StorageUse {
    /// Bytes of uploaded originals kept for the tenant.
    pub storage_used_bytes: u64,
    /// The limit in bytes; null when unlimited.
    pub storage_quota_bytes: Option<u64>,
}

impl StorageUse {
    /// Bytes that may still be stored; `None` when unlimited.
    pub fn room(&self) -> Option<u64> {
        self.storage_quota_bytes
            .map(|quota| quota.saturating_sub(self.storage_used_bytes))
    }

    /// Refuses `incoming` more bytes when they do not fit.
    pub fn admit(&self, incoming: u64) -> Result<(), KnowledgeError> {
        match self.storage_quota_bytes {
            Some(quota) if self.storage_used_bytes.saturating_add(incoming) > quota => {
                Err(KnowledgeError::QuotaExceeded {
                    used_bytes: self.storage_used_bytes,
                    quota_bytes: quota,
                })
            }
            _ => Ok(()),
        }
    }
}

/// The limit in bytes from a tenant's own setting (MB) and the server's default.
pub fn effective(tenant_mb: Option<u64>, default_bytes: Option<u64>) -> Option<u64> {
    match tenant_mb {
        Some(0) => None,
        Some(mb) => Some(mb.saturating_mul(MB)),
        None => default_bytes,
    }
}

/// The caller's own tenant.
pub fn of(
    store: &impl StorageStore,
    scope: &TenantScope,
    default_bytes: Option<u64>,
) -> Result<StorageUse, KnowledgeError> {
    of_tenant(store, scope.tenant_id(), default_bytes)?.ok_or(KnowledgeError::NotFound)
}

/// Any tenant, for the instance owner; `None` when there is no such tenant.
pub fn of_tenant(
    store: &impl StorageStore,
    tenant_id: &str,
    default_bytes: Option<u64>,
) -> Result<Option<StorageUse>, DbError> {
    Ok(store.tenant_storage(tenant_id)?.map(|row| StorageUse {
        storage_used_bytes: row.used_bytes.max(0) as u64,
        storage_quota_bytes: effective(row.quota_mb.map(|mb| mb.max(0) as u64), default_bytes),
    }))
}

/// `812.4 MB`, for messages.
pub fn human(bytes: u64) -> String {
    if bytes >= 1024 * MB {
        format!("{:.1} GB", bytes as f64 / (1024 * MB) as f64)
    } else {
        format!("{:.1} MB", bytes as f64 / MB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_setting_wins_and_zero_is_unlimited() {
        assert_eq!(effective(None, Some(5 * MB)), Some(5 * MB));
        assert_eq!(effective(Some(2), Some(5 * MB)), Some(2 * MB));
        assert_eq!(effective(Some(0), Some(5 * MB)), None);
        assert_eq!(effective(None, None), None);
        let storage = StorageUse {
            storage_used_bytes: 3 * MB,
            storage_quota_bytes: Some(4 * MB),
        };
        assert_eq!(storage.room(), Some(MB));
        assert!(storage.admit(MB).is_ok());
        let refused = storage.admit(MB + 1).unwrap_err().to_string();
        assert!(refused.contains("3.0 MB of 4.0 MB used"), "{refused}");
    }
}
