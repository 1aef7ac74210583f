ALTER TABLE connectors DROP COLUMN paused_at_us;
ALTER TABLE alert_rules DROP COLUMN removed_at_us;
ALTER TABLE alert_rules DROP COLUMN disabled_at_us;
ALTER TABLE alert_rules DROP COLUMN device_kind;
