//! Exports of readings, in CSV or JSON lines: rows and sealed blocks merged in time order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Double, Nullable, Text};
use serde::Serialize;

use super::query::reading_of;
use super::{ExportFilter, Reading};
use crate::audit::ExportFormat;
use crate::audit::export::neutralise_formula;
use crate::blocks::{self, BlockHeader, Scope, SealedReading};
use crate::error::{Error, Result};
use crate::ids::DeviceId;
use crate::store::DbConnection;
use crate::time::format_us;

pub const CSV_HEADER: [&str; 7] = [
    "device",
    "seq",
    "metric",
    "value",
    "measured_at",
    "measured_at_us",
    "received_at_us",
];

#[derive(Serialize)]
struct JsonLine<'a> {
    device: &'a str,
    seq: i64,
    metric: &'a str,
    value: f64,
    measured_at: String,
    measured_at_us: i64,
    received_at_us: i64,
}

/// Where a reading falls in an export: by measured time, then device, then sequence number.
type Key = (i64, DeviceId, i64);

/// One row of the export's statement: a reading stored as a row, or a block of sealed
/// readings placed at its earliest measured time.
#[derive(QueryableByName)]
struct Item {
    #[diesel(sql_type = Text)]
    serial: String,
    #[diesel(sql_type = BigInt)]
    device_id: i64,
    #[diesel(sql_type = Text)]
    metric: String,
    /// When it was measured; a block's earliest reading.
    #[diesel(sql_type = BigInt)]
    at: i64,
    /// 1 for a block, 0 for a row.
    #[diesel(sql_type = BigInt)]
    kind: i64,
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Double)]
    value: f64,
    #[diesel(sql_type = BigInt)]
    received_at_us: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    data: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// The statement of an export: the rows and the blocks `filter` selects, in one order by
/// measured time with each block placed before the rows of its earliest moment. Integers are
/// written in (they are the filter's own), the metric is bound as `metric`: empty for all.
fn statement(filter: &ExportFilter, metric: &str) -> String {
    let mut rows = vec!["TRUE".to_owned()];
    let mut blocks = vec!["TRUE".to_owned()];
    if let Some(site) = filter.site {
        rows.push(format!("d.site_id = {}", site.0));
        blocks.push(format!("d.site_id = {}", site.0));
    }
    if let Some(device) = filter.device {
        rows.push(format!("r.device_id = {}", device.0));
        blocks.push(format!("b.device_id = {}", device.0));
    }
    // Always bound: empty (no metric is) for every metric.
    rows.push(format!("({metric} = '' OR r.metric = {metric})"));
    blocks.push(format!("({metric} = '' OR b.metric = {metric})"));
    if let Some(since) = filter.since_us {
        rows.push(format!("r.measured_at_us >= {since}"));
        blocks.push(format!("b.max_measured_at_us >= {since}"));
    }
    if let Some(until) = filter.until_us {
        rows.push(format!("r.measured_at_us < {until}"));
        blocks.push(format!("b.min_measured_at_us < {until}"));
    }
    format!(
        "SELECT d.serial AS serial, r.device_id AS device_id, r.metric AS metric, \
             r.measured_at_us AS at, CAST(0 AS BIGINT) AS kind, r.id AS id, r.seq AS seq, \
             r.value AS value, r.received_at_us AS received_at_us, NULL AS data, \
             CAST(0 AS BIGINT) AS count \
         FROM readings r JOIN devices d ON d.id = r.device_id WHERE {} \
         UNION ALL \
         SELECT d.serial, b.device_id, b.metric, b.min_measured_at_us, CAST(1 AS BIGINT), b.id, \
             CAST(0 AS BIGINT), CAST(0 AS DOUBLE PRECISION), CAST(0 AS BIGINT), b.data, b.count \
         FROM reading_blocks b JOIN devices d ON d.id = b.device_id WHERE {} \
         ORDER BY at, kind DESC, device_id, seq",
        rows.join(" AND "),
        blocks.join(" AND ")
    )
}

/// Calls `visit` with each reading `filter` selects and its device's serial, in time order
/// (measured time, then device, then sequence number); returns how many. Nothing is
/// collected, so there is no row cap.
///
/// One statement reads the rows and the blocks of sealed readings together, so the export
/// is one moment of the store even while readings are sealed beside it. A block arrives at
/// its earliest reading and is opened then; its readings wait in a heap until the rows
/// reach them. Memory grows with the blocks open at once (about one per series whose block
/// spans the moment the export has reached), not with the length of the export.
pub fn for_each_reading(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    mut visit: impl FnMut(&str, &Reading) -> Result<()>,
) -> Result<u64> {
    let scope = filter.scope();
    let mut sealed = Sealed::default();
    let mut seen = 0;
    let mut item = |item: Item| -> Result<()> {
        if item.kind == 1 {
            return sealed.open(item, &scope);
        }
        let reading = Reading {
            id: item.id,
            device_id: DeviceId(item.device_id),
            seq: item.seq,
            metric: item.metric,
            value: item.value,
            measured_at_us: item.at,
            received_at_us: item.received_at_us,
        };
        while sealed.next_key().is_some_and(|key| key < key_of(&reading)) {
            if let Some((serial, earlier)) = sealed.take_next() {
                visit(&serial, &earlier)?;
                seen += 1;
            }
        }
        visit(&item.serial, &reading)?;
        seen += 1;
        Ok(())
    };
    let metric = filter.metric.clone().unwrap_or_default();
    match conn {
        DbConnection::Sqlite(c) => {
            let query = diesel::sql_query(statement(filter, "?1")).bind::<Text, _>(&metric);
            for row in query.load_iter::<Item, diesel::connection::DefaultLoadingMode>(c)? {
                item(row?)?;
            }
        }
        DbConnection::Postgres(c) => {
            let query = diesel::sql_query(statement(filter, "$1")).bind::<Text, _>(&metric);
            for row in query.load_iter::<Item, diesel::connection::DefaultLoadingMode>(c)? {
                item(row?)?;
            }
        }
    }
    while let Some((serial, reading)) = sealed.take_next() {
        visit(&serial, &reading)?;
        seen += 1;
    }
    Ok(seen)
}

