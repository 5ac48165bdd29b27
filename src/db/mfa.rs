//! Storage for two-step sign-in (`crate::auth::mfa`): each account's authenticator secret
//! (sealed), its recovery codes (hashed), the challenges of sign-ins halfway through, and who
//! requires it (a tenant, or the whole instance).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{DbError, instant, parse_instant};

/// An account's authenticator.
#[derive(Debug, Clone)]
pub struct Factor {
    /// Sealed; opened by the service.
    pub secret: Vec<u8>,
    /// `None` while enrolment waits for its first code.
    pub enabled_at: Option<DateTime<Utc>>,
    pub last_step: i64,
    pub locked_until: Option<DateTime<Utc>>,
}

/// A sign-in waiting for its second step.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub user_id: String,
    pub enrolling: bool,
    pub expires_at: DateTime<Utc>,
}

pub trait MfaStore {
    fn mfa_factor(&self, user_id: &str) -> Result<Option<Factor>, DbError>;
    /// Keeps `sealed` as the account's secret until a code confirms it; refused (false) when
    /// two-step sign-in is already on.
    fn start_mfa_enrollment(&self, user_id: &str, sealed: &[u8]) -> Result<bool, DbError>;
    /// Turns it on, with the step of the code that confirmed it and new recovery codes.
    fn enable_mfa(&self, user_id: &str, step: i64, code_hashes: &[String]) -> Result<(), DbError>;
    fn replace_recovery_codes(&self, user_id: &str, code_hashes: &[String]) -> Result<(), DbError>;
    /// Takes a code of `step`: false when that step (or a later one) was used already.
    fn accept_mfa_step(&self, user_id: &str, step: i64) -> Result<bool, DbError>;
    /// Spends a recovery code: false when it is not one of the account's unused codes.
    fn use_recovery_code(&self, user_id: &str, code_hash: &str) -> Result<bool, DbError>;
    /// Counts a wrong code; at `lock_after` in a row the account's codes lock until `until`.
    /// Answers the failures in a row and whether this one locked it.
    fn mfa_failed(
        &self,
        user_id: &str,
        lock_after: i64,
        until: DateTime<Utc>,
    ) -> Result<(i64, bool), DbError>;
    fn recovery_codes_left(&self, user_id: &str) -> Result<i64, DbError>;
    /// Removes the authenticator, the recovery codes and open challenges.
    fn delete_mfa(&self, user_id: &str) -> Result<(), DbError>;

    /// Required of this account: by the instance, or by a tenant it belongs to.
    fn mfa_required(&self, user_id: &str) -> Result<bool, DbError>;
    fn tenant_requires_mfa(&self, tenant_id: &str) -> Result<bool, DbError>;
    fn set_tenant_requires_mfa(&self, tenant_id: &str, required: bool) -> Result<(), DbError>;
    fn instance_requires_mfa(&self) -> Result<bool, DbError>;
    fn set_instance_requires_mfa(&self, required: bool) -> Result<(), DbError>;
    /// Accounts without two-step sign-in: the tenant's members, or everyone (`None`).
    fn accounts_without_mfa(&self, tenant_id: Option<&str>) -> Result<Vec<String>, DbError>;

