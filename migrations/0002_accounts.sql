-- Accounts, tenants and the records that authenticate and audit them.
-- Every tenant-owned table carries tenant_id; queries on them go through a TenantScope.

CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    email            TEXT NOT NULL UNIQUE,           -- normalised: trimmed, lower-case
    full_name        TEXT NOT NULL,
    password_hash    TEXT NOT NULL,                  -- argon2id PHC string
    is_owner         INTEGER NOT NULL DEFAULT 0,     -- instance owner
    failed_logins    INTEGER NOT NULL DEFAULT 0,     -- consecutive failures, for lock-out
    locked_until     TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE tenants (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    allowed_origins  TEXT NOT NULL DEFAULT '[]',     -- JSON array of origins for widget/chat page
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- One coach per tenant; later migrations add persona and settings.
CREATE TABLE coaches (
    tenant_id        TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    slug             TEXT NOT NULL UNIQUE,
    name             TEXT NOT NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE memberships (
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role             TEXT NOT NULL CHECK (role IN ('admin', 'coach', 'analyst')),
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, user_id)
) STRICT;
CREATE INDEX memberships_by_user ON memberships(user_id);

-- An invitation either joins an existing tenant as staff (tenant_id set) or, when sign-up is
-- by invitation, lets a new creator open their own tenant (tenant_id NULL, role admin).
CREATE TABLE invitations (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT REFERENCES tenants(id) ON DELETE CASCADE,
    email            TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('admin', 'coach', 'analyst')),
    token_hash       TEXT NOT NULL UNIQUE,
    invited_by       TEXT REFERENCES users(id) ON DELETE SET NULL,
    expires_at       TEXT NOT NULL,
    accepted_at      TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX invitations_by_tenant ON invitations(tenant_id);

-- Opaque refresh tokens, stored hashed. Each use rotates the token within its family; a second
-- use of a rotated token revokes the family (a stolen token is then worthless).
CREATE TABLE refresh_tokens (
    id               TEXT PRIMARY KEY,
    family_id        TEXT NOT NULL,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    token_hash       TEXT NOT NULL UNIQUE,
    expires_at       TEXT NOT NULL,
    rotated_at       TEXT,
    revoked_at       TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX refresh_tokens_by_family ON refresh_tokens(family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens(user_id);

CREATE TABLE password_resets (
    token_hash       TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at       TEXT NOT NULL,
    used_at          TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE api_keys (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    prefix           TEXT NOT NULL,                  -- shown in lists: "cmp_ab12cd34"
    key_hash         TEXT NOT NULL UNIQUE,
    role             TEXT NOT NULL CHECK (role IN ('admin', 'coach', 'analyst')),
    created_by       TEXT REFERENCES users(id) ON DELETE SET NULL,
    expires_at       TEXT,
    last_used_at     TEXT,
    revoked_at       TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX api_keys_by_tenant ON api_keys(tenant_id);

CREATE TABLE audit_log (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id        TEXT,                           -- NULL: instance-level events
    actor_user_id    TEXT,
    actor_label      TEXT NOT NULL,                  -- email or API key prefix, kept after deletion
    action           TEXT NOT NULL,                  -- e.g. auth.login, auth.login_failed, api_key.created
    target           TEXT,
    ip               TEXT,
    request_id       TEXT,
    detail           TEXT NOT NULL DEFAULT '{}',
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX audit_log_by_tenant ON audit_log(tenant_id, id);
