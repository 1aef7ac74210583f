-- The email one-time code: the alternative second factor to an authenticator app.
ALTER TABLE users ADD COLUMN email_factor BOOLEAN NOT NULL DEFAULT FALSE;

-- Codes sent, stored as SHA-256 only; each is good once, for ten minutes.
CREATE TABLE email_codes (
    id            INTEGER PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash     BLOB NOT NULL,
    created_at_us BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL,
    used_at_us    BIGINT
);
CREATE INDEX email_codes_user ON email_codes (user_id, used_at_us);
