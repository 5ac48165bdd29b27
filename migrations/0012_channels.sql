-- Messaging channels: a tenant's Telegram bot (WhatsApp to come), the people who write
-- through it, and the delivery of every outgoing message to them.

-- One connection per tenant and platform. The credentials (bot token, webhook secret) are
-- sealed with <data-dir>/keys/channels.key; only their last characters are kept in clear.
CREATE TABLE channel_accounts (
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    channel          TEXT NOT NULL CHECK (channel IN ('telegram', 'whatsapp')),
    sealed           BLOB NOT NULL,
    hint             TEXT NOT NULL,                     -- "…AbCd": the token's last 4
    name             TEXT NOT NULL DEFAULT '',          -- the bot's @username, the phone number id
    -- What is not secret: WhatsApp's display number and the template for closed windows.
    settings         TEXT NOT NULL DEFAULT '{}',
    mode             TEXT NOT NULL CHECK (mode IN ('webhook', 'polling')),
    -- Polling: the next update to ask for (getUpdates' offset).
    poll_offset      INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_error_at    TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, channel)
) STRICT;

-- A visitor is one identity on one channel: the web (a token), or a Telegram chat.
ALTER TABLE visitors ADD COLUMN channel TEXT NOT NULL DEFAULT 'web';
ALTER TABLE visitors ADD COLUMN external_id TEXT;
-- Blocked the bot, or opted out of this channel: proactive messages go elsewhere or nowhere.
ALTER TABLE visitors ADD COLUMN opted_out_at TEXT;
CREATE UNIQUE INDEX visitors_by_channel_id ON visitors(tenant_id, channel, external_id)
    WHERE external_id IS NOT NULL;
ALTER TABLE conversations ADD COLUMN channel TEXT NOT NULL DEFAULT 'web';
ALTER TABLE messages ADD COLUMN channel TEXT NOT NULL DEFAULT 'web';

-- Platform updates already taken in (Telegram's update_id), so a retried webhook or a
-- repeated poll is handled once.
CREATE TABLE channel_inbound (
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    channel          TEXT NOT NULL,
    external_id      TEXT NOT NULL,
    received_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, channel, external_id)
) STRICT, WITHOUT ROWID;

-- Delivery to a platform, part by part (a long answer is split): the part being handed over
-- is recorded before the call and cleared with its answer, so after a crash a part that may
-- have gone out is never sent again.
ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN parts_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN part_in_flight INTEGER;
ALTER TABLE outbox ADD COLUMN external_ids TEXT NOT NULL DEFAULT '[]';
CREATE INDEX outbox_by_channel ON outbox(tenant_id, channel, status);

-- The channel a person chose for the coach's own messages ("send my messages here"); without
-- one, the channel they used last.
ALTER TABLE end_users ADD COLUMN preferred_visitor_id TEXT;

-- One-time codes that join a person's identities on two channels into one end user.
CREATE TABLE link_codes (
    code_hash        TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    end_user_id      TEXT NOT NULL REFERENCES end_users(id) ON DELETE CASCADE,
    expires_at       TEXT NOT NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX link_codes_by_end_user ON link_codes(tenant_id, end_user_id);
