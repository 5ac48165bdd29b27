-- The coaching engine: one durable job system for all background work, test clocks, end users
-- who persist, goals and check-ins, versioned programs and enrolments, nudge rules, the plan of
-- every proactive message (nudges) and the outbox that delivers each outbound message.

-- Jobs gain a payload, a time to run, a dedupe key, a lease and a clock. A job whose lease ran
-- out (its process died) is claimed again; nothing is re-queued wholesale at start.
ALTER TABLE jobs ADD COLUMN payload TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN run_at TEXT NOT NULL DEFAULT '1970-01-01T00:00:00.000Z';
ALTER TABLE jobs ADD COLUMN dedupe_key TEXT;
ALTER TABLE jobs ADD COLUMN lease_until TEXT;
-- NULL: real time; otherwise the test clock whose advance runs the job.
ALTER TABLE jobs ADD COLUMN clock_id TEXT;
UPDATE jobs SET run_at = created_at;
CREATE UNIQUE INDEX jobs_by_dedupe_key ON jobs(dedupe_key) WHERE dedupe_key IS NOT NULL;
DROP INDEX jobs_pending;
-- Claims look for queued (or lease-expired running) jobs of one timeline in time order.
CREATE INDEX jobs_queue ON jobs(status, clock_id, run_at);

