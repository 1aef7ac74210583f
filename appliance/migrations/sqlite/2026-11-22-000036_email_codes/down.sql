DROP TABLE email_codes;
ALTER TABLE users DROP COLUMN email_factor;
