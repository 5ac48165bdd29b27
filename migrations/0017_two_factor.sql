-- Two-step sign-in for staff (TOTP, RFC 6238): one authenticator per account, ten one-time
-- recovery codes, and the short-lived challenges between a right password and a right code.

CREATE TABLE mfa_factors (
    user_id          TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    -- The shared secret, sealed (AES-256-GCM) under `<data-dir>/keys/mfa.key`.
    secret           BLOB NOT NULL,
    -- NULL: enrolment started, not confirmed with a code yet (sign-in does not ask for one).
    enabled_at       TEXT,
    -- The latest 30-second step a code was accepted for: a code works once.
    last_step        INTEGER NOT NULL DEFAULT 0,
    -- Wrong codes in a row, and the lock-out they caused.
    failures         INTEGER NOT NULL DEFAULT 0,
    locked_until     TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE mfa_recovery_codes (
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash        TEXT NOT NULL,
    used_at          TEXT,
    PRIMARY KEY (user_id, code_hash)
) STRICT;

CREATE TABLE mfa_challenges (
    token_hash       TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- 1: two-step sign-in is required of this account and not set up yet; the challenge
    -- enrols it.
    enrolling        INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    expires_at       TEXT NOT NULL
) STRICT;
CREATE INDEX mfa_challenges_by_user ON mfa_challenges(user_id);

-- An admin requires two-step sign-in of everyone in the tenant. (The owner's requirement for
-- the whole instance is `instance_settings` 'require_mfa'.)
ALTER TABLE tenants ADD COLUMN require_mfa INTEGER NOT NULL DEFAULT 0;
