-- Times are microseconds since the Unix epoch (UTC), the unit the audit chain hashes.
CREATE TABLE organisations (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE CHECK (length(trim(name)) > 0),
    created_at_us BIGINT NOT NULL
);

CREATE TABLE sites (
    id              INTEGER PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id) ON DELETE RESTRICT,
    name            TEXT NOT NULL CHECK (length(trim(name)) > 0),
    location        TEXT NOT NULL DEFAULT '',
    created_at_us   BIGINT NOT NULL,
    UNIQUE (organisation_id, name)
);

CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id) ON DELETE RESTRICT,
    name            TEXT NOT NULL CHECK (length(trim(name)) > 0),
    email           TEXT NOT NULL UNIQUE,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'approver', 'technician', 'viewer', 'auditor')),
    created_at_us   BIGINT NOT NULL
);
CREATE INDEX users_organisation ON users (organisation_id);

CREATE TABLE enrolment_tokens (
    id            INTEGER PRIMARY KEY,
    token_hash    BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    purpose       TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL,
    used_at_us    BIGINT,
    revoked_at_us BIGINT
);

CREATE TABLE audit_log (
    seq            BIGINT PRIMARY KEY CHECK (seq > 0),
    occurred_at_us BIGINT NOT NULL,
    actor_kind     TEXT NOT NULL,
    actor_id       TEXT NOT NULL,
    source         TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    details        TEXT NOT NULL,
    prev_hash      BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash           BLOB NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX audit_log_occurred_at ON audit_log (occurred_at_us);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- One row that every appender updates first, so that appends from several processes
-- are serialised the same way on SQLite (write lock) and PostgreSQL (row lock).
CREATE TABLE audit_append_lock (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    appends BIGINT NOT NULL
);
INSERT INTO audit_append_lock (id, appends) VALUES (1, 0);

CREATE TABLE audit_checkpoints (
    seq          BIGINT PRIMARY KEY,
    hash         BLOB NOT NULL CHECK (length(hash) = 32),
    signed_at_us BIGINT NOT NULL,
    key_id       TEXT NOT NULL,
    signature    BLOB NOT NULL
);
CREATE INDEX audit_checkpoints_signed_at ON audit_checkpoints (signed_at_us);
