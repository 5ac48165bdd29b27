//! What the instance owner changes while the server runs: the sign-up policy (stored, it wins
//! over `serve --signup`) and creators (tenants) suspended or deleted.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::accounts::SignupPolicy;
use super::audit::{self, AuditEvent};
use super::{AuthError, Principal, RequestContext};

/// The sign-up policy in force: the owner's stored choice, else `configured`.
pub fn signup_policy(c: &Connection, configured: SignupPolicy) -> rusqlite::Result<SignupPolicy> {
    let stored: Option<String> = c
        .query_row(
            "SELECT value FROM instance_settings WHERE key = 'signup'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match stored.as_deref() {
        Some("open") => SignupPolicy::Open,
        Some("invite") => SignupPolicy::Invite,
        Some("closed") => SignupPolicy::Closed,
        _ => configured,
    })
}

pub fn set_signup_policy(
    c: &mut Connection,
    principal: &Principal,
    policy: SignupPolicy,
    context: &RequestContext,
) -> Result<(), AuthError> {
    let value = match policy {
        SignupPolicy::Open => "open",
        SignupPolicy::Invite => "invite",
        SignupPolicy::Closed => "closed",
    };
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO instance_settings (key, value) VALUES ('signup', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        params![value],
    )?;
    audit::record(
        &tx,
        &AuditEvent::by(principal, "instance.signup_changed", context)
            .detail(serde_json::json!({ "signup": value })),
    )?;
    tx.commit()?;
    Ok(())
}

pub fn is_suspended(c: &Connection, tenant_id: &str) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        "SELECT suspended_at IS NOT NULL FROM tenants WHERE id = ?1",
        params![tenant_id],
        |r| r.get(0),
    )
    .optional()?
    .unwrap_or(false))
}

/// The owner's own tenant cannot be suspended or deleted: they would lock themselves out.
fn not_own(principal: &Principal, tenant_id: &str) -> Result<(), AuthError> {
    if principal.tenant_id() == tenant_id {
        return Err(AuthError::Conflict(
            "this is your own coach; the server's owner cannot suspend or delete it".into(),
        ));
    }
    Ok(())
}

/// Suspends (or resumes) a creator: members cannot sign in, end users cannot reach the coach.
pub fn set_suspended(
    c: &mut Connection,
    principal: &Principal,
    tenant_id: &str,
    suspended: bool,
    context: &RequestContext,
) -> Result<(), AuthError> {
    not_own(principal, tenant_id)?;
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let changed = tx.execute(
        "UPDATE tenants SET suspended_at = CASE WHEN ?2 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END \
         WHERE id = ?1",
        params![tenant_id, suspended],
    )?;
    if changed == 0 {
        return Err(AuthError::NotFound("tenant"));
    }
    if suspended {
        // End their sessions now; access tokens already issued lapse within minutes.
        tx.execute(
            "UPDATE refresh_tokens SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE tenant_id = ?1 AND revoked_at IS NULL",
            params![tenant_id],
        )?;
    }
    let action = if suspended {
        "tenant.suspended"
    } else {
        "tenant.resumed"
    };
    audit::record(
        &tx,
        &AuditEvent::by(principal, action, context).target(tenant_id),
    )?;
    tx.commit()?;
    Ok(())
}

/// A creator's own storage quota in MB; `None` when it follows the server's setting (or there
/// is no such tenant).
pub fn storage_quota_mb(c: &Connection, tenant_id: &str) -> rusqlite::Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT storage_quota_mb FROM tenants WHERE id = ?1",
        params![tenant_id],
        |r| r.get(0),
    )
    .optional()?
    .flatten())
}

/// Sets a creator's storage quota in MB (0: unlimited); `None` returns it to the server's
/// `storage_quota_mb`. Documents already stored stay; only new uploads are refused.
pub fn set_storage_quota(
    c: &mut Connection,
    principal: &Principal,
    tenant_id: &str,
    quota_mb: Option<u64>,
    context: &RequestContext,
) -> Result<(), AuthError> {
    let stored = quota_mb
        .map(|mb| {
            i64::try_from(mb).map_err(|_| AuthError::Invalid("the quota is too large".into()))
        })
        .transpose()?;
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let changed = tx.execute(
        "UPDATE tenants SET storage_quota_mb = ?2 WHERE id = ?1",
        params![tenant_id, stored],
    )?;
    if changed == 0 {
        return Err(AuthError::NotFound("tenant"));
    }
    audit::record(
        &tx,
        &AuditEvent::by(principal, "tenant.quota_changed", context)
            .target(tenant_id)
            .detail(serde_json::json!({ "storage_quota_mb": quota_mb })),
    )?;
    tx.commit()?;
    Ok(())
}

/// Deletes a creator and everything of theirs (the database cascades), and the accounts that
/// belonged to no other tenant. The caller removes their files.
pub fn delete_tenant(
    c: &mut Connection,
    principal: &Principal,
    tenant_id: &str,
    context: &RequestContext,
) -> Result<(), AuthError> {
    not_own(principal, tenant_id)?;
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.query_row(
        "SELECT 1 FROM tenants WHERE id = ?1",
        params![tenant_id],
        |_| Ok(()),
    )
    .optional()?
    .ok_or(AuthError::NotFound("tenant"))?;
    tx.execute(
        "DELETE FROM users WHERE is_owner = 0 AND id IN \
           (SELECT user_id FROM memberships WHERE tenant_id = ?1) AND id NOT IN \
           (SELECT user_id FROM memberships WHERE tenant_id != ?1)",
        params![tenant_id],
    )?;
    tx.execute("DELETE FROM tenants WHERE id = ?1", params![tenant_id])?;
    // Nothing of the tenant is kept, its id and name included: its own log goes, and the
    // owner's entries about it (suspended, quota changed, deleted) keep only a fingerprint,
    // which answers "was this tenant deleted?" for someone who knows the id.
    let fingerprint = format!("sha256:{}", super::tokens::secret_hash(tenant_id));
    tx.execute(
        "DELETE FROM audit_log WHERE tenant_id = ?1",
        params![tenant_id],
    )?;
    tx.execute(
        "UPDATE audit_log SET target = ?2 WHERE target = ?1",
        params![tenant_id, fingerprint],
    )?;
    audit::record(
        &tx,
        &AuditEvent::by(principal, "tenant.deleted", context).target(&fingerprint),
    )?;
    tx.commit()?;
    Ok(())
}
