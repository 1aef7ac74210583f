DROP TABLE sessions;
ALTER TABLE users DROP COLUMN expires_at_us;
ALTER TABLE users DROP COLUMN disabled_at_us;
ALTER TABLE users DROP COLUMN locked_until_us;
ALTER TABLE users DROP COLUMN failed_logins;
ALTER TABLE users DROP COLUMN password_changed_at_us;
ALTER TABLE users DROP COLUMN password_hash;
