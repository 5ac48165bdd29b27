//! A tenant's own settings (name, the web origins allowed to embed its chat) and the owner's view
//! of every tenant.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::audit::{self, AuditEvent};
use super::{AuthError, Principal, RequestContext, TenantScope};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantSettings {
    pub id: String,
    pub name: String,
    pub coach_slug: String,
    /// Websites (scheme://host[:port]) allowed to call the public chat API from a browser.
    pub allowed_origins: Vec<String>,
    /// Every member must sign in with two steps (`PUT /api/v1/tenant/mfa-requirement`).
    pub require_mfa: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TenantUpdate {
    pub name: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantSummary {
    pub id: String,
    pub name: String,
    pub coach_slug: String,
    pub members: i64,
    pub created_at: String,
    /// When the owner suspended it; null while active.
    pub suspended_at: Option<String>,
}

pub fn get(c: &Connection, scope: &TenantScope) -> Result<TenantSettings, AuthError> {
    c.query_row(
        "SELECT t.id, t.name, co.slug, t.allowed_origins, t.require_mfa FROM tenants t
         JOIN coaches co ON co.tenant_id = t.id WHERE t.id = ?1",
        [scope.tenant_id()],
        |r| {
            Ok(TenantSettings {
                id: r.get(0)?,
                name: r.get(1)?,
                coach_slug: r.get(2)?,
                allowed_origins: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                require_mfa: r.get(4)?,
            })
        },
    )
    .optional()?
    .ok_or(AuthError::NotFound("tenant"))
}

pub fn update(
    c: &mut Connection,
    principal: &Principal,
    update: &TenantUpdate,
    context: &RequestContext,
) -> Result<TenantSettings, AuthError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(name) = &update.name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(AuthError::Invalid(
                "the name must have 1 to 200 characters".into(),
            ));
        }
        tx.execute(
            "UPDATE tenants SET name = ?2 WHERE id = ?1",
            params![principal.tenant_id(), name],
        )?;
    }
    if let Some(origins) = &update.allowed_origins {
        let origins = origins
            .iter()
            .map(|o| normalize_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute(
            "UPDATE tenants SET allowed_origins = ?2 WHERE id = ?1",
            params![
                principal.tenant_id(),
                serde_json::to_string(&origins).expect("strings")
            ],
        )?;
    }
    audit::record(
        &tx,
        &AuditEvent::by(principal, "tenant.updated", context).detail(serde_json::json!({
            "name": update.name,
            "allowed_origins": update.allowed_origins,
        })),
    )?;
    let settings = get(&tx, principal.scope())?;
    tx.commit()?;
    Ok(settings)
}

/// The origins allowed for the coach at `slug`; `None` when there is no such coach.
pub fn allowed_origins_for_slug(
    c: &Connection,
    slug: &str,
) -> rusqlite::Result<Option<Vec<String>>> {
    Ok(c.query_row(
        "SELECT t.allowed_origins FROM coaches co JOIN tenants t ON t.id = co.tenant_id
             WHERE co.slug = ?1",
        [slug],
        |r| r.get::<_, String>(0),
    )
    .optional()?
    .map(|json| serde_json::from_str(&json).unwrap_or_default()))
}

/// Every tenant, for the instance owner.
pub fn list_all(c: &Connection) -> rusqlite::Result<Vec<TenantSummary>> {
    let mut statement = c.prepare(
        "SELECT t.id, t.name, co.slug,
                (SELECT count(*) FROM memberships m WHERE m.tenant_id = t.id), t.created_at,
                t.suspended_at
         FROM tenants t JOIN coaches co ON co.tenant_id = t.id ORDER BY t.created_at",
    )?;
    let rows = statement.query_map([], |r| {
        Ok(TenantSummary {
            id: r.get(0)?,
            name: r.get(1)?,
            coach_slug: r.get(2)?,
            members: r.get(3)?,
            created_at: r.get(4)?,
            suspended_at: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// `https://Example.com:443/` → `https://example.com`; anything but an http(s) origin is refused.
pub fn normalize_origin(origin: &str) -> Result<String, AuthError> {
    let invalid = || {
        AuthError::Invalid(format!(
            "'{origin}' is not a web origin; write it like https://www.example.com"
        ))
    };
    let origin = origin.trim().trim_end_matches('/').to_lowercase();
    let (scheme, rest) = origin.split_once("://").ok_or_else(invalid)?;
    if scheme != "http" && scheme != "https" {
        return Err(invalid());
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid());
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = rest.strip_suffix(default_port).unwrap_or(rest);
    Ok(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::normalize_origin;

    #[test]
    fn origins_are_normalised_and_checked() {
        assert_eq!(
            normalize_origin("https://Example.com:443/").unwrap(),
            "https://example.com"
        );
        assert_eq!(
            normalize_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }
}
