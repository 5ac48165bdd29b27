//! Accounts and sessions: registration (which creates the creator's tenant and coach), sign-in
//! with lock-out, refresh-token rotation with reuse detection, sign-out, password change and
//! reset.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::access::AccessChanges;
use super::audit::{self, AuditEvent};
use super::mfa::{Code, Enrollment, Mfa};
use super::rate_limit::LoginThrottle;
use super::tokens::{self, TokenKeys};
use super::{AuthError, Principal, RequestContext, Role, new_id, normalize_email, passwords};
use crate::db::Db;
use crate::db::access::AccessStore;

const RESET_LIFETIME: &str = "+1 hour";
/// A refresh token just exchanged still works this long, once more per tab: two dashboard tabs
/// refreshing at the same moment must not look like a stolen token (OAuth 2.0 Security BCP).
const ROTATION_GRACE_SECONDS: i64 = 30;
/// Password hashes computed at once (32 MiB and ~100 ms of a core each); more wait briefly,
/// then get 503. Unauthenticated requests cannot pile up work beyond this.
const HASH_WAIT: Duration = Duration::from_secs(2);
const INVITATION_LIFETIME: &str = "+7 days";

/// Who may register (`serve --signup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SignupPolicy {
    /// Anyone may register and open a tenant.
    Open,
    /// Only with an invitation (the first account on a fresh instance always may).
    Invite,
    /// Nobody (except the first account).
    Closed,
}

impl std::fmt::Display for SignupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignupPolicy::Open => "open",
            SignupPolicy::Invite => "invite",
            SignupPolicy::Closed => "closed",
        })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub full_name: String,
    /// An invitation: to join a tenant as staff, or to open one when sign-up is by invitation.
    #[serde(default)]
    pub invitation: Option<String>,
    /// Needed for the first account (the server's owner): the set-up token `serve` printed at
    /// its first start (also in `<data-dir>/setup-token`).
    #[serde(default)]
    pub setup_token: Option<String>,
}

/// What sign-in and refresh answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    /// Only when this sign-in also set up two-step sign-in: the ten one-time recovery codes,
    /// shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub id: String,
    pub email: String,
    pub full_name: String,
    pub role: Role,
    pub is_owner: bool,
    pub tenant: TenantView,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub coach_slug: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Invitation {
    pub id: String,
    pub email: String,
    pub role: Role,
    /// Shown once; the invitee registers with it.
    pub token: String,
    pub expires_at: String,
}

#[derive(Clone)]
pub struct Accounts {
    db: Db,
    keys: Arc<TokenKeys>,
    policy: SignupPolicy,
    changes: Arc<AccessChanges>,
    logins: Arc<LoginThrottle>,
    mfa: Mfa,
    /// Needed to register the first account (the owner); `None` once there is one, or when
    /// only the CLI may create it.
    setup_token: Option<Arc<str>>,
}

impl Accounts {
    pub fn new(
        db: Db,
        keys: Arc<TokenKeys>,
        policy: SignupPolicy,
        logins: Arc<LoginThrottle>,
        mfa: Mfa,
        setup_token: Option<String>,
    ) -> Accounts {
        Accounts {
            db,
            keys,
            policy,
            changes: Arc::new(AccessChanges::default()),
            logins,
            mfa,
            setup_token: setup_token.map(Into::into),
        }
    }

