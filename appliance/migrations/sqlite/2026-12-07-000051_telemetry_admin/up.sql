-- Alert rules and connectors are managed from the portal and the API: a rule may cover the
-- devices of one kind at its site, may be disabled and later enabled, and is removed
-- without losing the history of the alerts it raised; a connector may be paused, which
-- keeps queueing its deliveries and stops sending them until it is resumed.
ALTER TABLE alert_rules ADD COLUMN device_kind TEXT;
ALTER TABLE alert_rules ADD COLUMN disabled_at_us BIGINT;
ALTER TABLE alert_rules ADD COLUMN removed_at_us BIGINT;
ALTER TABLE connectors ADD COLUMN paused_at_us BIGINT;
