-- REST API tokens for service accounts: scoped, expiring, revocable, stored as SHA-256.
CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY,
    token_hash      BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    user_id         BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    created_at_us   BIGINT NOT NULL,
    expires_at_us   BIGINT NOT NULL,
    revoked_at_us   BIGINT,
    last_used_at_us BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
