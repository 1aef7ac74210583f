-- What the firewall controller last proved (`appliance::grants::control`): one row, written
-- by `plantgate-firewall` each time it renews its lease on the kernel's pinholes. The
-- portal's overview and its request pages read it to say whether the controller is running
-- and, when it is not, by when every pinhole has closed by itself.
CREATE TABLE firewall_status (
    id                  INTEGER PRIMARY KEY,
    started_at_us       BIGINT NOT NULL,
    lease_seconds       INTEGER NOT NULL,
    lease_renewed_at_us BIGINT NOT NULL,
    reconciled_at_us    BIGINT,
    last_error          TEXT
);

-- A change to one grant reads only the live grants between the same two addresses (the
-- only ones that can share its pinholes), so that opening or revoking one grant costs the
-- same with 10 or 10,000 live.
CREATE INDEX firewall_grants_pair ON firewall_grants (requester_addr, device_addr);
