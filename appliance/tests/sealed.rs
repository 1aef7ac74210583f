//! Sealed readings on both backends: once readings are sealed into compressed blocks, every
//! way of reading them back (exports in CSV and JSON lines, pages, live-stream pages, the
//! latest values alerts use, ranges, counts, sequence numbers, charts, the metric list)
//! answers exactly what it answered from rows; a retried batch is still stored once; pruning
//! takes the oldest blocks first, audited. And `plantgate readings seal` killed with
//! SIGKILL part way leaves every acknowledged reading exported exactly once.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use appliance::audit::ExportFormat;
use appliance::blocks;
use appliance::devices::DeviceKind;
use appliance::ids::DeviceId;
use appliance::readings::{self, ExportFilter, NewReading};
use appliance::retention;
use appliance::rollups;
use appliance::series::{self, Source, Span};
use appliance::time::now_us;
use common::{Backend, Cli, TestAppliance, register_device, test_actor};

const DAY_US: i64 = 86_400_000_000;

fn reading(
    device: DeviceId,
    seq: i64,
    metric: &str,
    value: f64,
    at: i64,
    received: i64,
) -> NewReading {
    NewReading {
        device_id: device,
        seq,
        metric: metric.into(),
        value,
        measured_at_us: at,
        received_at_us: received,
    }
}

/// Values of every kind a block must give back bit for bit: decimals, integers, thirds,
/// negative zero, the extremes.
fn value(i: i64) -> f64 {
    match i % 11 {
        0 => -0.0,
        1 => 1.0 / 3.0 * i as f64,
        2 => 1e300 / (i as f64),
        3 => -273.15,
        4 => 5e-324,
        _ => (i % 997) as f64 / 10.0 - 30.0,
    }
}

