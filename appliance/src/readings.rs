//! Telemetry readings: what devices report, stored once per (device, sequence number).

use diesel::prelude::*;
use serde::Serialize;

use crate::audit::ExportFormat;
use crate::audit::export::neutralise_formula;
use crate::error::{Error, Result};
use crate::ids::{DeviceId, SiteId};
use crate::rollups;
use crate::schema::{devices, readings};
use crate::store::DbConnection;
use crate::store::on_backend;
use crate::time::format_us;

/// Metrics every monitor and logger may report; any other name matching
/// [`is_metric_name`] is a custom metric.
pub const STANDARD_METRICS: [&str; 5] = [
    "cycle_count",
    "cycle_time_ms",
    "temperature_c",
    "battery_pct",
    "shock_g",
];

/// What a battery can hold, in percent.
pub const BATTERY_PCT_RANGE: (f64, f64) = (0.0, 100.0);
/// A received signal strength a radio can report, in dBm: from below the noise floor of
/// the most sensitive radios (LoRa reaches about -148 dBm) to a transmitter next door.
pub const SIGNAL_DBM_RANGE: (f64, f64) = (-160.0, 0.0);

/// The values a standard metric can physically take; custom metrics have none.
pub fn physical_range(metric: &str) -> Option<(f64, f64)> {
    match metric {
        "battery_pct" => Some(BATTERY_PCT_RANGE),
        "cycle_count" | "cycle_time_ms" => Some((0.0, f64::MAX)),
        // Absolute zero.
        "temperature_c" => Some((-273.15, f64::MAX)),
        _ => None,
    }
}

/// Refuses `value` of `name` (in `field`) when it lies outside `range`, naming both.
fn within(
    field: &'static str,
    name: &str,
    value: f64,
    (low, high): (f64, f64),
    unit: &str,
) -> Result<()> {
    if (low..=high).contains(&value) {
        return Ok(());
    }
    let bound = |b: f64| {
        if b == f64::MAX {
            "any".to_owned()
        } else {
            format!("{b}")
        }
    };
    Err(Error::invalid(
        field,
        format!(
            "{name} {value} is outside what it can physically be ({} to {}{unit})",
            bound(low),
            bound(high)
        ),
    ))
}

const MAX_METRIC_LEN: usize = 64;
/// Rows per multi-row INSERT on PostgreSQL (65535 bound values at most; a reading binds 6).
const INSERT_CHUNK: usize = 2000;
/// Rows per cached multi-row INSERT on SQLite.
const SQLITE_ROWS: usize = 64;

/// Lowercase ASCII letters, digits, `_`, `.` and `-`, starting with a letter, at most 64.
pub fn is_metric_name(name: &str) -> bool {
    name.len() <= MAX_METRIC_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize)]
#[diesel(table_name = readings)]
pub struct Reading {
    pub id: i64,
    pub device_id: DeviceId,
    pub seq: i64,
    pub metric: String,
    pub value: f64,
    pub measured_at_us: i64,
    pub received_at_us: i64,
}

/// A validated reading ready to store.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = readings)]
pub struct NewReading {
    pub device_id: DeviceId,
    pub seq: i64,
    pub metric: String,
    pub value: f64,
    pub measured_at_us: i64,
    pub received_at_us: i64,
}

impl NewReading {
    pub fn validate(&self) -> Result<()> {
        if !is_metric_name(&self.metric) {
            return Err(Error::invalid(
                "metric",
                format!(
                    "{:?} is not a metric name (1-{MAX_METRIC_LEN} of a-z 0-9 _ . -, starting with a letter)",
                    self.metric
                ),
            ));
        }
        if !self.value.is_finite() {
            return Err(Error::invalid("value", "must be a finite number"));
        }
        if let Some(range) = physical_range(&self.metric) {
            within("value", &self.metric, self.value, range, "")?;
        }
        if self.seq < 0 {
            return Err(Error::invalid("seq", "must be 0 or more"));
        }
        Ok(())
    }
}

