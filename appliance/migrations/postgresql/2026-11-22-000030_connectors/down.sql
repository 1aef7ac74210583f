DROP TABLE connector_deliveries;
DROP TABLE connectors;
