-- Field devices that post telemetry. A device's secret is stored as SHA-256 only; NULL once
-- revoked. A device behind a gateway names it in gateway_id; the gateway may post for it.
CREATE TABLE devices (
    id               INTEGER PRIMARY KEY,
    organisation_id  BIGINT NOT NULL REFERENCES organisations (id) ON DELETE RESTRICT,
    site_id          BIGINT NOT NULL REFERENCES sites (id) ON DELETE RESTRICT,
    serial           TEXT NOT NULL UNIQUE CHECK (length(serial) BETWEEN 1 AND 64),
    kind             TEXT NOT NULL CHECK (kind IN ('monitor', 'data_logger', 'gateway')),
    gateway_id       BIGINT REFERENCES devices (id) ON DELETE RESTRICT,
    secret_hash      BLOB UNIQUE CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    created_at_us    BIGINT NOT NULL,
    revoked_at_us    BIGINT,
    firmware_version TEXT,
    battery_pct      DOUBLE,
    signal_dbm       DOUBLE,
    last_seen_at_us  BIGINT
);
CREATE INDEX devices_site ON devices (site_id);
CREATE INDEX devices_gateway ON devices (gateway_id);

-- One row per reading. (device_id, seq) is unique, so a retried batch is stored once.
CREATE TABLE readings (
    id             INTEGER PRIMARY KEY,
    device_id      BIGINT NOT NULL REFERENCES devices (id) ON DELETE RESTRICT,
    seq            BIGINT NOT NULL,
    metric         TEXT NOT NULL,
    value          DOUBLE NOT NULL,
    measured_at_us BIGINT NOT NULL,
    received_at_us BIGINT NOT NULL,
    UNIQUE (device_id, seq)
);
CREATE INDEX readings_device_metric_time ON readings (device_id, metric, measured_at_us);

-- Alert rules, per site or per device. kind: above, below (value against threshold,
-- `consecutive` readings in a row, cleared past threshold -/+ hysteresis), silent (no data for
-- silent_seconds), event (any reading of the metric raises; the device reports 0 to clear).
CREATE TABLE alert_rules (
    id             INTEGER PRIMARY KEY,
    site_id        BIGINT REFERENCES sites (id) ON DELETE CASCADE,
    device_id      BIGINT REFERENCES devices (id) ON DELETE CASCADE,
    name           TEXT NOT NULL CHECK (length(trim(name)) > 0),
    kind           TEXT NOT NULL CHECK (kind IN ('above', 'below', 'silent', 'event')),
    metric         TEXT NOT NULL DEFAULT '',
    threshold      DOUBLE NOT NULL DEFAULT 0,
    hysteresis     DOUBLE NOT NULL DEFAULT 0 CHECK (hysteresis >= 0),
    consecutive    INTEGER NOT NULL DEFAULT 1 CHECK (consecutive BETWEEN 1 AND 1000),
    silent_seconds BIGINT NOT NULL DEFAULT 0 CHECK (silent_seconds >= 0),
    notify_email   TEXT NOT NULL DEFAULT '',
    created_at_us  BIGINT NOT NULL,
    CHECK ((site_id IS NULL) <> (device_id IS NULL))
);

-- Raised and cleared alerts. At most one active alert per (rule, device). The notify
-- columns make this table the email outbox: a restart resends what was not yet sent.
CREATE TABLE alerts (
    id                   INTEGER PRIMARY KEY,
    rule_id              BIGINT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id            BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    raised_at_us         BIGINT NOT NULL,
    raised_value         DOUBLE,
    cleared_at_us        BIGINT,
    cleared_value        DOUBLE,
    raise_notified_at_us BIGINT,
    clear_notified_at_us BIGINT,
    notify_attempts      INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX alerts_one_active ON alerts (rule_id, device_id) WHERE cleared_at_us IS NULL;
CREATE INDEX alerts_device ON alerts (device_id);