-- A simulated "now" for test end users (Stripe's test clocks).
CREATE TABLE test_clocks (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    now              TEXT NOT NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX test_clocks_by_tenant ON test_clocks(tenant_id);

-- A person the coach works with, across visitors and (later) channels.
CREATE TABLE end_users (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name             TEXT NOT NULL DEFAULT '',
    email            TEXT,
    time_zone        TEXT NOT NULL DEFAULT 'UTC',
    locale           TEXT NOT NULL DEFAULT 'en',
    tags             TEXT NOT NULL DEFAULT '[]',         -- JSON array of strings
    last_active_at   TEXT,
    consent          INTEGER NOT NULL DEFAULT 0,
    consent_at       TEXT,
    consent_channel  TEXT,
    opted_out_at     TEXT,
    test_clock_id    TEXT REFERENCES test_clocks(id) ON DELETE CASCADE,
    -- A check-in the coach asked for in chat and is waiting for: the goal, and whether it
    -- already asked once more after an unclear reply.
    awaiting_goal_id TEXT,
    awaiting_retried INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL
) STRICT;
CREATE INDEX end_users_by_tenant ON end_users(tenant_id, created_at);

ALTER TABLE visitors ADD COLUMN end_user_id TEXT REFERENCES end_users(id) ON DELETE SET NULL;
-- The browser's IANA zone, sent by the widget, for the end user the visitor becomes.
ALTER TABLE visitors ADD COLUMN time_zone TEXT;
CREATE INDEX visitors_by_end_user ON visitors(end_user_id);

CREATE TABLE programs (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    latest_version     INTEGER NOT NULL,
    published_version  INTEGER,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX programs_by_tenant ON programs(tenant_id);

-- Every saved definition: people enrolled stay on the version they were enrolled in.
CREATE TABLE program_versions (
    program_id       TEXT NOT NULL REFERENCES programs(id) ON DELETE CASCADE,
    version          INTEGER NOT NULL,
    tenant_id        TEXT NOT NULL,
    definition       TEXT NOT NULL,                    -- JSON: name, description, goals, steps
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (program_id, version)
) STRICT;

CREATE TABLE enrollments (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    program_id       TEXT NOT NULL REFERENCES programs(id) ON DELETE CASCADE,
    version          INTEGER NOT NULL,
    end_user_id      TEXT NOT NULL REFERENCES end_users(id) ON DELETE CASCADE,
    status           TEXT NOT NULL CHECK (status IN ('active', 'paused', 'completed', 'unenrolled')),
    enrolled_at      TEXT NOT NULL,
    completed_at     TEXT,
    -- Steps done, in order (JSON array of keys).
    steps_done       TEXT NOT NULL DEFAULT '[]'
) STRICT;
CREATE INDEX enrollments_by_program ON enrollments(tenant_id, program_id);
CREATE INDEX enrollments_by_end_user ON enrollments(end_user_id);
-- One live enrolment per person and program.
CREATE UNIQUE INDEX enrollments_current ON enrollments(program_id, end_user_id)
    WHERE status IN ('active', 'paused');

CREATE TABLE goals (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    end_user_id      TEXT NOT NULL REFERENCES end_users(id) ON DELETE CASCADE,
    enrollment_id    TEXT REFERENCES enrollments(id) ON DELETE SET NULL,
    goal_key         TEXT,                              -- the program's key for it
    title            TEXT NOT NULL,
    metric           TEXT NOT NULL,
    unit             TEXT NOT NULL DEFAULT '',
    baseline         REAL NOT NULL DEFAULT 0,
    target           REAL NOT NULL,
    direction        TEXT NOT NULL CHECK (direction IN ('increase', 'decrease')),
    due_date         TEXT,
    check_in_every   INTEGER,                           -- days
    check_in_at      TEXT,                              -- HH:MM local
    status           TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'reached', 'closed')),
    reached_at       TEXT,
    created_at       TEXT NOT NULL
) STRICT;
CREATE INDEX goals_by_end_user ON goals(tenant_id, end_user_id);

CREATE TABLE check_ins (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    goal_id          TEXT NOT NULL REFERENCES goals(id) ON DELETE CASCADE,
    value            REAL NOT NULL,
    note             TEXT,
    source           TEXT NOT NULL,                     -- api | chat
    local_date       TEXT NOT NULL,                     -- the end user's date, for streaks
    at               TEXT NOT NULL
) STRICT;
CREATE INDEX check_ins_by_goal ON check_ins(goal_id, at);

CREATE TABLE nudge_rules (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    enabled          INTEGER NOT NULL,
    trigger          TEXT NOT NULL,                     -- JSON
    audience         TEXT NOT NULL DEFAULT '{}',        -- JSON
    instruction      TEXT NOT NULL,
    created_at       TEXT NOT NULL
) STRICT;
CREATE INDEX nudge_rules_by_tenant ON nudge_rules(tenant_id);

-- Every proactive message, planned before it is written and sent: rule nudges, program steps
-- and goal check-in prompts. `dedupe_key` (rule or step + person + occurrence) makes planning
-- idempotent across restarts.
CREATE TABLE nudges (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    end_user_id      TEXT NOT NULL REFERENCES end_users(id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('rule', 'step', 'check_in')),
    rule_id          TEXT,
    enrollment_id    TEXT,
    step_key         TEXT,
    goal_id          TEXT,
    dedupe_key       TEXT NOT NULL UNIQUE,
    -- sending: the guardrails let it through and it is on its way (counts against the caps).
    status           TEXT NOT NULL CHECK (status IN
                         ('scheduled', 'deferred', 'sending', 'sent', 'suppressed', 'failed')),
    reason           TEXT,
    scheduled_for    TEXT NOT NULL,
    sent_at          TEXT,
    replied_at       TEXT,
    channel          TEXT,
    content          TEXT,                              -- written ahead of time
    message_id       TEXT,
    outbox_id        TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX nudges_by_end_user ON nudges(tenant_id, end_user_id, scheduled_for);
CREATE INDEX nudges_by_enrollment ON nudges(enrollment_id) WHERE enrollment_id IS NOT NULL;

-- Every outbound message, stored first and then delivered per channel.
CREATE TABLE outbox (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    message_id       TEXT NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    channel          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'failed')),
    error            TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX outbox_by_conversation ON outbox(conversation_id, seq);

-- Guardrails for proactive messages.
ALTER TABLE coaches ADD COLUMN quiet_hours TEXT NOT NULL DEFAULT '21:00-08:00';
ALTER TABLE coaches ADD COLUMN nudges_per_day INTEGER NOT NULL DEFAULT 1;
ALTER TABLE coaches ADD COLUMN nudges_per_week INTEGER NOT NULL DEFAULT 3;
