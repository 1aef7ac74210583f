DROP TABLE settings;
DROP INDEX organisations_one_operator;
ALTER TABLE organisations DROP COLUMN operator;
