ALTER TABLE users DROP COLUMN code_locked_until_us;
ALTER TABLE users DROP COLUMN code_failures;
DROP TABLE known_browsers;
