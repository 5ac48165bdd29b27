//! API keys for server-to-server use: shown once, stored hashed, with a visible prefix, a role,
//! an optional expiry and a last-used time; revocable. Used as `Authorization: Bearer cmp_...`.
//!
//! A key belongs to the member who made it: it acts with its own role but never more than its
//! creator's role *now*, it stops working when its creator leaves the team (removal revokes
//! it), and the audit log names the key (its prefix) as the actor.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::audit::{self, AuditEvent};
use super::tokens;
use super::{AuthError, Credential, Principal, RequestContext, Role, TenantScope, new_id};

pub const KEY_PREFIX: &str = "cmp_";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewApiKey {
    pub name: String,
    /// What the key may do [default: analyst, read-only]. Never more than its creator's role.
    #[serde(default)]
    pub role: Option<Role>,
    /// Days until it stops working [default: never].
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub view: ApiKeyView,
    /// The key itself; shown this once.
    pub key: String,
}

fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyView> {
    Ok(ApiKeyView {
        id: r.get(0)?,
        name: r.get(1)?,
        prefix: r.get(2)?,
        role: Role::parse(&r.get::<_, String>(3)?).unwrap_or(Role::Analyst),
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        last_used_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

const COLUMNS: &str = "id, name, prefix, role, created_at, expires_at, last_used_at, revoked_at";

pub fn create(
    c: &Connection,
    principal: &Principal,
    input: &NewApiKey,
    context: &RequestContext,
) -> Result<CreatedApiKey, AuthError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AuthError::Invalid(
            "give the key a name (up to 100 characters)".into(),
        ));
    }
    let role = input.role.unwrap_or(Role::Analyst);
    if role > principal.role {
        return Err(AuthError::Forbidden);
    }
    let key = tokens::secret_token(KEY_PREFIX);
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 8).collect();
    let id = new_id();
    let expires = input.expires_in_days.map(|days| format!("+{days} days"));
    let view = c.query_row(
        &format!(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, role, created_by, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                     CASE WHEN ?8 IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?8) END)
             RETURNING {COLUMNS}"
        ),
        params![
            id,
            principal.tenant_id(),
            name,
            prefix,
            tokens::secret_hash(&key),
            role.as_str(),
            principal.user_id,
            expires
        ],
        view,
    )?;
    audit::record(
        c,
        &AuditEvent::by(principal, "api_key.created", context)
            .target(&prefix)
            .detail(serde_json::json!({"name": name, "role": role})),
    )?;
    Ok(CreatedApiKey { view, key })
}

pub fn list(c: &Connection, scope: &TenantScope) -> rusqlite::Result<Vec<ApiKeyView>> {
    let mut statement = c.prepare(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at DESC"
    ))?;
    let rows = statement.query_map([scope.tenant_id()], view)?;
    rows.collect()
}

/// Revokes a key of the caller's tenant; another tenant's key is "not found".
pub fn revoke(
    c: &Connection,
    principal: &Principal,
    key_id: &str,
    context: &RequestContext,
) -> Result<(), AuthError> {
    let prefix: Option<String> = c
        .query_row(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             WHERE id = ?1 AND tenant_id = ?2 RETURNING prefix",
            params![key_id, principal.tenant_id()],
            |r| r.get(0),
        )
        .optional()?;
    let prefix = prefix.ok_or(AuthError::NotFound("API key"))?;
    audit::record(
        c,
        &AuditEvent::by(principal, "api_key.revoked", context).target(&prefix),
    )?;
    Ok(())
}

/// How often a key's last-used time is written: every request writing it would make a busy
/// integration contend with everything else for SQLite's single writer.
const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

/// The principal a presented key stands for, if it is valid; records its use.
pub fn authenticate(c: &Connection, key: &str) -> Result<Principal, AuthError> {
    principal_where(c, "k.key_hash = ?1", &tokens::secret_hash(key))
}

/// The principal of a key that authenticated earlier (an open connection), as it stands now.
pub fn by_id(c: &Connection, key_id: &str) -> Result<Principal, AuthError> {
    principal_where(c, "k.id = ?1", key_id)
}

/// A key's row with its creator's role now: (id, tenant, prefix, role, creator, creator's role,
/// tenant suspended, last use stale).
type KeyRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    bool,
);

fn principal_where(c: &Connection, condition: &str, value: &str) -> Result<Principal, AuthError> {
    let row: Option<KeyRow> = c
        .query_row(
            &format!(
                "SELECT k.id, k.tenant_id, k.prefix, k.role, k.created_by, m.role,
                        t.suspended_at IS NOT NULL,
                        k.last_used_at IS NULL OR (julianday('now') - julianday(k.last_used_at)) * 86400 > ?2
                 FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                 LEFT JOIN memberships m ON m.user_id = k.created_by AND m.tenant_id = k.tenant_id
                 WHERE {condition} AND k.revoked_at IS NULL
                   AND (k.expires_at IS NULL OR k.expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
            ),
            params![value, LAST_USED_RESOLUTION_SECONDS],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .optional()?;
    let (id, tenant_id, prefix, role, created_by, creator_role, suspended, stale) =
        row.ok_or(AuthError::Unauthorized)?;
    // The creator left the team (or the account was deleted): the key died with their access.
    let creator_role = creator_role
        .as_deref()
        .and_then(Role::parse)
        .ok_or(AuthError::AccessEnded)?;
    if suspended {
        return Err(AuthError::Suspended);
    }
    if stale {
        c.execute(
            "UPDATE api_keys SET last_used_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
            [&id],
        )?;
    }
    let role = Role::parse(&role)
        .unwrap_or(Role::Analyst)
        .min(creator_role);
    Ok(Principal {
        user_id: created_by,
        scope: TenantScope::new(tenant_id),
        role,
        is_owner: false,
        label: prefix,
        credential: Credential::ApiKey { key_id: id },
    })
}

/// Revokes every key a member made in the tenant (they are leaving it); returns the prefixes.
pub fn revoke_all_of(
    c: &Connection,
    scope: &TenantScope,
    user_id: &str,
) -> rusqlite::Result<Vec<String>> {
    c.prepare(
        "UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE tenant_id = ?1 AND created_by = ?2 AND revoked_at IS NULL RETURNING prefix",
    )?
    .query_map(params![scope.tenant_id(), user_id], |r| r.get(0))?
    .collect()
}
