-- Rollups: each device's metric summarised per minute, hour and day (count, minimum,
-- maximum, sum and the last value measured), so a chart of a month or a year reads a few
-- thousand rows instead of millions, and keeps its line after the raw readings are pruned.
-- Rolled up from the readings in id order by the ingest; rollup_progress holds the largest
-- reading id already counted, moved in the same transaction as the rollups it fed, so a
-- reading is counted once, whether it arrives late, out of order, or across a crash.
CREATE TABLE reading_rollups (
    device_id           BIGINT NOT NULL,
    metric              TEXT NOT NULL,
    width_us            BIGINT NOT NULL CHECK (width_us IN (60000000, 3600000000, 86400000000)),
    bucket_start_us     BIGINT NOT NULL,
    count               BIGINT NOT NULL,
    min                 DOUBLE PRECISION NOT NULL,
    max                 DOUBLE PRECISION NOT NULL,
    sum                 DOUBLE PRECISION NOT NULL,
    last_value          DOUBLE PRECISION NOT NULL,
    last_measured_at_us BIGINT NOT NULL,
    PRIMARY KEY (device_id, metric, width_us, bucket_start_us)
);
-- Minute rollups are pruned by age, oldest first.
CREATE INDEX reading_rollups_width_start ON reading_rollups (width_us, bucket_start_us);

CREATE TABLE rollup_progress (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    through_reading_id BIGINT NOT NULL
);
INSERT INTO rollup_progress (id, through_reading_id) VALUES (1, 0);