    /// Where changes of access are announced to open connections.
    pub fn changes(&self) -> &Arc<AccessChanges> {
        &self.changes
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn mfa(&self) -> &Mfa {
        &self.mfa
    }

    /// Registers an account. The first account on an instance becomes its owner and a creator;
    /// later ones follow the sign-up policy or an invitation.
    pub async fn register(
        &self,
        input: Registration,
        context: &RequestContext,
    ) -> Result<Session, AuthError> {
        let email = normalize_email(&input.email)?;
        let full_name = input.full_name.trim().to_string();
        if full_name.is_empty() || full_name.chars().count() > 200 {
            return Err(AuthError::Invalid(
                "enter your name (up to 200 characters)".into(),
            ));
        }
        passwords::check_strength(&input.password, &[&email, &full_name])?;
        let password_hash = hash_off_thread(input.password).await?;
        let configured = self.policy;
        let invitation_hash = input.invitation.as_deref().map(tokens::secret_hash);
        let setup_token_ok = match (&self.setup_token, &input.setup_token) {
            (Some(expected), Some(given)) => tokens::constant_time_eq(expected, given.trim()),
            _ => false,
        };
        let context = context.clone();
        let registered_email = email.clone();
        let (user_id, tenant_id, role, owner) = self
            .db
            .call(move |c| -> Result<_, AuthError> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // Policy and invitation first: whether an email has an account is told only to
                // someone who may register at all.
                let first = tx.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))? == 0;
                if first && !setup_token_ok {
                    return Err(AuthError::SetupTokenRequired);
                }
                let invitation = match &invitation_hash {
                    Some(hash) => Some(take_invitation(&tx, hash, &email)?),
                    None => None,
                };
                let policy = super::instance::signup_policy(&tx, configured)?;
                if !first && invitation.is_none() && policy != SignupPolicy::Open {
                    return Err(AuthError::SignupClosed(match policy {
                        SignupPolicy::Invite => "by invitation only",
                        _ => "closed",
                    }));
                }
                let taken: Option<String> = tx
                    .query_row("SELECT id FROM users WHERE email = ?1", [&email], |r| r.get(0))
                    .optional()?;
                if taken.is_some() {
                    return Err(AuthError::EmailTaken);
                }
                let user_id = new_id();
                tx.execute(
                    "INSERT INTO users (id, email, full_name, password_hash, is_owner) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![user_id, email, full_name, password_hash, first],
                )?;
                let (tenant_id, role) = match invitation {
                    Some((Some(tenant_id), role)) => (tenant_id, role),
                    _ => (create_tenant(&tx, &full_name)?, Role::Admin),
                };
                tx.execute(
                    "INSERT INTO memberships (tenant_id, user_id, role) VALUES (?1, ?2, ?3)",
                    params![tenant_id, user_id, role.as_str()],
                )?;
                audit::record(
                    &tx,
                    &AuditEvent::new("auth.registered", &email, &context)
                        .tenant(&tenant_id)
                        .actor(&user_id)
                        .detail(serde_json::json!({"role": role, "owner": first})),
                )?;
                tx.commit()?;
                Ok((user_id, tenant_id, role, first))
            })
            .await?;
        self.start_session(user_id, &registered_email, tenant_id, role, owner)
            .await
    }

    /// Signs in. Wrong passwords slow down only the account *from that network*; the right
    /// password from elsewhere still works (see `rate_limit::LoginThrottle`). Unknown emails,
    /// wrong passwords and throttled attempts answer alike whether or not the account exists.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        context: &RequestContext,
    ) -> Result<Session, AuthError> {
        let email = normalize_email(email).map_err(|_| AuthError::InvalidCredentials)?;
        self.logins.check(&email, context.ip)?;
        let lookup_email = email.clone();
        let account = self
            .db
            .call(move |c| sign_in_account(c, "u.email = ?1", &lookup_email))
            .await?;
        let Some(SignInAccount {
            id: user_id,
            password_hash: stored,
            owner,
            tenant_id,
            role,
            ..
        }) = account
        else {
            // Same work as a real check, so timing does not reveal which emails exist.
            let _ = verify_off_thread(password.to_string(), passwords::dummy_hash().to_string())
                .await?;
            let failures = self.logins.failed(&email, context.ip);
            self.audit(
                AuditEvent::new("auth.login_failed", &email, context).detail(
                    serde_json::json!({"reason": "unknown_email", "failures_from_network": failures}),
                ),
            )
            .await?;
            return Err(AuthError::InvalidCredentials);
        };
        if !verify_off_thread(password.to_string(), stored).await? {
            let failures = self.logins.failed(&email, context.ip);
            let mut event = AuditEvent::new("auth.login_failed", &email, context)
                .actor(&user_id)
                .detail(serde_json::json!({"reason": "wrong_password", "failures_from_network": failures}));
            if let Some(tenant_id) = &tenant_id {
                event = event.tenant(tenant_id);
            }
            self.audit(event).await?;
            return Err(AuthError::InvalidCredentials);
        }
        let (Some(tenant_id), Some(role)) = (tenant_id, role.as_deref().and_then(Role::parse))
        else {
            return Err(AuthError::Invalid(
                "this account belongs to no tenant any more".into(),
            ));
        };
        if let Some(enroll) = self.mfa.sign_in_step(&user_id).await? {
            // The throttle's count stays until the second step succeeds too: a known password
            // must not reset the budget for guessing codes.
            let challenge = self.mfa.challenge(&user_id, enroll).await?;
            self.audit(
                AuditEvent::new("auth.login_second_step", &email, context)
                    .tenant(&tenant_id)
                    .actor(&user_id)
                    .detail(serde_json::json!({ "enroll": enroll })),
            )
            .await?;
            return Err(AuthError::MfaRequired { challenge, enroll });
        }
        self.logins.succeeded(&email, context.ip);
        self.audit(
            AuditEvent::new("auth.login", &email, context)
                .tenant(&tenant_id)
                .actor(&user_id),
        )
        .await?;
        self.start_session(user_id, &email, tenant_id, role, owner)
            .await
    }

    /// The second step of a sign-in: the challenge the password step answered, with a code
    /// (or a recovery code). A challenge that enrols takes the first code of the new
    /// authenticator, and the session then carries the recovery codes.
    pub async fn login_second_step(
        &self,
        challenge: &str,
        code: Code,
        context: &RequestContext,
    ) -> Result<Session, AuthError> {
        let pending = self.mfa.take_challenge(challenge).await?;
        let (user_id, email, owner, tenant_id, role) = self.account_of(&pending.user_id).await?;
        self.logins.check(&email, context.ip)?;
        let kind = match &code {
            Code::Totp(_) => "totp",
            Code::Recovery(_) => "recovery_code",
        };
        let checked = if pending.enrolling {
            let Code::Totp(code) = code else {
                return Err(AuthError::Invalid(
                    "enter the 6-digit code the new authenticator app shows".into(),
                ));
            };
            self.mfa
                .confirm_enrollment(&user_id, &email, &code, context)
                .await
                .map(|codes| Some(codes.recovery_codes))
        } else {
            self.mfa
                .verify(&user_id, &email, &code, context)
                .await
                .map(|()| None)
        };
        let recovery_codes = match checked {
            Ok(codes) => codes,
            Err(error) => {
                if matches!(error, AuthError::InvalidMfaCode(_)) {
                    self.logins.failed(&email, context.ip);
                }
                return Err(error);
            }
        };
        self.mfa.finish_challenge(challenge).await?;
        self.logins.succeeded(&email, context.ip);
        self.audit(
            AuditEvent::new("auth.login", &email, context)
                .tenant(&tenant_id)
                .actor(&user_id)
                .detail(serde_json::json!({ "second_factor": kind })),
        )
        .await?;
        let mut session = self
            .start_session(user_id, &email, tenant_id, role, owner)
            .await?;
        session.recovery_codes = recovery_codes;
        Ok(session)
    }

    /// A sign-in whose account must set up two-step sign-in: the new authenticator's secret
    /// and QR code, for the challenge's account.
    pub async fn login_enrollment(&self, challenge: &str) -> Result<Enrollment, AuthError> {
        let pending = self.mfa.take_challenge(challenge).await?;
        if !pending.enrolling {
            return Err(AuthError::Conflict(
                "two-step sign-in is already set up: enter a code from the authenticator app"
                    .into(),
            ));
        }
        let (user_id, email, ..) = self.account_of(&pending.user_id).await?;
        self.mfa.begin_enrollment(&user_id, &email).await
    }

    /// (user id, email, owner, tenant, role) of an account that may sign in.
    async fn account_of(
        &self,
        user_id: &str,
    ) -> Result<(String, String, bool, String, Role), AuthError> {
        let id = user_id.to_string();
        let account = self
            .db
            .call(move |c| sign_in_account(c, "u.id = ?1", &id))
            .await?
            .ok_or(AuthError::MfaChallengeExpired)?;
        match (
            account.tenant_id,
            account.role.as_deref().and_then(Role::parse),
        ) {
            (Some(tenant_id), Some(role)) => {
                Ok((account.id, account.email, account.owner, tenant_id, role))
            }
            _ => Err(AuthError::Invalid(
                "this account belongs to no tenant any more".into(),
            )),
        }
    }

    /// Exchanges a refresh token for a new pair. A token that was already exchanged is a sign
    /// of theft: its whole family is revoked.
    pub async fn refresh(
        &self,
        token: &str,
        context: &RequestContext,
    ) -> Result<Session, AuthError> {
        let hash = tokens::secret_hash(token);
        let context = context.clone();
        let outcome = self
            .db
            .call(move |c| -> Result<_, AuthError> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let row = tx
                    .query_row(
                        "SELECT r.id, r.family_id, r.user_id, r.tenant_id, r.rotated_at IS NOT NULL,
                                r.revoked_at IS NOT NULL,
                                r.expires_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                                u.email, u.is_owner, m.role, u.session_generation,
                                coalesce((julianday('now') - julianday(r.rotated_at)) * 86400 < ?2, 0)
                                AND NOT EXISTS (SELECT 1 FROM refresh_tokens s WHERE s.family_id = r.family_id
                                                AND s.rotated_at IS NOT NULL AND s.rowid > r.rowid)
                         FROM refresh_tokens r
                         JOIN users u ON u.id = r.user_id
                         LEFT JOIN memberships m ON m.user_id = r.user_id AND m.tenant_id = r.tenant_id
                         WHERE r.token_hash = ?1",
                        params![&hash, ROTATION_GRACE_SECONDS],
                        |r| {
                            Ok((
                                (
                                    r.get::<_, String>(0)?,
                                    r.get::<_, String>(1)?,
                                    r.get::<_, String>(2)?,
                                    r.get::<_, String>(3)?,
                                ),
                                (r.get::<_, bool>(4)?, r.get::<_, bool>(5)?, r.get::<_, bool>(6)?),
                                (
                                    r.get::<_, String>(7)?,
                                    r.get::<_, bool>(8)?,
                                    r.get::<_, Option<String>>(9)?,
                                    r.get::<_, i64>(10)?,
                                    r.get::<_, bool>(11)?,
                                ),
                            ))
                        },
                    )
                    .optional()?;
                let Some((
                    (id, family, user_id, tenant_id),
                    (rotated, revoked, expired),
                    (email, owner, role, generation, within_grace),
                )) = row
                else {
                    return Err(AuthError::InvalidToken);
                };
                // Another tab exchanged the same token a moment ago, and nobody used what it
                // got yet: this one gets a pair of its own in the same family instead of the
                // family being revoked. An older token, or one whose successor was used, is theft.
                if rotated && !revoked && !within_grace {
                    revoke_family(&tx, &family)?;
                    audit::record(
                        &tx,
                        &AuditEvent::new("auth.refresh_token_reused", &email, &context)
                            .tenant(&tenant_id)
                            .actor(&user_id),
                    )?;
                    tx.commit()?;
                    return Err(AuthError::TokenReused);
                }
                let role = role.as_deref().and_then(Role::parse);
                let (false, false, Some(role)) = (revoked, expired, role) else {
                    return Err(AuthError::InvalidToken);
                };
                if super::instance::is_suspended(&tx, &tenant_id)? {
                    return Err(AuthError::Suspended);
                }
                if !rotated {
                    tx.execute(
                        "UPDATE refresh_tokens SET rotated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                        [&id],
                    )?;
                }
                let refresh_token = insert_refresh_token(&tx, &family, &user_id, &tenant_id)?;
                tx.commit()?;
                Ok((user_id, email, tenant_id, role, owner, refresh_token, generation))
            })
            .await?;
        let (user_id, email, tenant_id, role, owner, refresh_token, generation) = outcome;
        Ok(Session {
            access_token: self
                .keys
                .issue(&user_id, &email, &tenant_id, role, owner, generation),
            refresh_token,
            token_type: "Bearer",
            expires_in: tokens::ACCESS_TOKEN_LIFETIME.as_secs(),
            recovery_codes: None,
        })
    }

    /// Who may register (the owner's choice in the dashboard, else the configuration), and
    /// whether the instance still waits for its first account (its owner).
    pub async fn instance(&self) -> Result<(SignupPolicy, bool), AuthError> {
        let configured = self.policy;
        self.db
            .call(move |c| {
                let empty: bool =
                    c.query_row("SELECT NOT EXISTS (SELECT 1 FROM users)", [], |r| r.get(0))?;
                Ok((super::instance::signup_policy(c, configured)?, empty))
            })
            .await
    }

    /// Ends the sign-in that `token` belongs to; `everywhere` ends every sign-in of its user,
    /// access tokens and open connections included.
    pub async fn logout(
        &self,
        token: &str,
        everywhere: bool,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let hash = tokens::secret_hash(token);
        let context = context.clone();
        self.db
            .call(move |c| -> Result<String, AuthError> {
                let row = c
                    .query_row(
                        "SELECT r.family_id, r.tenant_id, r.user_id, u.email FROM refresh_tokens r
                         JOIN users u ON u.id = r.user_id
                         WHERE r.token_hash = ?1 AND r.revoked_at IS NULL",
                        [&hash],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, String>(3)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((family, tenant_id, user_id, email)) = row else {
                    return Err(AuthError::InvalidToken);
                };
                if everywhere {
                    c.execute(
                        "UPDATE refresh_tokens SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                         WHERE user_id = ?1 AND revoked_at IS NULL",
                        [&user_id],
                    )?;
                    c.end_sessions(&user_id)?;
                } else {
                    revoke_family(c, &family)?;
                }
                let action = if everywhere {
                    "auth.logout_everywhere"
                } else {
                    "auth.logout"
                };
                audit::record(
                    c,
                    &AuditEvent::new(action, &email, &context)
                        .tenant(&tenant_id)
                        .actor(&user_id),
                )?;
                Ok(tenant_id)
            })
            .await
            .map(|tenant_id| {
                if everywhere {
                    self.changes.changed(&tenant_id);
                }
            })
    }

    pub async fn me(&self, principal: &Principal) -> Result<Me, AuthError> {
        let user_id = principal
            .user_id
            .clone()
            .ok_or(AuthError::NotFound("user"))?;
        let tenant_id = principal.tenant_id().to_string();
        let role = principal.role;
        self.db
            .call(move |c| -> Result<Me, AuthError> {
                c.query_row(
                    "SELECT u.id, u.email, u.full_name, u.is_owner, t.id, t.name, co.slug
                     FROM users u, tenants t JOIN coaches co ON co.tenant_id = t.id
                     WHERE u.id = ?1 AND t.id = ?2",
                    [&user_id, &tenant_id],
                    |r| {
                        Ok(Me {
                            id: r.get(0)?,
                            email: r.get(1)?,
                            full_name: r.get(2)?,
                            is_owner: r.get(3)?,
                            role,
                            tenant: TenantView {
                                id: r.get(4)?,
                                name: r.get(5)?,
                                coach_slug: r.get(6)?,
                            },
                        })
                    },
                )
                .optional()?
                .ok_or(AuthError::NotFound("user"))
            })
            .await
    }

    /// Changes the caller's password, ends every sign-in of the account, and returns a new one
    /// for the caller.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: &str,
        new: &str,
        context: &RequestContext,
    ) -> Result<Session, AuthError> {
        let user_id = principal.user_id.clone().ok_or(AuthError::Forbidden)?;
        let id = user_id.clone();
        let (email, full_name, stored): (String, String, String) = self
            .db
            .call(move |c| {
                c.query_row(
                    "SELECT email, full_name, password_hash FROM users WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(AuthError::from)
            })
            .await?;
        if !verify_off_thread(current.to_string(), stored).await? {
            return Err(AuthError::InvalidCredentials);
        }
        passwords::check_strength(new, &[&email, &full_name])?;
        let hash = hash_off_thread(new.to_string()).await?;
        self.set_password(&user_id, hash).await?;
        self.audit(
            AuditEvent::new("auth.password_changed", &email, context)
                .tenant(principal.tenant_id())
                .actor(&user_id),
        )
        .await?;
        self.start_session(
            user_id,
            &email,
            principal.tenant_id().to_string(),
            principal.role,
            principal.is_owner,
        )
        .await
    }

    /// Starts a password reset. Returns the token for the caller to deliver (email, or the log
    /// when no mail server is configured), or `None` when no account has this email; callers
    /// answer the same either way so that emails cannot be probed.
    pub async fn request_reset(
        &self,
        email: &str,
        context: &RequestContext,
    ) -> Result<Option<String>, AuthError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        let lookup = email.clone();
        let user_id: Option<(String, String)> = self
            .db
            .call(move |c| -> Result<Option<(String, String)>, AuthError> {
                let user_id: Option<String> = c
                    .query_row("SELECT id FROM users WHERE email = ?1", [&lookup], |r| {
                        r.get(0)
                    })
                    .optional()?;
                let made = match &user_id {
                    Some(user_id) => Some(insert_reset(c, user_id)?.0),
                    None => None,
                };
                Ok(user_id.zip(made))
            })
            .await?;
        let Some((user_id, token)) = user_id else {
            return Ok(None);
        };
        self.audit(
            AuditEvent::new("auth.password_reset_requested", &email, context).actor(&user_id),
        )
        .await?;
        Ok(Some(token))
    }

    /// A reset link for a member of the admin's team, for when no mail server is configured:
    /// the admin passes it on. Refused for the server's owner (unless the owner asks) and for
    /// people who also belong to another team, whose accounts this admin does not govern.
    pub async fn reset_token_for_member(
        &self,
        principal: &Principal,
        user_id: &str,
        context: &RequestContext,
    ) -> Result<(String, String), AuthError> {
        let (scope, target, asker_is_owner) = (
            principal.scope().clone(),
            user_id.to_string(),
            principal.is_owner,
        );
        let (email, token, expires_at) = self
            .db
            .call(move |c| -> Result<_, AuthError> {
                let row: Option<(String, bool, i64)> = c
                    .query_row(
                        "SELECT u.email, u.is_owner,
                                (SELECT count(*) FROM memberships o WHERE o.user_id = u.id AND o.tenant_id <> m.tenant_id)
                         FROM memberships m JOIN users u ON u.id = m.user_id
                         WHERE m.tenant_id = ?1 AND m.user_id = ?2",
                        params![scope.tenant_id(), target],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let (email, is_owner, other_teams) = row.ok_or(AuthError::NotFound("team member"))?;
                if (is_owner && !asker_is_owner) || other_teams > 0 {
                    return Err(AuthError::Invalid(
                        "this person's account is not only in your team; they reset their password themselves from the sign-in page".into(),
                    ));
                }
                let (token, expires_at) = insert_reset(c, &target)?;
                Ok((email, token, expires_at))
            })
            .await?;
        self.audit(AuditEvent::by(principal, "team.reset_link_created", context).target(&email))
            .await?;
        Ok((token, expires_at))
    }

    /// A reset link for any account, for the operator at the console (`companero admin
    /// reset-link`).
    pub async fn reset_token_for_email(&self, email: &str) -> Result<(String, String), AuthError> {
        let email = normalize_email(email)?;
        let lookup = email.clone();
        let made = self
            .db
            .call(move |c| -> Result<_, AuthError> {
                let user_id: String = c
                    .query_row("SELECT id FROM users WHERE email = ?1", [&lookup], |r| {
                        r.get(0)
                    })
                    .optional()?
                    .ok_or(AuthError::NotFound("account with this email"))?;
                let made = insert_reset(c, &user_id)?;
                Ok((user_id, made))
            })
            .await?;
        let (user_id, made) = made;
        self.audit(
            AuditEvent::new(
                "admin.reset_link_created",
                &email,
                &RequestContext::default(),
            )
            .actor(&user_id),
        )
        .await?;
        Ok(made)
    }

    /// The operator turns two-step sign-in off for an account (`companero admin disable-mfa`).
    pub async fn reset_mfa_for_email(&self, email: &str) -> Result<(), AuthError> {
        let email = normalize_email(email)?;
        let lookup = email.clone();
        let user_id = self
            .db
            .read(move |c| -> Result<String, AuthError> {
                c.query_row("SELECT id FROM users WHERE email = ?1", [&lookup], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or(AuthError::NotFound("account with this email"))
            })
            .await?;
        self.mfa
            .reset_by_operator(&user_id, &email, &RequestContext::default())
            .await
    }

    /// Withdraws an invitation of the caller's tenant that was not accepted yet.
    pub async fn revoke_invitation(
        &self,
        principal: &Principal,
        invitation_id: &str,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let (tenant_id, id) = (principal.tenant_id().to_string(), invitation_id.to_string());
        let email: String = self
            .db
            .call(move |c| -> Result<String, AuthError> {
                c.query_row(
                    "DELETE FROM invitations WHERE id = ?1 AND tenant_id = ?2 AND accepted_at IS NULL
                     RETURNING email",
                    params![id, tenant_id],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(AuthError::NotFound("invitation"))
            })
            .await?;
        self.audit(AuditEvent::by(principal, "team.invitation_revoked", context).target(&email))
            .await
    }

    /// Completes a reset: single use, within an hour; ends every sign-in of the account.
    pub async fn confirm_reset(
        &self,
        token: &str,
        new_password: &str,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let hash = tokens::secret_hash(token);
        let row: Option<(String, String, String)> = self
            .db
            .call(move |c| -> Result<_, AuthError> {
                Ok(c.query_row(
                    "SELECT u.id, u.email, u.full_name FROM password_resets p JOIN users u ON u.id = p.user_id
                     WHERE p.token_hash = ?1 AND p.used_at IS NULL
                       AND p.expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?)
            })
            .await?;
        let Some((user_id, email, full_name)) = row else {
            return Err(AuthError::InvalidToken);
        };
        passwords::check_strength(new_password, &[&email, &full_name])?;
        let new_hash = hash_off_thread(new_password.to_string()).await?;
        let token_hash = tokens::secret_hash(token);
        let used = self
            .db
            .call(move |c| {
                c.execute(
                    "UPDATE password_resets SET used_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                     WHERE token_hash = ?1 AND used_at IS NULL",
                    [&token_hash],
                )
                .map_err(AuthError::from)
            })
            .await?;
        if used == 0 {
            return Err(AuthError::InvalidToken); // used concurrently
        }
        self.set_password(&user_id, new_hash).await?;
        self.audit(AuditEvent::new("auth.password_reset", &email, context).actor(&user_id))
            .await
    }

    /// Invites someone into the caller's tenant with a role (admins only; checked by the route).
    pub async fn invite(
        &self,
        principal: &Principal,
        email: &str,
        role: Role,
        context: &RequestContext,
    ) -> Result<Invitation, AuthError> {
        let email = normalize_email(email)?;
        let id = new_id();
        // Derived from the id, so the mail job can make the same link again from the id alone.
        let token = self.keys.link_secret("inv_", &id);
        let hash = tokens::secret_hash(&token);
        let tenant_id = principal.tenant_id().to_string();
        let invited_by = principal.user_id.clone();
        let (invitation_id, invitee) = (id.clone(), email.clone());
        let expires_at: String = self
            .db
            .call(move |c| {
                c.query_row(
                    "INSERT INTO invitations (id, tenant_id, email, role, token_hash, invited_by, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?7))
                     RETURNING expires_at",
                    params![invitation_id, tenant_id, invitee, role.as_str(), hash, invited_by, INVITATION_LIFETIME],
                    |r| r.get(0),
                )
                .map_err(AuthError::from)
            })
            .await?;
        self.audit(
            AuditEvent::by(principal, "team.invited", context)
                .target(&email)
                .detail(serde_json::json!({"role": role})),
        )
        .await?;
        Ok(Invitation {
            id,
            email,
            role,
            token,
            expires_at,
        })
    }

    /// An invitation that can still be accepted, with its token made again (for its email).
    pub async fn pending_invitation(&self, id: &str) -> Result<Option<Invitation>, AuthError> {
        let lookup = id.to_string();
        let found: Option<(String, String, String)> = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT email, role, expires_at FROM invitations WHERE id = ?1 \
                     AND accepted_at IS NULL AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                    [&lookup],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(AuthError::from)
            })
            .await?;
        Ok(found.and_then(|(email, role, expires_at)| {
            Some(Invitation {
                token: self.keys.link_secret("inv_", id),
                id: id.to_string(),
                email,
                role: Role::parse(&role)?,
                expires_at,
            })
        }))
    }

    /// Makes an account the instance owner, creating it (with its own tenant) if needed.
    pub async fn create_owner(
        &self,
        email: &str,
        password: &str,
        full_name: &str,
    ) -> Result<bool, AuthError> {
        let email = normalize_email(email)?;
        passwords::check_strength(password, &[&email, full_name])?;
        let hash = hash_off_thread(password.to_string()).await?;
        let full_name = if full_name.trim().is_empty() {
            email.split('@').next().unwrap_or("Owner").to_string()
        } else {
            full_name.trim().to_string()
        };
        self.db
            .call(move |c| -> Result<bool, AuthError> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let existing: Option<String> = tx
                    .query_row("SELECT id FROM users WHERE email = ?1", [&email], |r| r.get(0))
                    .optional()?;
                let created = existing.is_none();
                match existing {
                    Some(id) => {
                        tx.execute(
                            "UPDATE users SET is_owner = 1, password_hash = ?2 WHERE id = ?1",
                            params![id, hash],
                        )?;
                    }
                    None => {
                        let id = new_id();
                        tx.execute(
                            "INSERT INTO users (id, email, full_name, password_hash, is_owner) VALUES (?1, ?2, ?3, ?4, 1)",
                            params![id, email, full_name, hash],
                        )?;
                        let tenant_id = create_tenant(&tx, &full_name)?;
                        tx.execute(
                            "INSERT INTO memberships (tenant_id, user_id, role) VALUES (?1, ?2, 'admin')",
                            params![tenant_id, id],
                        )?;
                    }
                }
                audit::record(
                    &tx,
                    &AuditEvent::new("admin.owner_created", &email, &RequestContext::default()),
                )?;
                tx.commit()?;
                Ok(created)
            })
            .await
    }

    async fn start_session(
        &self,
        user_id: String,
        email: &str,
        tenant_id: String,
        role: Role,
        owner: bool,
    ) -> Result<Session, AuthError> {
        let (tenant, user) = (tenant_id.clone(), user_id.clone());
        let (suspended, generation) = self
            .db
            .call(move |c| -> Result<_, AuthError> {
                Ok((
                    super::instance::is_suspended(c, &tenant)?,
                    c.session_generation(&user)?,
                ))
            })
            .await?;
        if suspended {
            return Err(AuthError::Suspended);
        }
        let access_token = self
            .keys
            .issue(&user_id, email, &tenant_id, role, owner, generation);
        let refresh_token = self
            .db
            .call(move |c| insert_refresh_token(c, &new_id(), &user_id, &tenant_id))
            .await?;
        Ok(Session {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: tokens::ACCESS_TOKEN_LIFETIME.as_secs(),
            recovery_codes: None,
        })
    }

    /// Sets a new password and ends everything the old one opened: sign-ins (refresh and
    /// access tokens, open connections) and reset links not used yet.
    async fn set_password(&self, user_id: &str, hash: String) -> Result<(), AuthError> {
        let id = user_id.to_string();
        let tenants = self
            .db
            .call(move |c| -> Result<Vec<String>, AuthError> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "UPDATE users SET password_hash = ?2, failed_logins = 0, locked_until = NULL WHERE id = ?1",
                    params![id, hash],
                )?;
                tx.execute(
                    "UPDATE refresh_tokens SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                     WHERE user_id = ?1 AND revoked_at IS NULL",
                    [&id],
                )?;
                expire_resets(&tx, &id)?;
                tx.end_sessions(&id)?;
                let tenants = tx
                    .prepare("SELECT tenant_id FROM memberships WHERE user_id = ?1")?
                    .query_map([&id], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                tx.commit()?;
                Ok(tenants)
            })
            .await?;
        for tenant_id in tenants {
            self.changes.changed(&tenant_id);
        }
        Ok(())
    }

    async fn audit(&self, event: AuditEvent) -> Result<(), AuthError> {
        self.db
            .call(move |c| audit::record(c, &event).map_err(AuthError::from))
            .await
    }
}

