-- Sealed readings: the readings of one device's metric, compressed into a block once they
-- are older than the hot rows (see appliance/src/blocks). A block holds up to 2,048
-- readings in measured order; the columns beside the data say which readings it holds, so a
-- query opens only the blocks that can match. The rows a block replaces are deleted in
-- the transaction that writes it, so a reading is either a row or in one block, never both.
CREATE TABLE reading_blocks (
    id                 BIGSERIAL PRIMARY KEY,
    device_id          BIGINT NOT NULL REFERENCES devices (id) ON DELETE RESTRICT,
    metric             TEXT NOT NULL,
    count              BIGINT NOT NULL CHECK (count > 0),
    first_id           BIGINT NOT NULL,
    last_id            BIGINT NOT NULL,
    min_seq            BIGINT NOT NULL,
    max_seq            BIGINT NOT NULL,
    min_measured_at_us BIGINT NOT NULL,
    max_measured_at_us BIGINT NOT NULL,
    min_received_at_us BIGINT NOT NULL,
    max_received_at_us BIGINT NOT NULL,
    data               BYTEA NOT NULL
);
-- A device's metric over a time range (charts, alerts, exports of one device).
CREATE INDEX reading_blocks_series ON reading_blocks (device_id, metric, max_measured_at_us);
-- Whether a (device, seq) is already stored: a retried batch is stored once.
CREATE INDEX reading_blocks_seq ON reading_blocks (device_id, max_seq);
-- Pages and live streams in id order.
CREATE INDEX reading_blocks_last_id ON reading_blocks (last_id);
-- Retention: the earliest received first.
CREATE INDEX reading_blocks_received ON reading_blocks (min_received_at_us);
-- Exports of a site or the whole plant, in measured-time order.
CREATE INDEX reading_blocks_measured ON reading_blocks (min_measured_at_us);
