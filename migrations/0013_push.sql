-- Web Push: a browser's subscription (its push service endpoint and the keys that encrypt
-- what is sent to it) belongs to one visitor. Messages the end user did not ask for (staff
-- replies, nudges, program steps) reach a closed chat page through it.
CREATE TABLE push_subscriptions (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    visitor_id  TEXT NOT NULL REFERENCES visitors(id) ON DELETE CASCADE,
    endpoint    TEXT NOT NULL,
    p256dh      TEXT NOT NULL,                 -- the browser's P-256 key, base64url
    auth        TEXT NOT NULL,                 -- its 16-byte auth secret, base64url
    last_error  TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (tenant_id, endpoint)
) STRICT;
CREATE INDEX push_subscriptions_by_visitor ON push_subscriptions(tenant_id, visitor_id);
