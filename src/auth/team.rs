//! A tenant's team: members with their roles, pending invitations, role changes and removals.
//! A tenant always keeps at least one admin.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::audit::{self, AuditEvent};
use super::{AuthError, Principal, RequestContext, Role, TenantScope};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub full_name: String,
    pub role: Role,
    pub joined_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PendingInvitation {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub expires_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Team {
    pub members: Vec<Member>,
    pub invitations: Vec<PendingInvitation>,
}

const MEMBERS: &str = "SELECT u.id, u.email, u.full_name, m.role, m.created_at FROM memberships m
     JOIN users u ON u.id = m.user_id WHERE m.tenant_id = ?1";

fn member(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        user_id: r.get(0)?,
        email: r.get(1)?,
        full_name: r.get(2)?,
        role: Role::parse(&r.get::<_, String>(3)?).unwrap_or(Role::Analyst),
        joined_at: r.get(4)?,
    })
}

pub fn list(c: &Connection, scope: &TenantScope) -> rusqlite::Result<Team> {
    let members = c
        .prepare(&format!("{MEMBERS} ORDER BY m.created_at"))?
        .query_map([scope.tenant_id()], member)?
        .collect::<Result<_, _>>()?;
    let mut invitations = c.prepare(
        "SELECT id, email, role, expires_at FROM invitations
         WHERE tenant_id = ?1 AND accepted_at IS NULL
           AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         ORDER BY created_at",
    )?;
    let invitations = invitations
        .query_map([scope.tenant_id()], |r| {
            Ok(PendingInvitation {
                id: r.get(0)?,
                email: r.get(1)?,
                role: Role::parse(&r.get::<_, String>(2)?).unwrap_or(Role::Analyst),
                expires_at: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Team {
        members,
        invitations,
    })
}

pub fn change_role(
    c: &mut Connection,
    principal: &Principal,
    user_id: &str,
    role: Role,
    context: &RequestContext,
) -> Result<Member, AuthError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = member_role(&tx, principal.scope(), user_id)?;
    if current == Role::Admin && role != Role::Admin {
        ensure_another_admin(&tx, principal.scope())?;
    }
    tx.execute(
        "UPDATE memberships SET role = ?3 WHERE tenant_id = ?1 AND user_id = ?2",
        params![principal.tenant_id(), user_id, role.as_str()],
    )?;
    let member = tx.query_row(
        &format!("{MEMBERS} AND m.user_id = ?2"),
        params![principal.tenant_id(), user_id],
        member,
    )?;
    audit::record(
        &tx,
        &AuditEvent::by(principal, "team.role_changed", context)
            .target(&member.email)
            .detail(serde_json::json!({"from": current, "to": role})),
    )?;
    tx.commit()?;
    Ok(member)
}

/// Removes a member from the tenant and ends their sign-ins and API keys in it.
pub fn remove(
    c: &mut Connection,
    principal: &Principal,
    user_id: &str,
    context: &RequestContext,
) -> Result<(), AuthError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if member_role(&tx, principal.scope(), user_id)? == Role::Admin {
        ensure_another_admin(&tx, principal.scope())?;
    }
    let email: String = tx.query_row("SELECT email FROM users WHERE id = ?1", [user_id], |r| {
        r.get(0)
    })?;
    tx.execute(
        "DELETE FROM memberships WHERE tenant_id = ?1 AND user_id = ?2",
        params![principal.tenant_id(), user_id],
    )?;
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE tenant_id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
        params![principal.tenant_id(), user_id],
    )?;
    // Their keys would otherwise carry their power on after they left.
    let keys = super::api_keys::revoke_all_of(&tx, principal.scope(), user_id)?;
    audit::record(
        &tx,
        &AuditEvent::by(principal, "team.member_removed", context)
            .target(&email)
            .detail(serde_json::json!({ "api_keys_revoked": keys })),
    )?;
    tx.commit()?;
    Ok(())
}

fn member_role(c: &Connection, scope: &TenantScope, user_id: &str) -> Result<Role, AuthError> {
    c.query_row(
        "SELECT role FROM memberships WHERE tenant_id = ?1 AND user_id = ?2",
        params![scope.tenant_id(), user_id],
        |r| r.get::<_, String>(0),
    )
    .optional()?
    .and_then(|role| Role::parse(&role))
    .ok_or(AuthError::NotFound("team member"))
}

fn ensure_another_admin(c: &Connection, scope: &TenantScope) -> Result<(), AuthError> {
    let admins: i64 = c.query_row(
        "SELECT count(*) FROM memberships WHERE tenant_id = ?1 AND role = 'admin'",
        [scope.tenant_id()],
        |r| r.get(0),
    )?;
    if admins <= 1 {
        return Err(AuthError::Invalid(
            "a team needs at least one admin; make someone else admin first".into(),
        ));
    }
    Ok(())
}