fn key_of(reading: &Reading) -> Key {
    (reading.measured_at_us, reading.device_id, reading.seq)
}

/// One opened block: its readings in export order, and how far the export has taken them.
struct OpenBlock {
    header: BlockHeader,
    serial: String,
    readings: Vec<SealedReading>,
    next: usize,
}

impl OpenBlock {
    fn key(&self) -> Option<Key> {
        let r = self.readings.get(self.next)?;
        Some((r.measured_at_us, self.header.device_id, r.seq))
    }
}

/// The open blocks of an export, in a heap by their next reading's key.
#[derive(Default)]
struct Sealed {
    open: Vec<Option<OpenBlock>>,
    free: Vec<usize>,
    heap: BinaryHeap<Reverse<(Key, usize)>>,
}

impl Sealed {
    fn open(&mut self, item: Item, scope: &Scope<'_>) -> Result<()> {
        let data = item.data.unwrap_or_default();
        let mut readings = blocks::decode_block(item.id, item.count, &data)?;
        readings.retain(|r| scope.holds(r));
        readings.sort_by_key(|r| (r.measured_at_us, r.seq));
        let block = OpenBlock {
            header: BlockHeader {
                id: item.id,
                device_id: DeviceId(item.device_id),
                metric: item.metric,
                count: item.count,
                first_id: 0,
                last_id: 0,
                min_measured_at_us: item.at,
                max_measured_at_us: item.at,
            },
            serial: item.serial,
            readings,
            next: 0,
        };
        let Some(key) = block.key() else {
            return Ok(());
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.open[slot] = Some(block);
                slot
            }
            None => {
                self.open.push(Some(block));
                self.open.len() - 1
            }
        };
        self.heap.push(Reverse((key, slot)));
        Ok(())
    }

    fn next_key(&self) -> Option<Key> {
        self.heap.peek().map(|Reverse((key, _))| *key)
    }

    /// The next sealed reading, with its device's serial.
    fn take_next(&mut self) -> Option<(String, Reading)> {
        let Reverse((_, slot)) = self.heap.pop()?;
        let block = self.open.get_mut(slot)?.as_mut()?;
        let reading = reading_of(&block.header, block.readings.get(block.next)?);
        let serial = block.serial.clone();
        block.next += 1;
        match block.key() {
            Some(key) => self.heap.push(Reverse((key, slot))),
            None => {
                self.open[slot] = None;
                self.free.push(slot);
            }
        }
        Some((serial, reading))
    }
}

/// Streams the readings `filter` selects to `out` and returns how many it wrote. In CSV,
/// text cells a spreadsheet would run as a formula are prefixed with `'` (OWASP's
/// CSV-injection advice); numbers stay numbers.
pub fn export(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    format: ExportFormat,
    out: impl std::io::Write,
) -> Result<u64> {
    use std::io::Write as _;
    let failed = |err: &dyn std::fmt::Display| Error::invalid("output", err.to_string());
    match format {
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(CSV_HEADER).map_err(|e| failed(&e))?;
            let count = for_each_reading(conn, filter, |serial, r| {
                w.write_record([
                    &*neutralise_formula(serial),
                    &r.seq.to_string(),
                    &*neutralise_formula(&r.metric),
                    &r.value.to_string(),
                    &format_us(r.measured_at_us),
                    &r.measured_at_us.to_string(),
                    &r.received_at_us.to_string(),
                ])
                .map_err(|e| failed(&e))
            })?;
            w.flush().map_err(|e| failed(&e))?;
            Ok(count)
        }
        ExportFormat::Jsonl => {
            let mut out = std::io::BufWriter::new(out);
            let count = for_each_reading(conn, filter, |serial, r| {
                let line = JsonLine {
                    device: serial,
                    seq: r.seq,
                    metric: &r.metric,
                    value: r.value,
                    measured_at: format_us(r.measured_at_us),
                    measured_at_us: r.measured_at_us,
                    received_at_us: r.received_at_us,
                };
                serde_json::to_writer(&mut out, &line).map_err(|e| failed(&e))?;
                out.write_all(b"\n").map_err(|e| failed(&e))
            })?;
            out.flush().map_err(|e| failed(&e))?;
            Ok(count)
        }
    }
}
