//! Two-step sign-in for staff: TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps, one step of
//! clock drift either way) and ten one-time recovery codes.
//!
//! - The secret is sealed at rest under `<data-dir>/keys/mfa.key`, so a copy of the database
//!   alone cannot make codes. Recovery codes are stored as SHA-256 hashes.
//! - A code works once: the step it belongs to is recorded and an older or equal step is
//!   refused, so a code seen over someone's shoulder is spent.
//! - Five wrong codes in a row lock the account's codes for 15 minutes (on top of the sign-in
//!   throttle per network); every failure, lock, use of a recovery code and change is audited.
//! - A sign-in with a right password and two-step sign-in on answers a challenge (5 minutes,
//!   5 attempts) instead of a session; the code completes it.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use totp_rs::{Algorithm, TOTP};

use super::audit::{self, AuditEvent};
use super::{AuthError, RequestContext, tokens};
use crate::channels::secrets::Sealer;
use crate::db::access::AccessStore;
use crate::db::mfa::{Challenge, MfaStore};
use crate::db::{Db, DbError};

/// How long a sign-in waits for its second step.
pub const CHALLENGE_LIFETIME: Duration = Duration::minutes(5);
/// Codes tried on one challenge before it is spent.
const CHALLENGE_ATTEMPTS: i64 = 5;
/// Wrong codes in a row that lock the account's codes, and for how long.
const LOCK_AFTER: i64 = 5;
const LOCK_FOR: Duration = Duration::minutes(15);
const STEP_SECONDS: u64 = 30;
const DIGITS: usize = 6;
const RECOVERY_CODES: usize = 10;
/// Shown in the authenticator app next to the account's email.
const ISSUER: &str = "Compañero";
pub const CHALLENGE_PREFIX: &str = "mfa_";

/// What the account's owner sees about their two-step sign-in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MfaStatus {
    pub enabled: bool,
    pub enabled_at: Option<DateTime<Utc>>,
    pub recovery_codes_left: i64,
    /// Their tenant or the instance requires it: it cannot be turned off.
    pub required: bool,
}

/// An enrolment started: shown once, confirmed with a first code.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = MfaEnrollment)]
pub struct Enrollment {
    /// Base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/...`, what the QR code holds.
    pub otpauth_url: String,
    /// The QR code as an SVG image.
    pub qr_svg: String,
}

/// New recovery codes: shown once, each works once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// A second factor as a person types it.
#[derive(Debug, Clone)]
pub enum Code {
    Totp(String),
    Recovery(String),
}

impl Code {
    /// From a request's `code` / `recovery_code` fields: exactly one of them.
    pub fn from_fields(code: Option<String>, recovery: Option<String>) -> Result<Code, AuthError> {
        match (code, recovery) {
            (Some(code), None) => Ok(Code::Totp(code)),
            (None, Some(recovery)) => Ok(Code::Recovery(recovery)),
            _ => Err(AuthError::Invalid(
                "send the 6-digit `code` from the authenticator app, or one `recovery_code`".into(),
            )),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Code::Totp(_) => "totp",
            Code::Recovery(_) => "recovery_code",
        }
    }
}

/// Two-step sign-in. Cheap to clone.
#[derive(Clone)]
pub struct Mfa {
    db: Db,
    sealer: Sealer,
}

fn totp(secret: Vec<u8>, email: &str) -> Result<TOTP, AuthError> {
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECONDS,
        secret,
        Some(ISSUER.to_string()),
        email.to_string(),
    )
    .map_err(|e| AuthError::Invalid(format!("cannot make an authenticator secret: {e}")))
}

/// The step a code belongs to, if it is right for `now` give or take one step.
fn matching_step(totp: &TOTP, code: &str, now: DateTime<Utc>) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let current = now.timestamp().max(0) as u64 / STEP_SECONDS;
    (current.saturating_sub(1)..=current + 1).find_map(|step| {
        let expected = totp.generate(step * STEP_SECONDS);
        constant_time_eq(expected.as_bytes(), code.as_bytes()).then_some(step as i64)
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `abcde-fghij`: 50 random bits in an alphabet without look-alikes.
fn new_recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 10];
    super::random_bytes(&mut bytes);
    let letters: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &letters[..5], &letters[5..])
}

fn recovery_hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    tokens::secret_hash(&format!("recovery:{normal}"))
}

fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
    let hashes = codes.iter().map(|c| recovery_hash(c)).collect();
    (codes, hashes)
}

