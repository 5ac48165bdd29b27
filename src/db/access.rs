//! Storage for access checks: a member's standing in a tenant and their session generation.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;

/// What decides whether a signed-in member may act in a tenant now.
#[derive(Debug, Clone)]
pub struct MemberStanding {
    pub role: String,
    pub is_owner: bool,
    pub email: String,
    pub tenant_suspended: bool,
    pub session_generation: i64,
}

pub trait AccessStore {
    /// The member's standing in the tenant; `None` when they are not a member (any more).
    fn member_standing(
        &self,
        user_id: &str,
        tenant_id: &str,
    ) -> Result<Option<MemberStanding>, DbError>;

    /// The generation new access tokens of the user are issued in.
    fn session_generation(&self, user_id: &str) -> Result<i64, DbError>;

    /// Moves the user's session generation on: every access token issued so far stops working.
    fn end_sessions(&self, user_id: &str) -> Result<(), DbError>;

    /// Ends every sign-in of the user: refresh tokens revoked, access tokens ended.
    fn end_sign_ins(&self, user_id: &str) -> Result<(), DbError>;

    /// The tenant the user signs in to (their first membership).
    fn home_tenant(&self, user_id: &str) -> Result<Option<String>, DbError>;
}

impl AccessStore for Connection {
    fn member_standing(
        &self,
        user_id: &str,
        tenant_id: &str,
    ) -> Result<Option<MemberStanding>, DbError> {
        Ok(self
            .query_row(
                "SELECT m.role, u.is_owner, u.email, t.suspended_at IS NOT NULL, u.session_generation
                 FROM memberships m JOIN users u ON u.id = m.user_id JOIN tenants t ON t.id = m.tenant_id
                 WHERE m.user_id = ?1 AND m.tenant_id = ?2",
                params![user_id, tenant_id],
                |r| {
                    Ok(MemberStanding {
                        role: r.get(0)?,
                        is_owner: r.get(1)?,
                        email: r.get(2)?,
                        tenant_suspended: r.get(3)?,
                        session_generation: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn session_generation(&self, user_id: &str) -> Result<i64, DbError> {
        Ok(self.query_row(
            "SELECT session_generation FROM users WHERE id = ?1",
            [user_id],
            |r| r.get(0),
        )?)
    }

    fn end_sessions(&self, user_id: &str) -> Result<(), DbError> {
        self.execute(
            "UPDATE users SET session_generation = session_generation + 1 WHERE id = ?1",
            [user_id],
        )?;
        Ok(())
    }

    fn end_sign_ins(&self, user_id: &str) -> Result<(), DbError> {
        self.execute(
            "UPDATE refresh_tokens SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE user_id = ?1 AND revoked_at IS NULL",
            [user_id],
        )?;
        self.end_sessions(user_id)
    }

    fn home_tenant(&self, user_id: &str) -> Result<Option<String>, DbError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .query_row(
                "SELECT tenant_id FROM memberships WHERE user_id = ?1 ORDER BY created_at LIMIT 1",
                [user_id],
                |r| r.get(0),
            )
            .optional()?)
    }
}
