//! Exports of readings, in CSV or JSON lines: rows and sealed blocks merged in time order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use diesel::prelude::*;
use serde::Serialize;

use super::query::{reading_of, serials_of};
use super::{ExportFilter, Reading};
use crate::audit::ExportFormat;
use crate::audit::export::neutralise_formula;
use crate::blocks::{self, BlockHeader, Order, Scope, SealedReading};
use crate::error::{Error, Result};
use crate::ids::DeviceId;
use crate::schema::{devices, readings};
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

/// Rows read per query while exporting.
const ROWS_PAGE: i64 = 10_000;

/// Where a reading falls in an export: by measured time, then device, then sequence number.
type Key = (i64, DeviceId, i64);

/// Calls `visit` with each reading `filter` selects and its device's serial, in time order
/// (measured time, then device, then sequence number); returns how many. Nothing is
/// collected, so there is no row cap.
///
/// It merges two streams read under one snapshot, so that sealing running beside it can
/// neither hide a reading nor show it twice: the rows, a page at a time from where the last
/// page ended, and the sealed readings, opening each block only when the merge reaches its
/// earliest reading. Memory grows with the blocks open at once (one per series whose block
/// spans the current moment), not with the length of the export.
pub fn for_each_reading(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    mut visit: impl FnMut(&str, &Reading) -> Result<()>,
) -> Result<u64> {
    conn.transaction(|conn| {
        if let DbConnection::Postgres(c) = conn {
            diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(c)?;
        }
        let scope = filter.scope();
        let mut rows = Rows::default();
        let mut sealed = Sealed::default();
        let mut seen = 0;
        loop {
            rows.fill(conn, filter)?;
            let row_key = rows.page.front().map(|(_, r)| key_of(r));
            // Open every block that may hold a reading due before the next one known.
            loop {
                let due = match (row_key, sealed.next_key()) {
                    (Some(row), Some(block)) => Some(row.min(block)),
                    (row, block) => row.or(block),
                };
                let Some(header) = sealed.next_header(conn, &scope)? else {
                    break;
                };
                if due.is_some_and(|(at, _, _)| header.min_measured_at_us > at) {
                    break;
                }
                sealed.open_next(conn, &scope)?;
            }
            let from_rows = match (row_key, sealed.next_key()) {
                (None, None) => return Ok(seen),
                (Some(row), Some(block)) => row < block,
                (row, _) => row.is_some(),
            };
            let next = if from_rows {
                rows.page.pop_front()
            } else {
                sealed.take_next()
            };
            let Some((serial, reading)) = next else {
                return Ok(seen);
            };
            visit(&serial, &reading)?;
            seen += 1;
        }
    })
}

fn key_of(reading: &Reading) -> Key {
    (reading.measured_at_us, reading.device_id, reading.seq)
}

/// The rows of an export, a page at a time, each page starting after the last one's key.
#[derive(Default)]
struct Rows {
    page: VecDeque<(String, Reading)>,
    after: Option<Key>,
    done: bool,
}

impl Rows {
    fn fill(&mut self, conn: &mut DbConnection, filter: &ExportFilter) -> Result<()> {
        if !self.page.is_empty() || self.done {
            return Ok(());
        }
        use readings::{device_id, measured_at_us, seq};
        let mut query = readings::table
            .inner_join(devices::table)
            .select((devices::serial, Reading::as_select()))
            .order((measured_at_us, device_id, seq))
            .into_boxed();
        if let Some(site) = filter.site {
            query = query.filter(devices::site_id.eq(site));
        }
        if let Some(device) = filter.device {
            query = query.filter(device_id.eq(device));
        }
        if let Some(metric) = &filter.metric {
            query = query.filter(readings::metric.eq(metric.clone()));
        }
        if let Some(since) = filter.since_us {
            query = query.filter(measured_at_us.ge(since));
        }
        if let Some(until) = filter.until_us {
            query = query.filter(measured_at_us.lt(until));
        }
        if let Some((at, device, after_seq)) = self.after {
            query = query.filter(
                measured_at_us.gt(at).or(measured_at_us.eq(at).and(
                    device_id
                        .gt(device)
                        .or(device_id.eq(device).and(seq.gt(after_seq))),
                )),
            );
        }
        let page: Vec<(String, Reading)> = query.limit(ROWS_PAGE).load(conn)?;
        self.done = (page.len() as i64) < ROWS_PAGE;
        self.after = page.last().map(|(_, r)| key_of(r)).or(self.after);
        self.page = page.into();
        Ok(())
    }
}

/// One opened block: its readings in export order, and how far the merge has taken them.
struct OpenBlock {
    header: BlockHeader,
    readings: Vec<SealedReading>,
    next: usize,
}

impl OpenBlock {
    fn key(&self) -> Key {
        let r = &self.readings[self.next];
        (r.measured_at_us, self.header.device_id, r.seq)
    }
}

/// The sealed readings of an export: the blocks in order of their earliest reading, and a
/// heap of the open ones by their next reading's key.
#[derive(Default)]
struct Sealed {
    headers: VecDeque<BlockHeader>,
    after: Option<(i64, i64)>,
    exhausted: bool,
    open: Vec<Option<OpenBlock>>,
    free: Vec<usize>,
    heap: BinaryHeap<Reverse<(Key, usize)>>,
    serials: HashMap<DeviceId, String>,
}

impl Sealed {
    /// The header of the next block to open, reading the next page of them when needed.
    fn next_header(
        &mut self,
        conn: &mut DbConnection,
        scope: &Scope<'_>,
    ) -> Result<Option<&BlockHeader>> {
        if self.headers.is_empty() && !self.exhausted {
            let order = Order::Measured { after: self.after };
            let page = blocks::headers(conn, scope, order, HEADERS_PAGE)?;
            self.exhausted = (page.len() as i64) < HEADERS_PAGE;
            if let Some(last) = page.last() {
                self.after = Some((last.min_measured_at_us, last.id));
            }
            self.headers = page.into();
        }
        Ok(self.headers.front())
    }

    fn open_next(&mut self, conn: &mut DbConnection, scope: &Scope<'_>) -> Result<()> {
        let Some(header) = self.headers.pop_front() else {
            return Ok(());
        };
        let mut readings = blocks::open(conn, &header)?;
        readings.retain(|r| scope.holds(r));
        if readings.is_empty() {
            return Ok(());
        }
        readings.sort_by_key(|r| (r.measured_at_us, r.seq));
        if !self.serials.contains_key(&header.device_id) {
            self.serials
                .extend(serials_of(conn, std::iter::once(header.device_id))?);
        }
        let block = OpenBlock {
            header,
            readings,
            next: 0,
        };
        let key = block.key();
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
        let reading = reading_of(&block.header, &block.readings[block.next]);
        block.next += 1;
        if block.next < block.readings.len() {
            let key = block.key();
            self.heap.push(Reverse((key, slot)));
        } else {
            self.open[slot] = None;
            self.free.push(slot);
        }
        let serial = self
            .serials
            .get(&reading.device_id)
            .cloned()
            .unwrap_or_default();
        Some((serial, reading))
    }
}

/// Block headers read per query.
const HEADERS_PAGE: i64 = 256;

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
