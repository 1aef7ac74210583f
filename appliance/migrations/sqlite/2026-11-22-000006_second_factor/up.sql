-- TOTP (RFC 6238): the base32 secret, and the last time step accepted, so a code is
-- never accepted twice.
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;

-- One-time recovery codes, stored as SHA-256.
CREATE TABLE recovery_codes (
    id         INTEGER PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  BLOB NOT NULL CHECK (length(code_hash) = 32),
    used_at_us BIGINT
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

-- A session is 'done' once every factor is checked; 'pending' waits for the second factor,
-- 'enrol' must enrol one first. Only 'done' sessions reach the portal's pages.
ALTER TABLE sessions ADD COLUMN second_factor TEXT NOT NULL DEFAULT 'done'
    CHECK (second_factor IN ('done', 'pending', 'enrol'));