    fn create_mfa_challenge(
        &self,
        token_hash: &str,
        user_id: &str,
        enrolling: bool,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DbError>;
    /// The challenge, counting one more attempt on it; `None` when unknown or past
    /// `max_attempts` (it is then deleted).
    fn attempt_mfa_challenge(
        &self,
        token_hash: &str,
        max_attempts: i64,
    ) -> Result<Option<Challenge>, DbError>;
    fn delete_mfa_challenge(&self, token_hash: &str) -> Result<(), DbError>;
}

const REQUIRE_KEY: &str = "require_mfa";

fn replace_codes(c: &Connection, user_id: &str, code_hashes: &[String]) -> Result<(), DbError> {
    c.execute(
        "DELETE FROM mfa_recovery_codes WHERE user_id = ?1",
        [user_id],
    )?;
    let mut insert =
        c.prepare_cached("INSERT INTO mfa_recovery_codes (user_id, code_hash) VALUES (?1, ?2)")?;
    for hash in code_hashes {
        insert.execute(params![user_id, hash])?;
    }
    Ok(())
}

impl MfaStore for Connection {
    fn mfa_factor(&self, user_id: &str) -> Result<Option<Factor>, DbError> {
        Ok(self
            .query_row(
                "SELECT secret, enabled_at, last_step, locked_until FROM mfa_factors WHERE user_id = ?1",
                [user_id],
                |r| {
                    Ok(Factor {
                        secret: r.get(0)?,
                        enabled_at: r.get::<_, Option<String>>(1)?.as_deref().map(parse_instant),
                        last_step: r.get(2)?,
                        locked_until: r.get::<_, Option<String>>(3)?.as_deref().map(parse_instant),
                    })
                },
            )
            .optional()?)
    }

    fn start_mfa_enrollment(&self, user_id: &str, sealed: &[u8]) -> Result<bool, DbError> {
        let changed = self.execute(
            "INSERT INTO mfa_factors (user_id, secret) VALUES (?1, ?2) \
             ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, failures = 0, \
             created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE mfa_factors.enabled_at IS NULL",
            params![user_id, sealed],
        )?;
        Ok(changed == 1)
    }

    fn enable_mfa(&self, user_id: &str, step: i64, code_hashes: &[String]) -> Result<(), DbError> {
        super::atomically(self, |c| {
            c.execute(
                "UPDATE mfa_factors SET enabled_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 last_step = ?2, failures = 0, locked_until = NULL WHERE user_id = ?1",
                params![user_id, step],
            )?;
            replace_codes(c, user_id, code_hashes)
        })
    }

    fn replace_recovery_codes(&self, user_id: &str, code_hashes: &[String]) -> Result<(), DbError> {
        super::atomically(self, |c| replace_codes(c, user_id, code_hashes))
    }

    fn accept_mfa_step(&self, user_id: &str, step: i64) -> Result<bool, DbError> {
        Ok(self.execute(
            "UPDATE mfa_factors SET last_step = ?2, failures = 0, locked_until = NULL \
             WHERE user_id = ?1 AND last_step < ?2",
            params![user_id, step],
        )? == 1)
    }

    fn use_recovery_code(&self, user_id: &str, code_hash: &str) -> Result<bool, DbError> {
        let used = self.execute(
            "UPDATE mfa_recovery_codes SET used_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE user_id = ?1 AND code_hash = ?2 AND used_at IS NULL",
            params![user_id, code_hash],
        )? == 1;
        if used {
            self.execute(
                "UPDATE mfa_factors SET failures = 0, locked_until = NULL WHERE user_id = ?1",
                [user_id],
            )?;
        }
        Ok(used)
    }

    fn mfa_failed(
        &self,
        user_id: &str,
        lock_after: i64,
        until: DateTime<Utc>,
    ) -> Result<(i64, bool), DbError> {
        let failures: Option<i64> = self
            .query_row(
                "UPDATE mfa_factors SET failures = failures + 1 WHERE user_id = ?1 RETURNING failures",
                [user_id],
                |r| r.get(0),
            )
            .optional()?;
        let failures = failures.unwrap_or(0);
        let locked = failures >= lock_after;
        if locked {
            self.execute(
                "UPDATE mfa_factors SET failures = 0, locked_until = ?2 WHERE user_id = ?1",
                params![user_id, instant(until)],
            )?;
        }
        Ok((failures, locked))
    }

    fn recovery_codes_left(&self, user_id: &str) -> Result<i64, DbError> {
        Ok(self.query_row(
            "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = ?1 AND used_at IS NULL",
            [user_id],
            |r| r.get(0),
        )?)
    }

