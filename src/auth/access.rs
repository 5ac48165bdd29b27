//! Whether a credential still gives access. Every request and every live command is judged on
//! the membership, role and tenant state in the database *now*, never on what a token said when
//! it was issued: a demoted admin is a coach on their next request, a removed member is nobody.
//!
//! [`AccessChanges`] tells open connections (WebSockets, event streams) that something changed
//! in a tenant, so they look again at once instead of at their next command.

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

use super::{AuthError, Credential, Principal, Role, TenantScope};

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
    c: &Connection,
    user_id: &str,
    tenant_id: &str,
    generation: i64,
) -> Result<Principal, AuthError> {
    let row: Option<(String, bool, String, bool, i64)> = c
        .query_row(
            "SELECT m.role, u.is_owner, u.email, t.suspended_at IS NOT NULL, u.session_generation
             FROM memberships m JOIN users u ON u.id = m.user_id JOIN tenants t ON t.id = m.tenant_id
             WHERE m.user_id = ?1 AND m.tenant_id = ?2",
            params![user_id, tenant_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let (role, is_owner, email, suspended, current_generation) =
        row.ok_or(AuthError::AccessEnded)?;
    if suspended {
        return Err(AuthError::Suspended);
    }
    if generation != current_generation {
        return Err(AuthError::AccessEnded);
    }
    Ok(Principal {
        user_id: Some(user_id.to_string()),
        scope: TenantScope::new(tenant_id.to_string()),
        role: Role::parse(&role).ok_or(AuthError::AccessEnded)?,
        is_owner,
        label: email,
        credential: Credential::AccessToken { generation },
    })
}

/// Looks again at a principal that authenticated earlier (an open connection): the same
/// person or key with today's role, or the reason it no longer has access.
pub fn current(c: &Connection, principal: &Principal) -> Result<Principal, AuthError> {
    match &principal.credential {
        Credential::AccessToken { generation } => {
            let user_id = principal.user_id.as_deref().ok_or(AuthError::AccessEnded)?;
            member(c, user_id, principal.tenant_id(), *generation)
        }
        Credential::ApiKey { key_id } => super::api_keys::by_id(c, key_id),
    }
}

/// Ends every access token of a user issued until now (sign out everywhere, new password).
pub fn end_sessions(c: &Connection, user_id: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE users SET session_generation = session_generation + 1 WHERE id = ?1",
        [user_id],
    )?;
    Ok(())
}

/// The generation new access tokens of a user are issued in.
pub fn session_generation(c: &Connection, user_id: &str) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT session_generation FROM users WHERE id = ?1",
        [user_id],
        |r| r.get(0),
    )
}
