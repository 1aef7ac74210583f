-- Remote access with approval: machines on the device network, each site's access policy
-- and approvers, the requests and their decisions, and an email outbox.

-- A contractor account is limited to one site; NULL means every site of its organisation.
ALTER TABLE users ADD COLUMN site_id BIGINT REFERENCES sites (id);
-- A disabled organisation's users cannot sign in, and their remote sessions end.
ALTER TABLE organisations ADD COLUMN disabled_at_us BIGINT;

-- One row per site; a site without a row has the defaults (see access.rs SitePolicy).
CREATE TABLE site_policies (
    site_id              BIGINT PRIMARY KEY REFERENCES sites (id),
    approval_required    BOOLEAN NOT NULL,
    max_minutes          INTEGER NOT NULL CHECK (max_minutes > 0),
    -- '' for any time, or 'HH:MM-HH:MM' in the site's time zone.
    allowed_hours        TEXT NOT NULL,
    timezone             TEXT NOT NULL,
    requester_may_extend BOOLEAN NOT NULL,
    -- Comma-separated IPv4 networks a requester may declare as their address.
    declared_networks    TEXT NOT NULL,
    -- Comma-separated IPv4 networks of device-network addresses that may ever be reached.
    device_allowlist     TEXT NOT NULL,
    -- The "remote access enabled" key switch. Off: nothing can be approved, nothing is open.
    remote_enabled       BOOLEAN NOT NULL,
    -- The "remote access active" signal as last driven.
    signal_on            BOOLEAN NOT NULL,
    updated_at_us        BIGINT NOT NULL
);

CREATE TABLE site_approvers (
    site_id BIGINT NOT NULL REFERENCES sites (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    PRIMARY KEY (site_id, user_id)
);

-- A machine on the device network: a name, a site, an address, and its device agents.
CREATE TABLE machines (
    id              INTEGER PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    site_id         BIGINT NOT NULL REFERENCES sites (id),
    name            TEXT NOT NULL,
    address         TEXT NOT NULL,
    -- Comma-separated agent names (built-in or custom).
    agents          TEXT NOT NULL,
    created_at_us   BIGINT NOT NULL,
    removed_at_us   BIGINT
);
CREATE UNIQUE INDEX machines_name ON machines (site_id, name) WHERE removed_at_us IS NULL;

-- A technician's request, its decision, and the remote session it became.
-- state: pending, approved, denied, expired, cancelled, ended.
CREATE TABLE access_requests (
    id                INTEGER PRIMARY KEY,
    organisation_id   BIGINT NOT NULL REFERENCES organisations (id),
    site_id           BIGINT NOT NULL REFERENCES sites (id),
    machine_id        BIGINT NOT NULL REFERENCES machines (id),
    agent             TEXT NOT NULL,
    requester_id      BIGINT NOT NULL REFERENCES users (id),
    requester_addr    TEXT NOT NULL,
    address_declared  BOOLEAN NOT NULL,
    requested_seconds BIGINT NOT NULL CHECK (requested_seconds > 0),
    reason            TEXT NOT NULL,
    state             TEXT NOT NULL,
    created_at_us     BIGINT NOT NULL,
    pending_until_us  BIGINT NOT NULL,
    decided_by        BIGINT REFERENCES users (id),
    decided_at_us     BIGINT,
    decision_reason   TEXT,
    approved_seconds  BIGINT,
    grant_id          BIGINT REFERENCES firewall_grants (id),
    ended_at_us       BIGINT,
    end_reason        TEXT,
    ended_by          TEXT
);
CREATE INDEX access_requests_site ON access_requests (site_id, state);
CREATE INDEX access_requests_state ON access_requests (state);

-- Emails owed: written in the same transaction as what they tell of, sent by the portal's
-- mailer, retried with backoff, each outcome audited.
CREATE TABLE mail_outbox (
    id                 INTEGER PRIMARY KEY,
    recipient          TEXT NOT NULL,
    subject            TEXT NOT NULL,
    body               TEXT NOT NULL,
    -- The audit target the email is about, such as access_request:7.
    about              TEXT NOT NULL,
    created_at_us      BIGINT NOT NULL,
    next_attempt_at_us BIGINT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    sent_at_us         BIGINT,
    failed_at_us       BIGINT,
    last_error         TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (sent_at_us, failed_at_us, next_attempt_at_us);