/// Stores `rows`, skipping any (device, seq) already stored; returns how many were new.
/// Run it inside the caller's transaction.
///
/// On SQLite rows go in statements of exactly [`SQLITE_ROWS`] rows, and the rest in
/// statements of 32, 16, 8, 4, 2 and 1 rows as its binary digits say (a message of 10
/// readings is two statements, not ten): a fixed-size array has a static query id in
/// diesel, so each of these seven statements is prepared once and kept in diesel's cache.
/// A slice of any length makes diesel build and SQLite parse a new statement for every
/// chunk, which the profile of the ingest writer showed costing about as much as the
/// inserts themselves. On PostgreSQL rows go in large multi-row statements, to save round
/// trips.
pub fn insert_new(conn: &mut DbConnection, rows: &[NewReading]) -> Result<usize> {
    let mut stored = 0;
    match conn {
        // INSERT OR IGNORE is SQLite's ON CONFLICT DO NOTHING.
        DbConnection::Sqlite(c) => {
            let (arrays, rest) = rows.as_chunks::<SQLITE_ROWS>();
            for array in arrays {
                stored += diesel::insert_or_ignore_into(readings::table)
                    .values(array)
                    .execute(c)?;
            }
            let mut rest = rest;
            stored += insert_fixed::<32>(c, &mut rest)?;
            stored += insert_fixed::<16>(c, &mut rest)?;
            stored += insert_fixed::<8>(c, &mut rest)?;
            stored += insert_fixed::<4>(c, &mut rest)?;
            stored += insert_fixed::<2>(c, &mut rest)?;
            stored += insert_fixed::<1>(c, &mut rest)?;
            debug_assert!(rest.is_empty());
        }
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(INSERT_CHUNK) {
                stored += diesel::insert_into(readings::table)
                    .values(chunk)
                    .on_conflict_do_nothing()
                    .execute(c)?;
            }
        }
    }
    Ok(stored)
}

/// Inserts the first `N` of `rows` in one cached statement if there are that many, and
/// moves `rows` past them; returns how many were new.
fn insert_fixed<const N: usize>(
    c: &mut diesel::SqliteConnection,
    rows: &mut &[NewReading],
) -> Result<usize> {
    let Some((head, tail)) = rows.split_first_chunk::<N>() else {
        return Ok(0);
    };
    let stored = diesel::insert_or_ignore_into(readings::table)
        .values(head)
        .execute(c)?;
    *rows = tail;
    Ok(stored)
}

/// Deletes up to `chunk` of the oldest stored readings received before `cutoff_us`, in
/// storage (id) order, and returns how many. It stops at the first reading received at or
/// after the cutoff, so it never deletes a newer one; run it until it returns 0. Each call is
/// one range delete over the primary key, so the write lock is held briefly.
///
/// Only readings already counted in the rollups go, and never the newest reading: SQLite
/// hands out the next id after the largest one left, and ids must keep growing for the
/// rollups and live streams that follow them ([`crate::rollups`]).
pub fn prune_received_before(conn: &mut DbConnection, cutoff_us: i64, chunk: i64) -> Result<usize> {
    let deletable = rollups::rolled_through(conn)?.min(last_id(conn)? - 1);
    let oldest: Vec<(i64, i64)> = readings::table
        .filter(readings::id.le(deletable))
        .order(readings::id)
        .limit(chunk)
        .select((readings::id, readings::received_at_us))
        .load(conn)?;
    let Some(last) = oldest
        .iter()
        .take_while(|(_, received)| *received < cutoff_us)
        .map(|(id, _)| *id)
        .last()
    else {
        return Ok(0);
    };
    Ok(diesel::delete(readings::table.filter(readings::id.le(last))).execute(conn)?)
}

/// The largest reading id stored, or 0: where a live stream that starts now begins.
pub fn last_id(conn: &mut DbConnection) -> Result<i64> {
    Ok(readings::table
        .select(diesel::dsl::max(readings::id))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0))
}

