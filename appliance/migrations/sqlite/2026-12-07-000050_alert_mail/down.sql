ALTER TABLE alerts ADD COLUMN raise_notified_at_us BIGINT;
ALTER TABLE alerts ADD COLUMN clear_notified_at_us BIGINT;
ALTER TABLE alerts ADD COLUMN notify_attempts INTEGER NOT NULL DEFAULT 0;
