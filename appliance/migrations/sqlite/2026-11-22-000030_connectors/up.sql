-- Data connectors: per-site HTTPS endpoints that receive readings and/or alerts, each
-- delivery signed with HMAC-SHA256. The signing secret must be usable, so it cannot be
-- hashed: it is sealed (AES-256-GCM) with a key kept outside the store, in {data_dir}/keys/.
-- A removed connector keeps its row (removed_at_us) so the delivery log stays readable.
CREATE TABLE connectors (
    id            INTEGER PRIMARY KEY,
    site_id       BIGINT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name          TEXT NOT NULL CHECK (length(trim(name)) > 0),
    url           TEXT NOT NULL,
    send_readings BOOLEAN NOT NULL,
    send_alerts   BOOLEAN NOT NULL,
    secret_sealed BLOB NOT NULL,
    ca_pem        TEXT,
    created_at_us BIGINT NOT NULL,
    removed_at_us BIGINT,
    CHECK (send_readings OR send_alerts)
);
CREATE INDEX connectors_site ON connectors (site_id);

-- The outbox and delivery log: one row per event a connector is owed, written in the same
-- transaction as the readings or the alert it carries. Delivered in id order per connector;
-- a failure is retried with exponential backoff and after max attempts is dead-lettered.
CREATE TABLE connector_deliveries (
    id                 INTEGER PRIMARY KEY,
    connector_id       BIGINT NOT NULL REFERENCES connectors (id) ON DELETE CASCADE,
    kind               TEXT NOT NULL CHECK (kind IN ('readings', 'alert')),
    body               TEXT NOT NULL,
    created_at_us      BIGINT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_us BIGINT NOT NULL,
    delivered_at_us    BIGINT,
    dead_at_us         BIGINT,
    last_error         TEXT
);
CREATE INDEX connector_deliveries_owed ON connector_deliveries (connector_id, id)
    WHERE delivered_at_us IS NULL AND dead_at_us IS NULL;

-- Client certificates issued by the device CA (whose key is in {data_dir}/keys/, never
-- here). A certificate is accepted only while its fingerprint is here, unrevoked, unexpired.
CREATE TABLE device_certificates (
    id            INTEGER PRIMARY KEY,
    device_id     BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    fingerprint   BLOB NOT NULL UNIQUE,
    issued_at_us  BIGINT NOT NULL,
    not_after_us  BIGINT NOT NULL,
    revoked_at_us BIGINT
);
CREATE INDEX device_certificates_device ON device_certificates (device_id);

-- Threshold rules (above/below) over a measure, `value` or `rate` (change per minute between
-- consecutive readings), held `consecutive` readings in a row or, when for_seconds > 0, for
-- that long. Checked by AlertRule::create.
ALTER TABLE alert_rules ADD COLUMN measure TEXT NOT NULL DEFAULT 'value';
ALTER TABLE alert_rules ADD COLUMN for_seconds BIGINT NOT NULL DEFAULT 0;