/// Up to `limit` readings with an id above `after` that `filter` selects, in id (storage)
/// order, each with its device's serial: what a live stream sends next.
pub fn page_after(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<(String, Reading)>> {
    let mut query = readings::table
        .inner_join(devices::table)
        .select((devices::serial, Reading::as_select()))
        .filter(readings::id.gt(after))
        .into_boxed();
    if let Some(site) = filter.site {
        query = query.filter(devices::site_id.eq(site));
    }
    if let Some(device) = filter.device {
        query = query.filter(readings::device_id.eq(device));
    }
    if let Some(metric) = &filter.metric {
        query = query.filter(readings::metric.eq(metric.clone()));
    }
    if let Some(since) = filter.since_us {
        query = query.filter(readings::measured_at_us.ge(since));
    }
    if let Some(until) = filter.until_us {
        query = query.filter(readings::measured_at_us.lt(until));
    }
    Ok(query.order(readings::id).limit(limit).load(conn)?)
}

/// What a device reports about itself besides readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    pub firmware_version: Option<String>,
    pub battery_pct: Option<f64>,
    pub signal_dbm: Option<f64>,
}

impl DeviceState {
    /// Refuses a battery or signal level no device can report.
    pub fn validate(&self) -> Result<()> {
        if let Some(battery) = self.battery_pct {
            within(
                "battery_pct",
                "battery_pct",
                battery,
                BATTERY_PCT_RANGE,
                " %",
            )?;
        }
        if let Some(signal) = self.signal_dbm {
            within("signal_dbm", "signal_dbm", signal, SIGNAL_DBM_RANGE, " dBm")?;
        }
        Ok(())
    }
}

/// Records that `device` was heard from at `seen_at_us`, with whatever state it reported.
pub fn update_state(
    conn: &mut DbConnection,
    device: DeviceId,
    seen_at_us: i64,
    state: &DeviceState,
) -> Result<()> {
    diesel::update(devices::table.find(device))
        .set(devices::last_seen_at_us.eq(seen_at_us))
        .execute(conn)?;
    if let Some(firmware) = &state.firmware_version {
        diesel::update(devices::table.find(device))
            .set(devices::firmware_version.eq(firmware))
            .execute(conn)?;
    }
    if let Some(battery) = state.battery_pct {
        diesel::update(devices::table.find(device))
            .set(devices::battery_pct.eq(battery))
            .execute(conn)?;
    }
    if let Some(signal) = state.signal_dbm {
        diesel::update(devices::table.find(device))
            .set(devices::signal_dbm.eq(signal))
            .execute(conn)?;
    }
    Ok(())
}

