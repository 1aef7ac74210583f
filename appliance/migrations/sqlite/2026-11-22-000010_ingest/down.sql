DROP TABLE alerts;
DROP TABLE alert_rules;
DROP TABLE readings;
DROP TABLE devices;
