-- Custom device agents; the built-in ones (Siemens S7, Modbus/TCP, ...) live in code.
CREATE TABLE device_agents (
    name          TEXT PRIMARY KEY,
    label         TEXT NOT NULL,
    ports         TEXT NOT NULL,
    created_at_us BIGINT NOT NULL
);

-- Firewall pinholes: requester address to device address, an agent's ports, until expiry.
-- The firewall controller applies the live ones and records when each was applied and closed.
CREATE TABLE firewall_grants (
    id             INTEGER PRIMARY KEY,
    requester_addr TEXT NOT NULL,
    device_addr    TEXT NOT NULL,
    agent          TEXT NOT NULL,
    ports          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at_us  BIGINT NOT NULL,
    expires_at_us  BIGINT NOT NULL CHECK (expires_at_us > created_at_us),
    -- An uplink port forwarded to the device's (single) agent port, for requesters who
    -- cannot route to the device network.
    dnat_port      INTEGER CHECK (dnat_port BETWEEN 1 AND 65535),
    revoked_at_us  BIGINT,
    revoked_by     TEXT,
    applied_at_us  BIGINT,
    closed_at_us   BIGINT,
    close_reason   TEXT
);
CREATE INDEX firewall_grants_open ON firewall_grants (closed_at_us, expires_at_us);