fn export(t: &TestAppliance, filter: &ExportFilter, format: ExportFormat) -> String {
    let mut out = Vec::new();
    readings::export(&mut t.conn(), filter, format, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Everything a person or a service can read back about `devices`' readings.
#[derive(Debug, PartialEq)]
struct Views {
    exports: Vec<String>,
    pages: Vec<Vec<(String, i64, i64)>>,
    latest: Vec<Vec<(u64, i64)>>,
    ranges: Vec<Vec<(u64, i64)>>,
    counts: Vec<(i64, Vec<i64>)>,
    charts: Vec<Vec<(i64, i64, u64, i64)>>,
    metrics: Vec<Vec<String>>,
}

fn bits(points: Vec<(f64, i64)>) -> Vec<(u64, i64)> {
    points
        .into_iter()
        .map(|(v, at)| (v.to_bits(), at))
        .collect()
}

fn views(
    t: &TestAppliance,
    sites: &[appliance::ids::SiteId],
    devices: &[DeviceId],
    start: i64,
) -> Views {
    let mut conn = t.conn();
    let mut filters = vec![ExportFilter::default()];
    for site in sites {
        filters.push(ExportFilter {
            site: Some(*site),
            ..Default::default()
        });
    }
    for device in devices {
        filters.push(ExportFilter {
            device: Some(*device),
            metric: Some("temperature_c".into()),
            since_us: Some(start + DAY_US / 3),
            until_us: Some(start + 2 * DAY_US),
            ..Default::default()
        });
    }
    let mut exports = Vec::new();
    for filter in &filters {
        exports.push(export(t, filter, ExportFormat::Csv));
        exports.push(export(t, filter, ExportFormat::Jsonl));
    }
    // Live-stream pages of 97 from the start, and a device's pages of 50 by id.
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = readings::page_after(&mut conn, &ExportFilter::default(), after, 97).unwrap();
        let Some((_, last)) = page.last() else { break };
        after = last.id;
        pages.push(page.iter().map(|(s, r)| (s.clone(), r.id, r.seq)).collect());
    }
    for device in devices {
        let mut after = None;
        loop {
            let page = readings::page(&mut conn, *device, None, None, None, after, 50).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            pages.push(
                page.iter()
                    .map(|r| (r.metric.clone(), r.id, r.seq))
                    .collect(),
            );
        }
    }
    let mut latest = Vec::new();
    let mut ranges = Vec::new();
    let mut counts = Vec::new();
    let mut charts = Vec::new();
    let mut metrics = Vec::new();
    for device in devices {
        for metric in ["temperature_c", "cycle_count"] {
            latest.push(bits(
                readings::latest_points(&mut conn, *device, metric, None, 5).unwrap(),
            ));
            latest.push(bits(
                readings::latest_points(&mut conn, *device, metric, Some(start + DAY_US), 300)
                    .unwrap(),
            ));
            latest.push(
                readings::latest_values(&mut conn, *device, metric, 3)
                    .unwrap()
                    .into_iter()
                    .map(|v| (v.to_bits(), 0))
                    .collect(),
            );
            ranges.push(bits(
                readings::points_since(&mut conn, *device, metric, start + DAY_US).unwrap(),
            ));
            let span = Span::new(start, start + 3 * DAY_US, 72).unwrap();
            charts.push(
                series::buckets_from(&mut conn, *device, metric, span, Source::Readings)
                    .unwrap()
                    .into_iter()
                    // The mean is summed in another order: compare it to 12 digits.
                    .map(|b| {
                        (
                            b.index,
                            b.count,
                            b.min.to_bits(),
                            (b.mean * 1e6).round() as i64,
                        )
                    })
                    .collect(),
            );
        }
        ranges.push(bits(
            readings::points_between(
                &mut conn,
                *device,
                None,
                (start + 1000, start + DAY_US),
                400,
            )
            .unwrap(),
        ));
        ranges.push(bits(
            readings::points_between(
                &mut conn,
                *device,
                Some("cycle_count"),
                (start, start + 3 * DAY_US),
                100_000,
            )
            .unwrap(),
        ));
        counts.push((
            readings::count_for(&mut conn, *device).unwrap(),
            readings::seqs_for(&mut conn, *device).unwrap(),
        ));
        metrics.push(series::metrics_of(&mut conn, *device).unwrap());
    }
    Views {
        exports,
        pages,
        latest,
        ranges,
        counts,
        charts,
        metrics,
    }
}

/// Two devices on two sites, three metrics, about 15,000 readings over three days, stored
/// in batches out of time order, some measured late, some sharing a moment.
fn fill(
    t: &TestAppliance,
) -> (
    Vec<appliance::ids::SiteId>,
    Vec<DeviceId>,
    i64,
    Vec<NewReading>,
) {
    let org = t.organisation("Plant");
    let sites = vec![t.site(org.id, "Hall 1").id, t.site(org.id, "Hall 2").id];
    let devices = vec![
        register_device(&t.app, sites[0], "MM-1", DeviceKind::Monitor).id,
        register_device(&t.app, sites[1], "DL-1", DeviceKind::DataLogger).id,
    ];
    let start = (now_us() - 10 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let received = now_us() - DAY_US;
    let mut stored = Vec::new();
    let mut conn = t.conn();
    for batch in 0..150_i64 {
        let rows: Vec<NewReading> = (0..100_i64)
            .map(|i| {
                let n = batch * 100 + i;
                let device = devices[(n % 2) as usize];
                let metric = ["temperature_c", "cycle_count", "mold.zone-2"][(n % 3) as usize];
                // Mostly in order, a reading every 17 s; every 50th measured a day late;
                // pairs share a moment.
                let at = start + (n / 2) * 17_000_000 - if n % 50 == 0 { DAY_US } else { 0 };
                reading(device, n, metric, value(n), at, received + n)
            })
            .collect();
        assert_eq!(readings::insert_new(&mut conn, &rows).unwrap(), 100);
        stored.extend(rows);
    }
    (sites, devices, start, stored)
}

fn every_view_is_unchanged_by_sealing_and_retries_are_still_stored_once(backend: Backend) {
    let t = TestAppliance::new(backend);
    let (sites, devices, start, stored) = fill(&t);
    let before = views(&t, &sites, &devices, start);
    assert!(before.exports[0].lines().count() == stored.len() + 1);

    // Nothing is sealed before it is rolled up.
    assert_eq!(blocks::seal_all(&mut t.conn(), now_us()).unwrap(), 0);
    rollups::catch_up(&mut t.conn()).unwrap();
    let sealed = blocks::seal_all(&mut t.conn(), now_us()).unwrap();
    // Everything but the newest reading, which keeps ids growing.
    assert_eq!(sealed as usize, stored.len() - 1);
    assert_eq!(blocks::count(&mut t.conn(), None).unwrap(), sealed as i64);
    assert_eq!(
        blocks::seal_all(&mut t.conn(), now_us()).unwrap(),
        0,
        "nothing left"
    );

    let after = views(&t, &sites, &devices, start);
    assert_eq!(after.exports, before.exports, "exports");
    assert_eq!(after.pages, before.pages, "pages");
    assert_eq!(after.latest, before.latest, "latest values");
    assert_eq!(after.ranges, before.ranges, "ranges");
    assert_eq!(after.counts, before.counts, "counts and sequence numbers");
    assert_eq!(after.charts, before.charts, "chart buckets");
    assert_eq!(after.metrics, before.metrics, "metrics");

    // Retried batches, sealed or not, store nothing; new sequence numbers, above or in a
    // gap below the sealed ones, are stored.
    let mut conn = t.conn();
    assert_eq!(readings::insert_new(&mut conn, &stored[..100]).unwrap(), 0);
    assert_eq!(
        readings::insert_new(&mut conn, &stored[14_900..]).unwrap(),
        0
    );
    let fresh = vec![
        reading(devices[0], 1_000_000, "temperature_c", 1.5, start, now_us()),
        reading(devices[0], 7, "temperature_c", 2.5, start, now_us()),
    ];
    // Seq 7 belongs to device 1 (odd numbers went to the second device): new for device 0.
    assert_eq!(readings::insert_new(&mut conn, &fresh).unwrap(), 2);
    assert_eq!(readings::insert_new(&mut conn, &fresh).unwrap(), 0);
    drop(conn);
    assert_eq!(
        readings::count_for(&mut t.conn(), devices[0]).unwrap(),
        before.counts[0].0 + 2
    );
}

fn pruning_takes_the_oldest_blocks_first_audited(backend: Backend) {
    let t = TestAppliance::new(backend);
    let (_, devices, _, stored) = fill(&t);
    rollups::catch_up(&mut t.conn()).unwrap();
    blocks::seal_all(&mut t.conn(), now_us()).unwrap();
    // Received a day ago: a retention of one day, checked a minute later, takes them all but
    // the newest, a chunk of blocks at a time, oldest first.
    let later = now_us() + 60_000_000;
    let mut pruned = 0;
    loop {
        let n = retention::prune_by_age(&t.app.audit, &test_actor(), 1, later).unwrap();
        if n == 0 {
            break;
        }
        let left = blocks::count(&mut t.conn(), None).unwrap();
        pruned += n;
        assert_eq!(left as usize + pruned, stored.len() - 1, "whole blocks go");
    }
    assert_eq!(pruned, stored.len() - 1);
    let total: i64 = devices
        .iter()
        .map(|d| readings::count_for(&mut t.conn(), *d).unwrap())
        .sum();
    assert_eq!(total, 1, "the newest reading stays");
    let mut deleted = 0;
    appliance::audit::export::for_each_record(&mut t.conn(), &Default::default(), |r| {
        if r.action == "readings.pruned" {
            let details: serde_json::Value = serde_json::from_str(&r.details).unwrap();
            deleted += details["deleted"].as_u64().unwrap();
        }
        Ok(true)
    })
    .unwrap();
    assert_eq!(deleted as usize, pruned, "every pruned reading is audited");

    // A block holding readings on both sides of the limit keeps only the younger ones.
    let logger = register_device(
        &t.app,
        t.site(t.organisation("Plant 2").id, "Hall").id,
        "DL-9",
        DeviceKind::DataLogger,
    )
    .id;
    let now = now_us();
    let rows: Vec<NewReading> = (0..2000_i64)
        .map(|i| {
            let received = if i % 2 == 0 {
                now - 3 * DAY_US
            } else {
                now - DAY_US / 24
            };
            reading(
                logger,
                i,
                "temperature_c",
                value(i),
                now - 4 * DAY_US + i,
                received,
            )
        })
        .collect();
    readings::insert_new(&mut t.conn(), &rows).unwrap();
    rollups::catch_up(&mut t.conn()).unwrap();
    assert_eq!(
        blocks::seal_all(&mut t.conn(), now).unwrap(),
        2000,
        "the reading left newest before, and all of these but the newest"
    );
    while retention::prune_by_age(&t.app.audit, &test_actor(), 2, now).unwrap() > 0 {}
    let kept = readings::seqs_for(&mut t.conn(), logger).unwrap();
    assert_eq!(
        kept,
        (0..2000).filter(|i| i % 2 == 1).collect::<Vec<_>>(),
        "the old half went, the young half stayed"
    );
}

/// `plantgate readings seal` on a store of 100 series, killed with SIGKILL once some blocks
/// are written: the export is what was acknowledged, byte for byte, and so it is after a
/// second run seals the rest.
fn a_seal_killed_part_way_loses_and_repeats_nothing(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let site = t.site(org.id, "Hall 1");
    let received = now_us() - DAY_US;
    let start = (received - 5 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let mut conn = t.conn();
    for d in 0..10 {
        let device = register_device(&t.app, site.id, &format!("MM-{d}"), DeviceKind::Monitor).id;
        for metric in 0..10 {
            let rows: Vec<NewReading> = (0..2500)
                .map(|i| {
                    let seq = metric * 10_000 + i;
                    reading(
                        device,
                        seq,
                        &format!("m{metric}"),
                        value(seq),
                        start + i * 10_000_000,
                        received,
                    )
                })
                .collect();
            readings::insert_new(&mut conn, &rows).unwrap();
        }
    }
    rollups::catch_up(&mut conn).unwrap();
    drop(conn);
    let acknowledged = export(&t, &ExportFilter::default(), ExportFormat::Csv);
    assert_eq!(acknowledged.lines().count(), 250_001);

    let mut seal = t.cli();
    seal.args(["readings", "seal"]).stdout(Stdio::null());
    let mut child = seal.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    // Killed once some blocks are written, well before all 200 are.
    loop {
        let sealed = blocks::count(&mut t.conn(), None).unwrap();
        if sealed >= 10 * blocks::BLOCK_MAX {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "sealing ended before it was killed"
        );
        assert!(Instant::now() < deadline, "sealing did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let part = blocks::count(&mut t.conn(), None).unwrap();
    assert!(
        part > 0 && (part as usize) < 250_000 - 1,
        "killed part way: {part} sealed"
    );
    assert_eq!(
        export(&t, &ExportFilter::default(), ExportFormat::Csv),
        acknowledged
    );

    let status = t
        .cli()
        .args(["readings", "seal"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(blocks::count(&mut t.conn(), None).unwrap(), 250_000 - 1);
    assert_eq!(
        export(&t, &ExportFilter::default(), ExportFormat::Csv),
        acknowledged
    );
}

/// The ingest's work beside a busy writer: one thread stores batches while another rolls
/// up and seals as the writer does and a third exports. No step fails for a lock (SQLite
/// refuses a write to a transaction whose snapshot another commit overtook, unless the
/// step takes the write lock first), every export is one consistent moment (no reading
/// twice, none fewer than the export before), and in the end every reading is exported
/// once.
fn sealing_beside_a_busy_writer_fails_no_step_and_exports_stay_consistent(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let site = t.site(org.id, "Hall 1");
    let device = register_device(&t.app, site.id, "MM-1", DeviceKind::Monitor).id;
    let start = (now_us() - 3 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let batches = 300_i64;
    let done = AtomicBool::new(false);
    let sealed_so_far = AtomicU64::new(0);
    let (sealed, exports) = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Done when this thread ends, by panic too, so that the others stop.
            struct Finished<'a>(&'a AtomicBool);
            impl Drop for Finished<'_> {
                fn drop(&mut self) {
                    self.0.store(true, SeqCst);
                }
            }
            let _finished = Finished(&done);
            let mut conn = t.conn();
            for b in 0..batches {
                // Halfway, until the sealer has sealed something: sealing then surely runs
                // while this writer still stores, however busy the machine.
                let deadline = Instant::now() + Duration::from_secs(300);
                while b == batches / 2 && sealed_so_far.load(SeqCst) == 0 {
                    assert!(Instant::now() < deadline, "the sealer sealed nothing");
                    std::thread::sleep(Duration::from_millis(1));
                }
                let rows: Vec<NewReading> = (0..50)
                    .map(|i| {
                        let n = b * 50 + i;
                        let metric = ["temperature_c", "cycle_count"][(n % 2) as usize];
                        reading(device, n, metric, value(n), start + n * 1_000_000, now_us())
                    })
                    .collect();
                assert_eq!(readings::insert_new(&mut conn, &rows).unwrap(), 50);
            }
        });
        let exporter = scope.spawn(|| {
            let mut counts = Vec::new();
            while !done.load(SeqCst) {
                let csv = export(&t, &ExportFilter::default(), ExportFormat::Csv);
                let seqs: Vec<&str> = csv
                    .lines()
                    .skip(1)
                    .map(|l| l.split(',').nth(1).unwrap())
                    .collect();
                let unique: std::collections::BTreeSet<&str> = seqs.iter().copied().collect();
                assert_eq!(unique.len(), seqs.len(), "a reading exported twice");
                counts.push(seqs.len());
            }
            counts
        });
        let mut conn = t.conn();
        while !done.load(SeqCst) {
            rollups::advance(&mut conn).unwrap();
            let sealed = blocks::seal_all(&mut conn, now_us()).unwrap();
            sealed_so_far.fetch_add(sealed, SeqCst);
        }
        (sealed_so_far.load(SeqCst), exporter.join().unwrap())
    });
    assert!(
        sealed > 0,
        "some readings were sealed while the writer stored"
    );
    assert!(
        exports.windows(2).all(|w| w[0] <= w[1]),
        "an export lost readings: {exports:?}"
    );
    let csv = export(&t, &ExportFilter::default(), ExportFormat::Csv);
    let mut seqs: Vec<i64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..batches * 50).collect::<Vec<_>>());
}

on_both_backends!(
    every_view_is_unchanged_by_sealing_and_retries_are_still_stored_once,
    sealing_beside_a_busy_writer_fails_no_step_and_exports_stay_consistent,
    pruning_takes_the_oldest_blocks_first_audited,
    a_seal_killed_part_way_loses_and_repeats_nothing,
);