fn qr_svg(url: &str) -> Result<String, AuthError> {
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| AuthError::Invalid(format!("cannot draw the QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

/// The sealing context: a secret copied to another account's row does not open.
fn seal_context(user_id: &str) -> String {
    format!("mfa:{user_id}")
}

impl Mfa {
    pub fn new(db: Db, sealer: Sealer) -> Mfa {
        Mfa { db, sealer }
    }

    /// With the key in `keys_dir` (created on first use).
    pub fn load(db: Db, keys_dir: &std::path::Path) -> anyhow::Result<Mfa> {
        Ok(Mfa::new(
            db,
            Sealer::load_or_create_named(keys_dir, "mfa.key")?,
        ))
    }

    pub async fn status(&self, user_id: &str) -> Result<MfaStatus, AuthError> {
        let id = user_id.to_string();
        self.db
            .read(move |c| {
                let factor = c.mfa_factor(&id)?;
                let enabled_at = factor.and_then(|f| f.enabled_at);
                Ok::<_, AuthError>(MfaStatus {
                    enabled: enabled_at.is_some(),
                    enabled_at,
                    recovery_codes_left: c.recovery_codes_left(&id)?,
                    required: c.mfa_required(&id)?,
                })
            })
            .await
    }

    /// Whether signing in as this account needs a second step: `Some(false)` a code,
    /// `Some(true)` an enrolment first (required, not set up), `None` no.
    pub async fn sign_in_step(&self, user_id: &str) -> Result<Option<bool>, AuthError> {
        let id = user_id.to_string();
        self.db
            .read(move |c| {
                let enabled = c.mfa_factor(&id)?.is_some_and(|f| f.enabled_at.is_some());
                Ok::<_, AuthError>(if enabled {
                    Some(false)
                } else if c.mfa_required(&id)? {
                    Some(true)
                } else {
                    None
                })
            })
            .await
    }

    /// Starts (or restarts) an enrolment: a new secret, shown once.
    pub async fn begin_enrollment(
        &self,
        user_id: &str,
        email: &str,
    ) -> Result<Enrollment, AuthError> {
        let mut secret = vec![0u8; 20];
        super::random_bytes(&mut secret);
        let totp = totp(secret.clone(), email)?;
        let sealed = self.sealer.seal(&seal_context(user_id), &secret);
        let id = user_id.to_string();
        let started = self
            .db
            .call(move |c| c.start_mfa_enrollment(&id, &sealed))
            .await?;
        if !started {
            return Err(AuthError::Conflict(
                "two-step sign-in is already on; turn it off first to use another authenticator"
                    .into(),
            ));
        }
        let otpauth_url = totp.get_url();
        Ok(Enrollment {
            secret: totp.get_secret_base32(),
            qr_svg: qr_svg(&otpauth_url)?,
            otpauth_url,
        })
    }

    /// Confirms the enrolment with a first code: two-step sign-in is on from now, and the
    /// recovery codes are answered (once).
    pub async fn confirm_enrollment(
        &self,
        user_id: &str,
        email: &str,
        code: &str,
        context: &RequestContext,
    ) -> Result<RecoveryCodes, AuthError> {
        let factor = self.factor(user_id).await?.ok_or(AuthError::Invalid(
            "start the set-up first (POST /api/v1/auth/mfa/enrollment)".into(),
        ))?;
        if factor.enabled_at.is_some() {
            return Err(AuthError::Conflict("two-step sign-in is already on".into()));
        }
        self.check_lock(&factor)?;
        let totp = totp(self.open(user_id, &factor.secret)?, email)?;
        let Some(step) = matching_step(&totp, code, Utc::now()) else {
            self.failed(user_id, email, "totp", context).await?;
            return Err(AuthError::InvalidMfaCode(
                "that code is not right; check the time on your phone and enter the current code",
            ));
        };
        let (codes, hashes) = new_recovery_codes();
        let (id, event) = (
            user_id.to_string(),
            self.event("auth.mfa_enabled", user_id, email, context)
                .await?,
        );
        self.db
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    c.enable_mfa(&id, step, &hashes)?;
                    audit::record(c, &event).map_err(DbError::from)
                })
            })
            .await?;
        Ok(RecoveryCodes {
            recovery_codes: codes,
        })
    }

    /// Checks a second factor of an account with two-step sign-in on; a right code is spent.
    pub async fn verify(
        &self,
        user_id: &str,
        email: &str,
        code: &Code,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let factor = self
            .factor(user_id)
            .await?
            .filter(|f| f.enabled_at.is_some())
            .ok_or(AuthError::MfaNotEnabled)?;
        self.check_lock(&factor)?;
        let id = user_id.to_string();
        let accepted = match code {
            Code::Totp(code) => {
                let totp = totp(self.open(user_id, &factor.secret)?, email)?;
                match matching_step(&totp, code, Utc::now()) {
                    Some(step) => self.db.call(move |c| c.accept_mfa_step(&id, step)).await?,
                    None => false,
                }
            }
            Code::Recovery(code) => {
                let hash = recovery_hash(code);
                let used = self
                    .db
                    .call(move |c| c.use_recovery_code(&id, &hash))
                    .await?;
                if used {
                    let event = self
                        .event("auth.mfa_recovery_code_used", user_id, email, context)
                        .await?;
                    self.db
                        .call(move |c| audit::record(c, &event).map_err(AuthError::from))
                        .await?;
                }
                used
            }
        };
        if !accepted {
            self.failed(user_id, email, code.kind(), context).await?;
            return Err(AuthError::InvalidMfaCode(match code {
                Code::Totp(_) => {
                    "that code is not right or was used already; enter the current code from your authenticator app"
                }
                Code::Recovery(_) => "that recovery code is not right or was used already",
            }));
        }
        Ok(())
    }

    /// Turns two-step sign-in off (with a current code or a recovery code), unless the
    /// account's tenant or the instance requires it.
    pub async fn disable(
        &self,
        user_id: &str,
        email: &str,
        code: &Code,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let id = user_id.to_string();
        if self.db.read(move |c| c.mfa_required(&id)).await? {
            return Err(AuthError::MfaPolicy(
                "your team or this server requires two-step sign-in; it cannot be turned off",
            ));
        }
        self.verify(user_id, email, code, context).await?;
        let (id, event) = (
            user_id.to_string(),
            self.event("auth.mfa_disabled", user_id, email, context)
                .await?,
        );
        self.db
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    c.delete_mfa(&id)?;
                    audit::record(c, &event).map_err(DbError::from)
                })
            })
            .await
            .map_err(AuthError::from)
    }

    /// New recovery codes for a current code (the old ones stop working).
    pub async fn regenerate_recovery_codes(
        &self,
        user_id: &str,
        email: &str,
        code: &Code,
        context: &RequestContext,
    ) -> Result<RecoveryCodes, AuthError> {
        self.verify(user_id, email, code, context).await?;
        let (codes, hashes) = new_recovery_codes();
        let (id, event) = (
            user_id.to_string(),
            self.event("auth.mfa_recovery_codes_replaced", user_id, email, context)
                .await?,
        );
        self.db
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    c.replace_recovery_codes(&id, &hashes)?;
                    audit::record(c, &event).map_err(DbError::from)
                })
            })
            .await?;
        Ok(RecoveryCodes {
            recovery_codes: codes,
        })
    }

    /// The operator's way back in for someone who lost their phone and their recovery codes
    /// (`companero admin disable-mfa EMAIL`).
    pub async fn reset_by_operator(
        &self,
        user_id: &str,
        email: &str,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let (id, event) = (
            user_id.to_string(),
            self.event("auth.mfa_reset_by_operator", user_id, email, context)
                .await?,
        );
        self.db
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    c.delete_mfa(&id)?;
                    c.end_sign_ins(&id)?;
                    audit::record(c, &event).map_err(DbError::from)
                })
            })
            .await
            .map_err(AuthError::from)
    }

    /// A challenge for a sign-in whose password was right; answers its secret.
    pub async fn challenge(&self, user_id: &str, enrolling: bool) -> Result<String, AuthError> {
        let secret = tokens::secret_token(CHALLENGE_PREFIX);
        let (hash, id) = (tokens::secret_hash(&secret), user_id.to_string());
        let expires = Utc::now() + CHALLENGE_LIFETIME;
        self.db
            .call(move |c| c.create_mfa_challenge(&hash, &id, enrolling, expires))
            .await?;
        Ok(secret)
    }

    /// The challenge a second step names, counting the attempt.
    pub async fn take_challenge(&self, secret: &str) -> Result<Challenge, AuthError> {
        let hash = tokens::secret_hash(secret);
        let challenge = self
            .db
            .call(move |c| c.attempt_mfa_challenge(&hash, CHALLENGE_ATTEMPTS))
            .await?
            .filter(|c| c.expires_at > Utc::now())
            .ok_or(AuthError::MfaChallengeExpired)?;
        Ok(challenge)
    }

    /// The sign-in is complete: its challenge is spent.
    pub async fn finish_challenge(&self, secret: &str) -> Result<(), AuthError> {
        let hash = tokens::secret_hash(secret);
        self.db
            .call(move |c| c.delete_mfa_challenge(&hash))
            .await
            .map_err(AuthError::from)
    }

    /// Requires two-step sign-in of a tenant's members (`Some`) or of everyone (`None`). The
    /// one who requires it must have it on; members without it are signed out, and set it up
    /// at their next sign-in.
    pub async fn set_required(
        &self,
        actor_user_id: &str,
        tenant_id: Option<&str>,
        required: bool,
        event: AuditEvent,
    ) -> Result<Vec<String>, AuthError> {
        if required && !self.status(actor_user_id).await?.enabled {
            return Err(AuthError::MfaPolicy(
                "turn on two-step sign-in for your own account first, so you are not locked out",
            ));
        }
        let tenant = tenant_id.map(str::to_string);
        self.db
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    match &tenant {
                        Some(tenant) => c.set_tenant_requires_mfa(tenant, required)?,
                        None => c.set_instance_requires_mfa(required)?,
                    }
                    let mut signed_out = Vec::new();
                    if required {
                        for user in c.accounts_without_mfa(tenant.as_deref())? {
                            c.end_sign_ins(&user)?;
                            signed_out.push(user);
                        }
                    }
                    let event = event.detail(serde_json::json!({
                        "required": required,
                        "signed_out": signed_out.len(),
                    }));
                    audit::record(c, &event).map_err(DbError::from)?;
                    Ok::<_, AuthError>(signed_out)
                })
            })
            .await
    }

    pub async fn instance_requires(&self) -> Result<bool, AuthError> {
        Ok(self.db.read(|c| c.instance_requires_mfa()).await?)
    }

    pub async fn tenant_requires(&self, tenant_id: &str) -> Result<bool, AuthError> {
        let tenant = tenant_id.to_string();
        Ok(self
            .db
            .read(move |c| c.tenant_requires_mfa(&tenant))
            .await?)
    }

    async fn factor(&self, user_id: &str) -> Result<Option<crate::db::mfa::Factor>, AuthError> {
        let id = user_id.to_string();
        Ok(self.db.read(move |c| c.mfa_factor(&id)).await?)
    }

    fn open(&self, user_id: &str, sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        self.sealer.open(&seal_context(user_id), sealed).ok_or_else(|| {
            AuthError::Invalid(
                "the authenticator secret cannot be opened (keys/mfa.key changed); ask the operator to reset two-step sign-in".into(),
            )
        })
    }

    fn check_lock(&self, factor: &crate::db::mfa::Factor) -> Result<(), AuthError> {
        match factor.locked_until {
            Some(until) if until > Utc::now() => Err(AuthError::RateLimited {
                retry_after: (until - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .max(std::time::Duration::from_secs(1)),
            }),
            _ => Ok(()),
        }
    }

    /// A wrong code: counted, audited, and at five in a row the codes lock.
    async fn failed(
        &self,
        user_id: &str,
        email: &str,
        kind: &'static str,
        context: &RequestContext,
    ) -> Result<(), AuthError> {
        let base = self
            .event("auth.mfa_failed", user_id, email, context)
            .await?;
        let locked_event = base.clone();
        let id = user_id.to_string();
        self.db
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    let (failures, locked) =
                        c.mfa_failed(&id, LOCK_AFTER, Utc::now() + LOCK_FOR)?;
                    audit::record(
                        c,
                        &base.detail(
                            serde_json::json!({"kind": kind, "failures_in_a_row": failures}),
                        ),
                    )
                    .map_err(DbError::from)?;
                    if locked {
                        audit::record(
                            c,
                            &locked_event
                                .with_action("auth.mfa_locked")
                                .detail(serde_json::json!({"minutes": LOCK_FOR.num_minutes()})),
                        )
                        .map_err(DbError::from)?;
                    }
                    Ok::<_, AuthError>(())
                })
            })
            .await
    }

    /// An audit event about the account, in the tenant it signs in to.
    async fn event(
        &self,
        action: &'static str,
        user_id: &str,
        email: &str,
        context: &RequestContext,
    ) -> Result<AuditEvent, AuthError> {
        let id = user_id.to_string();
        let tenant = self.db.read(move |c| c.home_tenant(&id)).await?;
        let event = AuditEvent::new(action, email, context).actor(user_id);
        Ok(match tenant {
            Some(tenant) => event.tenant(&tenant),
            None => event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_with_one_step_of_drift() {
        let totp = totp(b"12345678901234567890".to_vec(), "a@example.com").unwrap();
        // RFC 6238's SHA-1 test vector at T = 59 s: 94287082 (8 digits) → 287082.
        let at = DateTime::from_timestamp(59, 0).unwrap();
        assert_eq!(matching_step(&totp, "287082", at), Some(1));
        assert_eq!(matching_step(&totp, "287 082", at), Some(1));
        let later = DateTime::from_timestamp(59 + 30, 0).unwrap();
        assert_eq!(
            matching_step(&totp, "287082", later),
            Some(1),
            "one step late"
        );
        let too_late = DateTime::from_timestamp(59 + 90, 0).unwrap();
        assert_eq!(matching_step(&totp, "287082", too_late), None);
        assert_eq!(matching_step(&totp, "28708", at), None);
        assert_eq!(matching_step(&totp, "abcdef", at), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_typed_loosely() {
        let (codes, hashes) = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        let unique: std::collections::HashSet<_> = hashes.iter().collect();
        assert_eq!(unique.len(), 10);
        let code = &codes[0];
        assert_eq!(
            recovery_hash(&code.to_uppercase().replace('-', " ")),
            hashes[0]
        );
    }
}
