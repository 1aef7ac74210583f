ALTER TABLE alert_rules DROP COLUMN for_seconds;
ALTER TABLE alert_rules DROP COLUMN measure;
DROP TABLE device_certificates;
DROP TABLE connector_deliveries;
DROP TABLE connectors;
