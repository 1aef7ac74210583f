//! What telemetry costs at rest and how fast it reads back, on SQLite and PostgreSQL.
//!
//! `cargo bench -p plantgate-appliance --bench telemetry_store` fills a store with
//! `TELEMETRY_BENCH_DEVICES` devices (default 100) × 10 metrics, one reading every 10 s for
//! `TELEMETRY_BENCH_DAYS` days (default 30; the full size is 260 million readings),
//! stored in batches as the ingest's writer stores them and rolled up as it rolls them up,
//! then seals them all into compressed blocks as the writer does once their day has ended,
//! and prints:
//! - bytes per reading at rest: as rows with their indexes, sealed in blocks, and the
//!   rollups, each apart;
//! - chart query times (p50, p99) for one metric over a day (from rows, then from sealed
//!   blocks) and over a year (from the hourly rollups of a device that sent every 10
//!   minutes for a year);
//! - the CSV export rate, from rows and from sealed blocks.
//!
//! Under `cargo test` the same code runs on one device for a day, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used)] // bench code: a failed expectation is a failed run

use std::time::{Duration, Instant};

use appliance::blocks;
use appliance::devices::DeviceKind;
use appliance::ids::DeviceId;
use appliance::readings::{self, ExportFilter, NewReading};
use appliance::rollups::{self, DAY_US, HOUR_US};
use appliance::series::{self, Source, Span};
use appliance::time::now_us;
use appliance::{DbConnection, audit::ExportFormat};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use testkit::store::{Backend, TestAppliance, register_device};

const METRICS: [&str; 10] = [
    "cycle_count",
    "cycle_time_ms",
    "temperature_c",
    "battery_pct",
    "shock_g",
    "mold_c",
    "pressure_bar",
    "humidity_pct",
    "vibration_mm_s",
    "current_a",
];
const INTERVAL_US: i64 = 10_000_000;
/// Readings per transaction, as the ingest's group commit stores them under load.
const BATCH: usize = 5_000;

struct Size {
    devices: usize,
    days: i64,
    queries: usize,
}

fn size(full: bool) -> Size {
    let env = |name: &str, default: i64| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().expect("a whole number"))
            .unwrap_or(default)
    };
    if full {
        Size {
            devices: env("TELEMETRY_BENCH_DEVICES", 100) as usize,
            days: env("TELEMETRY_BENCH_DAYS", 30),
            queries: 200,
        }
    } else {
        Size {
            devices: 1,
            days: 1,
            queries: 10,
        }
    }
}

fn register(t: &TestAppliance, site: &appliance::models::Site, serial: &str) -> DeviceId {
    register_device(&t.app, site.id, serial, DeviceKind::Monitor).id
}

/// A plausible value of `metric` at step `i`: a slow wave with random noise of up to a
/// unit, to a tenth, as a sensor sends it. The noise is a hash of (metric, step), so every
/// run stores the same values, and it does not repeat: noise that repeated would flatter
/// the compression of sealed blocks.
fn value(metric: usize, i: i64) -> f64 {
    let wave = ((i as f64) / 360.0).sin() * 10.0;
    let noise = (splitmix((metric as u64) << 40 ^ i as u64) % 1000) as f64 / 1000.0;
    ((metric as f64 * 10.0 + 50.0 + wave + noise) * 10.0).round() / 10.0
}

/// SplitMix64's output function: a well-mixed 64-bit hash of `x`.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stores a reading of each of `metrics` of each device every `step_us` for `steps` steps
/// ending now, in batches of [`BATCH`] per transaction; returns how many.
fn fill(
    t: &TestAppliance,
    devices: &[DeviceId],
    metrics: &[&str],
    steps: i64,
    step_us: i64,
) -> usize {
    let start = now_us() - steps * step_us;
    let mut conn = t.conn();
    let mut batch = Vec::with_capacity(BATCH);
    let mut stored = 0;
    let mut seq = vec![0_i64; devices.len()];
    for i in 0..steps {
        for (d, device) in devices.iter().enumerate() {
            for (m, metric) in metrics.iter().enumerate() {
                seq[d] += 1;
                let at = start + i * step_us;
                batch.push(NewReading {
                    device_id: *device,
                    seq: seq[d],
                    metric: (*metric).into(),
                    value: value(m, i),
                    measured_at_us: at,
                    received_at_us: at + 300_000,
                });
                if batch.len() == BATCH {
                    stored += store(&mut conn, &batch);
                    batch.clear();
                }
            }
        }
    }
    stored + store(&mut conn, &batch)
}

fn store(conn: &mut DbConnection, batch: &[NewReading]) -> usize {
    conn.transaction(|c| readings::insert_new(c, batch))
        .unwrap()
}

