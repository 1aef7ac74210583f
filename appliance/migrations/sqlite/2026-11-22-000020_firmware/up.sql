-- A field device's model: what firmware bundles (target "device:MODEL") it may receive.
ALTER TABLE devices ADD COLUMN model TEXT CHECK (model IS NULL OR length(model) BETWEEN 1 AND 64);

-- Verified firmware bundles, stored whole under {data_dir}/firmware/{file_name}. The header
-- (magic, manifest, signatures) is bytes [0, payload_offset); the one payload follows.
CREATE TABLE firmware (
    id               INTEGER PRIMARY KEY,
    model            TEXT NOT NULL CHECK (length(model) BETWEEN 1 AND 64),
    version          TEXT NOT NULL,
    security_version BIGINT NOT NULL CHECK (security_version >= 0),
    file_name        TEXT NOT NULL UNIQUE,
    payload_offset   BIGINT NOT NULL CHECK (payload_offset > 0),
    payload_size     BIGINT NOT NULL CHECK (payload_size >= 0),
    payload_sha256   TEXT NOT NULL CHECK (length(payload_sha256) = 64),
    signed_by        TEXT NOT NULL,
    uploaded_at_us   BIGINT NOT NULL,
    UNIQUE (model, version)
);

-- A staged rollout of one firmware to a fixed set of devices, chosen at creation (a
-- percentage of the model's devices, or an explicit list). It stops by itself once failed
-- devices exceed failure_threshold_pct of its devices.
CREATE TABLE firmware_rollouts (
    id                    INTEGER PRIMARY KEY,
    firmware_id           BIGINT NOT NULL REFERENCES firmware (id) ON DELETE RESTRICT,
    selection             TEXT NOT NULL,
    failure_threshold_pct INTEGER NOT NULL CHECK (failure_threshold_pct BETWEEN 0 AND 100),
    state                 TEXT NOT NULL CHECK (state IN ('running', 'paused', 'stopped')),
    stop_reason           TEXT,
    created_at_us         BIGINT NOT NULL,
    updated_at_us         BIGINT NOT NULL
);
CREATE INDEX firmware_rollouts_firmware ON firmware_rollouts (firmware_id);

CREATE TABLE firmware_rollout_devices (
    rollout_id    BIGINT NOT NULL REFERENCES firmware_rollouts (id) ON DELETE CASCADE,
    device_id     BIGINT NOT NULL REFERENCES devices (id) ON DELETE RESTRICT,
    status        TEXT NOT NULL CHECK (status IN ('assigned', 'downloading', 'downloaded',
                      'verified', 'installing', 'updated', 'failed')),
    detail        TEXT NOT NULL DEFAULT '',
    updated_at_us BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX firmware_rollout_devices_device ON firmware_rollout_devices (device_id);
