-- The operator organisation: the one first-run setup made, which owns the appliance. Its
-- administrators manage the other organisations, the certificate and the mail relay.
ALTER TABLE organisations ADD COLUMN operator BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE organisations SET operator = TRUE WHERE id = (
    SELECT organisation_id FROM users WHERE role = 'admin' ORDER BY id LIMIT 1
);
CREATE UNIQUE INDEX organisations_one_operator ON organisations (operator) WHERE operator;

-- Settings an administrator changes in the portal, over the configuration file's defaults.
-- `value` is JSON; secrets in it are sealed before they are stored.
CREATE TABLE settings (
    name          TEXT PRIMARY KEY,
    value         TEXT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
