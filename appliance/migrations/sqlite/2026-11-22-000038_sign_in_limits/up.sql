-- Sign-in that holds under attack (`appliance::lockout`).
--
-- `users.failed_logins` / `locked_until_us` now count wrong passwords from browsers the
-- account has not signed in with before; each known browser counts its own below, so a
-- stranger's guesses never lock the owner's own browser out.
CREATE TABLE known_browsers (
    id                   INTEGER PRIMARY KEY,
    user_id              BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the random cookie value; the cookie itself is never stored.
    token_hash           BLOB NOT NULL UNIQUE,
    created_at_us        BIGINT NOT NULL,
    last_signed_in_at_us BIGINT NOT NULL,
    source               TEXT NOT NULL,
    user_agent           TEXT NOT NULL,
    failed_logins        INTEGER NOT NULL DEFAULT 0,
    locked_until_us      BIGINT
);
CREATE INDEX known_browsers_user ON known_browsers (user_id, last_signed_in_at_us);

-- Wrong second-factor codes (TOTP, emailed and recovery codes) per account.
ALTER TABLE users ADD COLUMN code_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN code_locked_until_us BIGINT;
