//! Telemetry readings: what devices report, stored once per (device, sequence number).

use std::collections::BTreeMap;

use diesel::prelude::*;
use serde::Serialize;

use crate::blocks::{self, Scope};
use crate::error::{Error, Result};
use crate::ids::{DeviceId, SiteId};
use crate::rollups;
use crate::schema::{devices, readings};
use crate::store::DbConnection;

mod export;
mod query;

pub use export::{CSV_HEADER, export, for_each_reading};
pub use query::{
    count_for, latest_points, latest_values, page, page_after, points_between, points_since,
    sealed_points, seqs_for,
};

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

/// Stores `rows`, skipping any (device, seq) already stored, as a row or sealed; returns
/// how many were new. Run it inside the caller's transaction.
pub fn insert_new(conn: &mut DbConnection, rows: &[NewReading]) -> Result<usize> {
    let stored = insert_rows(conn, rows)?;
    // A sealed reading is no longer a row for the unique index to find: one stored again is
    // taken back out. Checked after the insert, not before: on PostgreSQL a seal of the same
    // reading that commits meanwhile makes the insert wait for it, and is then seen here.
    let sealed = already_sealed(conn, rows)?;
    let mut removed = 0;
    for (device, seqs) in &sealed {
        removed += diesel::delete(
            readings::table
                .filter(readings::device_id.eq(*device))
                .filter(readings::seq.eq_any(seqs)),
        )
        .execute(conn)?;
    }
    Ok(stored.saturating_sub(removed))
}

/// The sequence numbers of `rows` already sealed into blocks ([`crate::blocks`]), by
/// device.
fn already_sealed(
    conn: &mut DbConnection,
    rows: &[NewReading],
) -> Result<BTreeMap<DeviceId, Vec<i64>>> {
    let mut by_device: BTreeMap<DeviceId, Vec<i64>> = BTreeMap::new();
    for row in rows {
        by_device.entry(row.device_id).or_default().push(row.seq);
    }
    let mut sealed = BTreeMap::new();
    for (device, seqs) in by_device {
        let found = blocks::sealed_seqs(conn, device, &seqs)?;
        if !found.is_empty() {
            sealed.insert(device, found.into_iter().collect());
        }
    }
    Ok(sealed)
}

/// Stores `rows` as rows, skipping any (device, seq) already a row; returns how many were
/// new.
///
/// On SQLite rows go in statements of exactly [`SQLITE_ROWS`] rows, and the rest in
/// statements of 32, 16, 8, 4, 2 and 1 rows as its binary digits say (a message of 10
/// readings is two statements, not ten): a fixed-size array has a static query id in
/// diesel, so each of these seven statements is prepared once and kept in diesel's cache.
/// A slice of any length makes diesel build and SQLite parse a new statement for every
/// chunk, which the profile of the ingest writer showed costing about as much as the
/// inserts themselves. On PostgreSQL rows go in large multi-row statements, to save round
/// trips.
fn insert_rows(conn: &mut DbConnection, rows: &[NewReading]) -> Result<usize> {
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
///
/// Sealed readings are older than rows, so they go first: the blocks holding the earliest
/// received, each deleted or written again without what goes ([`blocks::prune_received_before`]).
pub fn prune_received_before(conn: &mut DbConnection, cutoff_us: i64, chunk: i64) -> Result<usize> {
    let blocks_per_chunk = (chunk / blocks::BLOCK_MAX).max(1);
    let sealed = blocks::prune_received_before(conn, cutoff_us, blocks_per_chunk)?;
    if sealed > 0 {
        return Ok(sealed);
    }
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

impl ExportFilter {
    /// The blocks of sealed readings this filter may need.
    fn scope(&self) -> Scope<'_> {
        Scope {
            site: self.site,
            device: self.device,
            metric: self.metric.as_deref(),
            since_us: self.since_us,
            until_us: self.until_us,
            after_id: None,
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