    fn delete_mfa(&self, user_id: &str) -> Result<(), DbError> {
        super::atomically(self, |c| {
            for table in ["mfa_factors", "mfa_recovery_codes", "mfa_challenges"] {
                c.execute(
                    &format!("DELETE FROM {table} WHERE user_id = ?1"),
                    [user_id],
                )?;
            }
            Ok(())
        })
    }

    fn mfa_required(&self, user_id: &str) -> Result<bool, DbError> {
        if self.instance_requires_mfa()? {
            return Ok(true);
        }
        Ok(self.query_row(
            "SELECT EXISTS (SELECT 1 FROM memberships m JOIN tenants t ON t.id = m.tenant_id \
             WHERE m.user_id = ?1 AND t.require_mfa = 1)",
            [user_id],
            |r| r.get(0),
        )?)
    }

    fn tenant_requires_mfa(&self, tenant_id: &str) -> Result<bool, DbError> {
        Ok(self
            .query_row(
                "SELECT require_mfa FROM tenants WHERE id = ?1",
                [tenant_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    fn set_tenant_requires_mfa(&self, tenant_id: &str, required: bool) -> Result<(), DbError> {
        self.execute(
            "UPDATE tenants SET require_mfa = ?2 WHERE id = ?1",
            params![tenant_id, required],
        )?;
        Ok(())
    }

    fn instance_requires_mfa(&self) -> Result<bool, DbError> {
        let value: Option<String> = self
            .query_row(
                "SELECT value FROM instance_settings WHERE key = ?1",
                [REQUIRE_KEY],
                |r| r.get(0),
            )
            .optional()?;
        Ok(value.as_deref() == Some("true"))
    }

    fn set_instance_requires_mfa(&self, required: bool) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO instance_settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![REQUIRE_KEY, if required { "true" } else { "false" }],
        )?;
        Ok(())
    }

    fn accounts_without_mfa(&self, tenant_id: Option<&str>) -> Result<Vec<String>, DbError> {
        let mut statement = self.prepare(
            "SELECT u.id FROM users u WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM memberships m \
               WHERE m.user_id = u.id AND m.tenant_id = ?1)) \
             AND NOT EXISTS (SELECT 1 FROM mfa_factors f WHERE f.user_id = u.id \
               AND f.enabled_at IS NOT NULL)",
        )?;
        let rows = statement.query_map([tenant_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_mfa_challenge(
        &self,
        token_hash: &str,
        user_id: &str,
        enrolling: bool,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        // Challenges that lapsed are of no use to anyone.
        self.execute(
            "DELETE FROM mfa_challenges WHERE expires_at < ?1",
            [instant(Utc::now())],
        )?;
        self.execute(
            "INSERT INTO mfa_challenges (token_hash, user_id, enrolling, expires_at) \
             VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, user_id, enrolling, instant(expires_at)],
        )?;
        Ok(())
    }

    fn attempt_mfa_challenge(
        &self,
        token_hash: &str,
        max_attempts: i64,
    ) -> Result<Option<Challenge>, DbError> {
        let row = self
            .query_row(
                "UPDATE mfa_challenges SET attempts = attempts + 1 WHERE token_hash = ?1 \
                 RETURNING user_id, enrolling, expires_at, attempts",
                [token_hash],
                |r| {
                    Ok((
                        Challenge {
                            user_id: r.get(0)?,
                            enrolling: r.get(1)?,
                            expires_at: parse_instant(&r.get::<_, String>(2)?),
                        },
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        match row {
            Some((challenge, attempts)) if attempts <= max_attempts => Ok(Some(challenge)),
            Some(_) => {
                self.delete_mfa_challenge(token_hash)?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn delete_mfa_challenge(&self, token_hash: &str) -> Result<(), DbError> {
        self.execute(
            "DELETE FROM mfa_challenges WHERE token_hash = ?1",
            [token_hash],
        )?;
        Ok(())
    }
}