/// One page of a device's readings in storage order: up to `limit` with an id above `after`
/// (the previous page's last id), optionally of one metric and measured in `[since, until)`.
pub fn page(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: Option<&str>,
    since_us: Option<i64>,
    until_us: Option<i64>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Reading>> {
    let mut query = readings::table
        .filter(readings::device_id.eq(device))
        .into_boxed();
    if let Some(metric) = metric {
        query = query.filter(readings::metric.eq(metric.to_owned()));
    }
    if let Some(since) = since_us {
        query = query.filter(readings::measured_at_us.ge(since));
    }
    if let Some(until) = until_us {
        query = query.filter(readings::measured_at_us.lt(until));
    }
    if let Some(after) = after {
        query = query.filter(readings::id.gt(after));
    }
    Ok(query
        .order(readings::id)
        .limit(limit)
        .select(Reading::as_select())
        .load(conn)?)
}

/// The latest `n` values of a device's metric, newest first.
pub fn latest_values(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    n: i64,
) -> Result<Vec<f64>> {
    Ok(readings::table
        .filter(readings::device_id.eq(device))
        .filter(readings::metric.eq(metric))
        .order((readings::measured_at_us.desc(), readings::seq.desc()))
        .limit(n)
        .select(readings::value)
        .load(conn)?)
}

/// Up to `n` (value, measured_at_us) of a device's metric measured before `before_us` (or
/// at all), newest first.
pub fn latest_points(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    before_us: Option<i64>,
    n: i64,
) -> Result<Vec<(f64, i64)>> {
    let mut query = readings::table
        .filter(readings::device_id.eq(device))
        .filter(readings::metric.eq(metric.to_owned()))
        .into_boxed();
    if let Some(before) = before_us {
        query = query.filter(readings::measured_at_us.lt(before));
    }
    Ok(query
        .order((readings::measured_at_us.desc(), readings::seq.desc()))
        .limit(n)
        .select((readings::value, readings::measured_at_us))
        .load(conn)?)
}

/// Every (value, measured_at_us) of a device's metric measured at or after `since_us`,
/// newest first.
pub fn points_since(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: &str,
    since_us: i64,
) -> Result<Vec<(f64, i64)>> {
    Ok(readings::table
        .filter(readings::device_id.eq(device))
        .filter(readings::metric.eq(metric))
        .filter(readings::measured_at_us.ge(since_us))
        .order((readings::measured_at_us.desc(), readings::seq.desc()))
        .select((readings::value, readings::measured_at_us))
        .load(conn)?)
}

/// Up to `limit` (value, measured_at_us) of a device's readings measured in
/// `[since_us, until_us)`, oldest first: of one metric, or of every metric when `metric` is
/// `None` (a silence check needs only when something arrived).
pub fn points_between(
    conn: &mut DbConnection,
    device: DeviceId,
    metric: Option<&str>,
    (since_us, until_us): (i64, i64),
    limit: i64,
) -> Result<Vec<(f64, i64)>> {
    let mut query = readings::table
        .filter(readings::device_id.eq(device))
        .filter(readings::measured_at_us.ge(since_us))
        .filter(readings::measured_at_us.lt(until_us))
        .into_boxed();
    if let Some(metric) = metric {
        query = query.filter(readings::metric.eq(metric.to_owned()));
    }
    Ok(query
        .order((readings::measured_at_us, readings::seq))
        .select((readings::value, readings::measured_at_us))
        .limit(limit)
        .load(conn)?)
}

pub fn count_for(conn: &mut DbConnection, device: DeviceId) -> Result<i64> {
    Ok(readings::table
        .filter(readings::device_id.eq(device))
        .count()
        .get_result(conn)?)
}

/// The stored sequence numbers of a device, ascending.
pub fn seqs_for(conn: &mut DbConnection, device: DeviceId) -> Result<Vec<i64>> {
    Ok(readings::table
        .filter(readings::device_id.eq(device))
        .order(readings::seq)
        .select(readings::seq)
        .load(conn)?)
}

/// Which readings an export holds; every field narrows it. Times are `[since, until)` on
/// the time the device measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportFilter {
    pub site: Option<SiteId>,
    pub device: Option<DeviceId>,
    pub metric: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

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

/// Calls `visit` with each reading `filter` selects and its device's serial, in time order,
/// through one cursor (nothing is collected, so there is no row cap); returns how many.
pub fn for_each_reading(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    mut visit: impl FnMut(&str, &Reading) -> Result<()>,
) -> Result<u64> {
    let mut seen = 0;
    on_backend!(conn, c => {
        let mut query = readings::table
            .inner_join(devices::table)
            .select((devices::serial, Reading::as_select()))
            .order((readings::measured_at_us, readings::device_id, readings::seq))
            .into_boxed();
        if let Some(site) = filter.site {
            query = query.filter(devices::site_id.eq(site));
        }
        if let Some(device) = filter.device {
            query = query.filter(readings::device_id.eq(device));
        }
        if let Some(metric) = &filter.metric {
            query = query.filter(readings::metric.eq(metric.clone()));
        }
        if let Some(since) = filter.since_us {
            query = query.filter(readings::measured_at_us.ge(since));
        }
        if let Some(until) = filter.until_us {
            query = query.filter(readings::measured_at_us.lt(until));
        }
        for row in query.load_iter::<(String, Reading), diesel::connection::DefaultLoadingMode>(c)? {
            let (serial, reading) = row?;
            seen += 1;
            visit(&serial, &reading)?;
        }
    });
    Ok(seen)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_custom_metric_names_are_accepted_and_odd_ones_refused() {
        for name in STANDARD_METRICS.iter().chain(&["mold.zone-2_temp"]) {
            assert!(is_metric_name(name), "{name}");
        }
        for bad in ["", "Temp", "1x", "a b", "a/b", &"a".repeat(65)] {
            assert!(!is_metric_name(bad), "{bad:?}");
        }
    }
}
