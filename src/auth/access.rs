//! Whether a credential still gives access. Every request and every live command is judged on
//! the membership, role and tenant state in the database *now*, never on what a token said when
//! it was issued: a demoted admin is a coach on their next request, a removed member is nobody.
//!
//! [`AccessChanges`] tells open connections (WebSockets, event streams) that something changed
//! in a tenant, so they look again at once instead of at their next command.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

use super::{AuthError, Credential, Principal, Role, TenantScope};
use crate::db::access::AccessStore;

/// Signals "the access of someone in this tenant changed". Cheap to share through an `Arc`.
pub struct AccessChanges {
    /// Bumped on every change: a connection that saw the same epoch needs no new look.
    epoch: AtomicU64,
    tenants: broadcast::Sender<String>,
}

impl Default for AccessChanges {
    fn default() -> AccessChanges {
        AccessChanges {
            epoch: AtomicU64::new(0),
            // Lagging receivers see `Lagged` and simply look again.
            tenants: broadcast::channel(256).0,
        }
    }
}

impl AccessChanges {
    /// Call after a change to membership, role, keys, sessions or the tenant's state commits.
    pub fn changed(&self, tenant_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let _ = self.tenants.send(tenant_id.to_string());
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tenants.subscribe()
    }
}

/// The member behind a verified access token, as they stand now.
pub fn member(
    store: &impl AccessStore,
    user_id: &str,
    tenant_id: &str,
    generation: i64,
) -> Result<Principal, AuthError> {
    let standing = store
        .member_standing(user_id, tenant_id)?
        .ok_or(AuthError::AccessEnded)?;
    if standing.tenant_suspended {
        return Err(AuthError::Suspended);
    }
    if generation != standing.session_generation {
        return Err(AuthError::AccessEnded);
    }
    Ok(Principal {
        user_id: Some(user_id.to_string()),
        scope: TenantScope::new(tenant_id.to_string()),
        role: Role::parse(&standing.role).ok_or(AuthError::AccessEnded)?,
        is_owner: standing.is_owner,
        label: standing.email,
        credential: Credential::AccessToken { generation },
    })
}