/// What signing in needs to know of an account.
struct SignInAccount {
    id: String,
    email: String,
    password_hash: String,
    owner: bool,
    /// The first tenant it belongs to, and its role there.
    tenant_id: Option<String>,
    role: Option<String>,
}

/// The account `condition` (on `u`, the users table) names.
fn sign_in_account(
    c: &Connection,
    condition: &str,
    value: &str,
) -> Result<Option<SignInAccount>, AuthError> {
    Ok(c.query_row(
        &format!(
            "SELECT u.id, u.password_hash, u.is_owner,
                    (SELECT tenant_id FROM memberships m WHERE m.user_id = u.id ORDER BY m.created_at LIMIT 1),
                    (SELECT role FROM memberships m WHERE m.user_id = u.id ORDER BY m.created_at LIMIT 1),
                    u.email
             FROM users u WHERE {condition}"
        ),
        [value],
        |r| {
            Ok(SignInAccount {
                id: r.get(0)?,
                password_hash: r.get(1)?,
                owner: r.get(2)?,
                tenant_id: r.get(3)?,
                role: r.get(4)?,
                email: r.get(5)?,
            })
        },
    )
    .optional()?)
}

fn insert_refresh_token(
    c: &Connection,
    family: &str,
    user_id: &str,
    tenant_id: &str,
) -> Result<String, AuthError> {
    let token = tokens::secret_token("rt_");
    c.execute(
        "INSERT INTO refresh_tokens (id, family_id, user_id, tenant_id, token_hash, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?6))",
        params![
            new_id(),
            family,
            user_id,
            tenant_id,
            tokens::secret_hash(&token),
            format!("+{} seconds", tokens::REFRESH_TOKEN_LIFETIME.as_secs())
        ],
    )?;
    Ok(token)
}

