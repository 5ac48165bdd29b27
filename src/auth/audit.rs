//! The audit log: who did what, in which tenant, from where, with which request.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{RequestContext, TenantScope};

/// An event to record. Build with [`AuditEvent::new`] and the setters.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    action: &'static str,
    actor_label: String,
    tenant_id: Option<String>,
    actor_user_id: Option<String>,
    target: Option<String>,
    detail: serde_json::Value,
    ip: Option<String>,
    request_id: String,
}

impl AuditEvent {
    pub fn new(action: &'static str, actor_label: &str, context: &RequestContext) -> AuditEvent {
        AuditEvent {
            action,
            actor_label: actor_label.to_string(),
            tenant_id: None,
            actor_user_id: None,
            target: None,
            detail: serde_json::json!({}),
            ip: context.ip.map(|ip| ip.to_string()),
            request_id: context.request_id.clone(),
        }
    }

    /// An event done by an authenticated caller, in their tenant.
    pub fn by(
        principal: &super::Principal,
        action: &'static str,
        context: &RequestContext,
    ) -> AuditEvent {
        let event =
            AuditEvent::new(action, &principal.label, context).tenant(principal.tenant_id());
        match &principal.user_id {
            Some(user) => event.actor(user),
            None => event,
        }
    }

    pub fn tenant(mut self, tenant_id: &str) -> AuditEvent {
        self.tenant_id = Some(tenant_id.to_string());
        self
    }

    pub fn actor(mut self, user_id: &str) -> AuditEvent {
        self.actor_user_id = Some(user_id.to_string());
        self
    }

    /// Who acted, as the log shows it.
    pub fn actor_label(&self) -> &str {
        &self.actor_label
    }

    pub fn actor_user_id(&self) -> Option<&str> {
        self.actor_user_id.as_deref()
    }

    pub fn target(mut self, target: &str) -> AuditEvent {
        self.target = Some(target.to_string());
        self
    }

    /// The same event under another action (a follow-up of it).
    pub fn with_action(mut self, action: &'static str) -> AuditEvent {
        self.action = action;
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> AuditEvent {
        self.detail = detail;
        self
    }
}

pub fn record(c: &Connection, event: &AuditEvent) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO audit_log (tenant_id, actor_user_id, actor_label, action, target, ip, request_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            event.tenant_id,
            event.actor_user_id,
            event.actor_label,
            event.action,
            event.target,
            event.ip,
            event.request_id,
            event.detail.to_string()
        ],
    )?;
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub detail: serde_json::Value,
    pub created_at: String,
}

/// Which part of the log to read.
pub enum AuditView<'a> {
    Tenant(&'a TenantScope),
    /// The whole instance (owners only; checked by the route).
    Instance,
}

/// Which entries to read: newest first, `limit` of them with ids below `before` (for paging),
/// optionally only some actions or actors.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub before: Option<i64>,
    pub limit: u32,
    /// Actions starting with this.
    pub action: Option<String>,
    /// Actors whose label contains this.
    pub actor: Option<String>,
}

pub fn list(
    c: &Connection,
    view: AuditView<'_>,
    filter: &AuditFilter,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let tenant = match view {
        AuditView::Tenant(scope) => Some(scope.tenant_id().to_string()),
        AuditView::Instance => None,
    };
    let mut statement = c.prepare(
        "SELECT id, tenant_id, actor_label, action, target, ip, request_id, detail, created_at
         FROM audit_log
         WHERE (?1 IS NULL OR tenant_id = ?1) AND id < ?2
           AND (?4 IS NULL OR substr(action, 1, length(?4)) = ?4)
           AND (?5 IS NULL OR instr(lower(actor_label), lower(?5)) > 0)
         ORDER BY id DESC LIMIT ?3",
    )?;
    let parameters = params![
        tenant,
        filter.before.unwrap_or(i64::MAX),
        filter.limit,
        filter.action,
        filter.actor
    ];
    let rows = statement.query_map(parameters, |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            ip: r.get(5)?,
            request_id: r.get(6)?,
            detail: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
            created_at: r.get(8)?,
        })
    })?;
    rows.collect()
}
