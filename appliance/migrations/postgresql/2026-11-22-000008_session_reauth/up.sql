-- When the session's user last proved who they are (login, or a confirmation before a
-- sensitive action). Sensitive actions ask again when this is older than 10 minutes.
ALTER TABLE sessions ADD COLUMN authenticated_at_us BIGINT;