#[derive(QueryableByName)]
struct TableSize {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

/// The bytes at rest of the readings' rows (with their indexes), of the sealed blocks (with
/// theirs) and of the rollups.
struct AtRest {
    rows: i64,
    blocks: i64,
    rollups: i64,
}

fn at_rest(conn: &mut DbConnection) -> AtRest {
    let rows: Vec<TableSize> = match conn {
        // The page-level statistics of SQLite's dbstat table, per table and index.
        DbConnection::Sqlite(c) => diesel::sql_query(
            "SELECT CASE WHEN name LIKE '%rollup%' THEN 'rollups' \
                    WHEN name LIKE '%block%' THEN 'blocks' \
                    WHEN name LIKE '%reading%' THEN 'readings' ELSE 'other' END AS name, \
                    sum(pgsize) AS bytes FROM dbstat GROUP BY 1",
        )
        .load(c)
        .unwrap(),
        DbConnection::Postgres(c) => diesel::sql_query(
            "SELECT 'readings' AS name, pg_total_relation_size('readings') AS bytes \
             UNION ALL SELECT 'blocks', pg_total_relation_size('reading_blocks') \
             UNION ALL SELECT 'rollups', pg_total_relation_size('reading_rollups')",
        )
        .load(c)
        .unwrap(),
    };
    let of = |name: &str| rows.iter().find(|r| r.name == name).map_or(0, |r| r.bytes);
    AtRest {
        rows: of("readings"),
        blocks: of("blocks"),
        rollups: of("rollups"),
    }
}

fn vacuum(t: &TestAppliance) {
    if let DbConnection::Postgres(c) = &mut *t.conn() {
        diesel::sql_query("VACUUM ANALYZE").execute(c).unwrap();
    }
}

/// Exports every reading as CSV; returns how many and the rate.
fn export_rate(t: &TestAppliance) -> (u64, f64) {
    let started = Instant::now();
    let exported = readings::export(
        &mut t.conn(),
        &ExportFilter::default(),
        ExportFormat::Csv,
        std::io::sink(),
    )
    .unwrap();
    (exported, exported as f64 / started.elapsed().as_secs_f64())
}

/// (p50, p99) in milliseconds.
fn percentiles(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

fn chart_times(
    t: &TestAppliance,
    device: DeviceId,
    span: Span,
    queries: usize,
) -> (Source, (f64, f64)) {
    let now = now_us();
    let mut conn = t.conn();
    let times = (0..queries)
        .map(|_| {
            let started = Instant::now();
            let buckets = series::buckets(&mut conn, device, "temperature_c", span, now).unwrap();
            assert!(!buckets.is_empty(), "the chart draws something");
            started.elapsed()
        })
        .collect();
    (Source::for_span(span, now), percentiles(times))
}

#[allow(clippy::print_stdout)]
fn run(backend: Backend, size: &Size) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let site = t.site(org.id, "Hall 1");
    let devices: Vec<DeviceId> = (0..size.devices)
        .map(|i| register(&t, &site, &format!("MM-{i:04}")))
        .collect();
    let steps = size.days * DAY_US / INTERVAL_US;

    let started = Instant::now();
    let stored = fill(&t, &devices, &METRICS, steps, INTERVAL_US);
    let fill_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    rollups::catch_up(&mut t.conn()).unwrap();
    let rollup_s = started.elapsed().as_secs_f64();
    vacuum(&t);
    let as_rows = at_rest(&mut t.conn());
    let now = now_us();
    let day = Span::new(now - DAY_US, now, 480).unwrap();
    let (day_source, rows_day) = chart_times(&t, devices[0], day, size.queries);
    let (rows_exported, rows_export_rate) = export_rate(&t);
    assert_eq!(rows_exported, stored as u64);

    let started = Instant::now();
    let sealed = blocks::seal_all(&mut t.conn(), now_us()).unwrap();
    let seal_s = started.elapsed().as_secs_f64();
    assert_eq!(sealed, stored as u64 - 1, "all but the newest reading");
    vacuum(&t);
    let as_blocks = at_rest(&mut t.conn());
    let (_, sealed_day) = chart_times(&t, devices[0], day, size.queries);
    let (sealed_exported, sealed_export_rate) = export_rate(&t);
    assert_eq!(sealed_exported, stored as u64);

    // A year of one device that sent every 10 minutes, for the year's chart.
    let yearly = register(&t, &site, "MM-YEAR");
    fill(&t, &[yearly], &["temperature_c"], 365 * 144, 600_000_000);
    rollups::catch_up(&mut t.conn()).unwrap();
    let year = Span::new(now - 365 * DAY_US, now, 480).unwrap();
    let (year_source, year_times) = chart_times(&t, yearly, year, size.queries);
    assert_eq!(year_source, Source::Rollups(HOUR_US));

    let per = |bytes: i64| bytes as f64 / stored as f64;
    let ms = |(p50, p99): (f64, f64)| format!("p50 {p50:.2} ms, p99 {p99:.2} ms");
    println!(
        "{backend:?}: {} devices x {} metrics x {} days every 10 s = {stored} readings",
        size.devices,
        METRICS.len(),
        size.days
    );
    println!(
        "  stored at {:.0} readings/s, rolled up at {:.0} readings/s, sealed at {:.0} readings/s",
        stored as f64 / fill_s,
        stored as f64 / rollup_s,
        sealed as f64 / seal_s
    );
    println!(
        "  at rest as rows with their indexes: {:.1} bytes/reading ({:.1} MB)",
        per(as_rows.rows),
        as_rows.rows as f64 / 1e6
    );
    println!(
        "  at rest sealed in blocks, with their indexes: {:.2} bytes/reading ({:.1} MB)",
        per(as_blocks.blocks),
        as_blocks.blocks as f64 / 1e6
    );
    println!(
        "  rollups: {:.1} bytes/reading ({:.1} MB)",
        per(as_blocks.rollups),
        as_blocks.rollups as f64 / 1e6
    );
    println!(
        "  chart, one metric over a day ({day_source:?}): from rows {}; from sealed blocks {}",
        ms(rows_day),
        ms(sealed_day)
    );
    println!(
        "  chart, one metric over a year ({year_source:?}): {}",
        ms(year_times)
    );
    println!(
        "  CSV export: from rows {rows_export_rate:.0} readings/s; from sealed blocks {sealed_export_rate:.0} readings/s"
    );
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let size = size(full);
    for backend in [Backend::Sqlite, Backend::Postgres] {
        run(backend, &size);
    }
}
