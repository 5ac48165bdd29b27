//! Identity and isolation: accounts, sign-in, tokens, roles, API keys, rate limits and the audit
//! log.
//!
//! Tenancy is enforced by construction: a [`TenantScope`] can only be obtained from an
//! authenticated [`Principal`], and every repository function for tenant-owned data takes one,
//! so a query that forgets its tenant does not compile.

pub mod access;
pub mod accounts;
pub mod api_keys;
pub mod api_usage;
pub mod audit;
pub mod instance;
pub mod mfa;
pub mod passwords;
pub mod rate_limit;
pub mod team;
pub mod tenant;
pub mod tokens;

use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// What a member of a tenant may do. Ordered: each role can do what the ones below it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: conversations, analytics, knowledge base.
    Analyst,
    /// Reads and answers conversations.
    Coach,
    /// Everything in the tenant: settings, team, API keys, audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::Coach => "coach",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "analyst" => Some(Role::Analyst),
            "coach" => Some(Role::Coach),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The tenant a request acts for. Only authentication creates one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    tenant_id: String,
}

impl TenantScope {
    /// Only authentication code constructs scopes.
    pub(crate) fn new(tenant_id: String) -> TenantScope {
        TenantScope { tenant_id }
    }

    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
}

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A signed-in member; `generation` is the session generation the token was issued in.
    AccessToken {
        generation: i64,
    },
    ApiKey {
        key_id: String,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user, or for an API key the user who created it (if still there).
    pub user_id: Option<String>,
    pub scope: TenantScope,
    pub role: Role,
    pub is_owner: bool,
    /// Email or API key prefix, for the audit log.
    pub label: String,
    pub credential: Credential,
}

impl Principal {
    pub fn tenant_id(&self) -> &str {
        self.scope.tenant_id()
    }

    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }
}

/// Where a request came from, for the audit log and rate limits.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub ip: Option<std::net::IpAddr>,
    pub request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("sign in to continue: the access token is missing, invalid or expired")]
    Unauthorized,
    #[error("the email or password is wrong")]
    InvalidCredentials,
    #[error("{0}")]
    WeakPassword(String),
    #[error("an account with this email already exists; sign in instead")]
    EmailTaken,
    #[error("sign-up is {0} on this server; ask its owner for an invitation")]
    SignupClosed(&'static str),
    #[error(
        "this refresh token was already used; every session of this sign-in was ended for safety, sign in again"
    )]
    TokenReused,
    #[error("the token is invalid or expired")]
    InvalidToken,
    #[error("your role does not allow this")]
    Forbidden,
    #[error("this coach was suspended by the owner of this server; contact them")]
    Suspended,
    #[error(
        "your access ended: you were removed from the team, signed out everywhere, or the key was revoked; sign in again"
    )]
    AccessEnded,
    #[error("the server is busy checking other passwords; try again in a moment")]
    Busy,
    #[error(
        "the first account is the server's owner: enter the set-up token that `companero serve` printed (also in <data-dir>/setup-token), or create it with `companero admin create-owner`"
    )]
    SetupTokenRequired,
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
    /// The password was right; the sign-in needs its second step (`enroll`: setting up an
    /// authenticator first, because two-step sign-in is required of this account).
    #[error("{}", if *enroll {
        "two-step sign-in is required for this account: set up an authenticator app to finish signing in"
    } else {
        "enter the 6-digit code from your authenticator app (or a recovery code) to finish signing in"
    })]
    MfaRequired { challenge: String, enroll: bool },
    #[error("{0}")]
    InvalidMfaCode(&'static str),
    #[error("this sign-in took too long or had too many wrong codes; sign in again")]
    MfaChallengeExpired,
    #[error("two-step sign-in is not on for this account")]
    MfaNotEnabled,
    #[error("{0}")]
    MfaPolicy(&'static str),
    #[error("too many attempts; try again in {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: std::time::Duration },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for AuthError {
    fn from(error: rusqlite::Error) -> AuthError {
        AuthError::Db(DbError::Sqlite(error))
    }
}

/// Fills `buffer` from the operating system's secure random source.
pub fn random_bytes(buffer: &mut [u8]) {
    use rand::RngCore;
    rand::rngs::OsRng.fill_bytes(buffer);
}

/// A new random id (UUID v4 text).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Emails are compared trimmed and lower-case.
pub fn normalize_email(email: &str) -> Result<String, AuthError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(AuthError::Invalid("enter a valid email address".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Admin > Role::Coach && Role::Coach > Role::Analyst);
        assert_eq!(Role::parse("coach"), Some(Role::Coach));
        assert_eq!(Role::parse("owner"), None);
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Ana@Example.COM ").unwrap(),
            "ana@example.com"
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@x.com",
            "ana@x",
            "a na@x.com",
            "ana@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