/// A new reset link for a user; only the newest one works. Returns (token, expires_at).
fn insert_reset(c: &Connection, user_id: &str) -> rusqlite::Result<(String, String)> {
    expire_resets(c, user_id)?;
    let token = tokens::secret_token("rs_");
    let expires_at = c.query_row(
        "INSERT INTO password_resets (token_hash, user_id, expires_at)
         VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3)) RETURNING expires_at",
        params![tokens::secret_hash(&token), user_id, RESET_LIFETIME],
        |r| r.get(0),
    )?;
    Ok((token, expires_at))
}

/// Ends every reset link of a user that was not used yet.
fn expire_resets(c: &Connection, user_id: &str) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE password_resets SET used_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE user_id = ?1 AND used_at IS NULL",
        [user_id],
    )
}

fn revoke_family(c: &Connection, family: &str) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE refresh_tokens SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE family_id = ?1 AND revoked_at IS NULL",
        [family],
    )
}

/// Validates and consumes an invitation for `email`: (tenant to join, or None to open one; role).
fn take_invitation(
    c: &Connection,
    token_hash: &str,
    email: &str,
) -> Result<(Option<String>, Role), AuthError> {
    let row: Option<(String, Option<String>, String)> = c
        .query_row(
            "SELECT id, tenant_id, role FROM invitations
             WHERE token_hash = ?1 AND email = ?2 AND accepted_at IS NULL
               AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![token_hash, email],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (id, tenant_id, role) = row.ok_or(AuthError::InvalidToken)?;
    c.execute(
        "UPDATE invitations SET accepted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        [&id],
    )?;
    Ok((tenant_id, Role::parse(&role).unwrap_or(Role::Analyst)))
}

/// Creates a tenant and its coach, whose public slug comes from the creator's name.
fn create_tenant(c: &Connection, full_name: &str) -> Result<String, AuthError> {
    let tenant_id = new_id();
    c.execute(
        "INSERT INTO tenants (id, name) VALUES (?1, ?2)",
        params![tenant_id, full_name],
    )?;
    let base = slugify(full_name);
    let mut slug = base.clone();
    let mut n = 2;
    while c
        .query_row("SELECT 1 FROM coaches WHERE slug = ?1", [&slug], |_| Ok(()))
        .optional()?
        .is_some()
    {
        slug = format!("{base}-{n}");
        n += 1;
    }
    c.execute(
        "INSERT INTO coaches (tenant_id, slug, name) VALUES (?1, ?2, ?3)",
        params![tenant_id, slug, full_name],
    )?;
    Ok(tenant_id)
}

/// "María José Núñez" → "maria-jose-nunez".
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'ø' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ñ' => 'n',
            'ç' => 'c',
            other => other,
        };
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(40).collect();
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "coach".to_string()
    } else {
        slug
    }
}

/// Password hashing, at most one per core at a time (see `HASH_WAIT`).
fn hash_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

async fn with_hash_permit<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    let permit = tokio::time::timeout(HASH_WAIT, hash_permits().acquire())
        .await
        .map_err(|_| AuthError::Busy)?
        .map_err(|_| AuthError::Busy)?;
    let result = tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| AuthError::Busy);
    drop(permit);
    result
}

async fn hash_off_thread(password: String) -> Result<String, AuthError> {
    with_hash_permit(move || passwords::hash(&password)).await
}

async fn verify_off_thread(password: String, stored: String) -> Result<bool, AuthError> {
    with_hash_permit(move || passwords::verify(&password, &stored)).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs_are_plain_ascii() {
        assert_eq!(super::slugify("María José Núñez"), "maria-jose-nunez");
        assert_eq!(super::slugify("  Dr. Ana   O'Neil!! "), "dr-ana-o-neil");
        assert_eq!(super::slugify("李小龙"), "coach");
    }
}
