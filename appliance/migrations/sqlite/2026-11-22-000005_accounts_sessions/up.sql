-- Login: an Argon2id PHC string, lockout state, and the dates that end an account.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN password_changed_at_us BIGINT;
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until_us BIGINT;
ALTER TABLE users ADD COLUMN disabled_at_us BIGINT;
-- Contractor accounts cannot log in after this.
ALTER TABLE users ADD COLUMN expires_at_us BIGINT;

-- Server-side sessions. Only the SHA-256 of the 256-bit session id is stored.
CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    token_hash    BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at_us BIGINT NOT NULL,
    last_seen_us  BIGINT NOT NULL,
    source        TEXT NOT NULL,
    user_agent    TEXT NOT NULL,
    ended_at_us   BIGINT,
    end_reason    TEXT
);
CREATE INDEX sessions_user ON sessions (user_id, ended_at_us);
