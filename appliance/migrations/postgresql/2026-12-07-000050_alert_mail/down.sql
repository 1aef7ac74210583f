ALTER TABLE alerts
    ADD COLUMN raise_notified_at_us BIGINT,
    ADD COLUMN clear_notified_at_us BIGINT,
    ADD COLUMN notify_attempts INTEGER NOT NULL DEFAULT 0;
