DROP TABLE device_certificates;
DROP TABLE connector_deliveries;
DROP TABLE connectors;
