//! Rollups on both backends: every stored reading is counted once in its minute, hour and
//! day (retries, late readings and chunk boundaries included); a long chart drawn from
//! rollups matches the same chart summed from the readings, and still draws after the raw
//! readings are pruned; pruning never takes a reading not yet rolled up; minute rollups go
//! by age, audited, while hours and days stay.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::BTreeMap;

use appliance::devices::{Device, DeviceKind};
use appliance::readings::{self, NewReading};
use appliance::rollups::{self, DAY_US, HOUR_US, MINUTE_US, Rollup, WIDTHS};
use appliance::series::{self, Source, Span};
use appliance::time::now_us;
use appliance::{ids::DeviceId, retention};
use common::{Backend, TestAppliance, register_device, test_actor};

fn device(t: &TestAppliance, serial: &str) -> Device {
    let org = t.organisation(&format!("Plant of {serial}"));
    let site = t.site(org.id, "Hall 1");
    register_device(&t.app, site.id, serial, DeviceKind::Monitor)
}

fn reading(device: DeviceId, seq: i64, metric: &str, value: f64, at: i64) -> NewReading {
    NewReading {
        device_id: device,
        seq,
        metric: metric.into(),
        value,
        measured_at_us: at,
        received_at_us: now_us(),
    }
}

/// The rollup of `width` each reading falls in, summed here from the readings themselves:
/// the last value is the one measured latest, the later stored on a tie.
fn expected(stored: &[NewReading], width: i64) -> BTreeMap<(i64, String, i64), Rollup> {
    let mut rollups: BTreeMap<(i64, String, i64), Rollup> = BTreeMap::new();
    for r in stored {
        let start = r.measured_at_us.div_euclid(width) * width;
        let key = (r.device_id.0, r.metric.clone(), start);
        let entry = rollups.entry(key).or_insert(Rollup {
            device_id: r.device_id,
            metric: r.metric.clone(),
            width_us: width,
            bucket_start_us: start,
            count: 0,
            min: f64::MAX,
            max: f64::MIN,
            sum: 0.0,
            last_value: r.value,
            last_measured_at_us: r.measured_at_us,
        });
        entry.count += 1;
        entry.min = entry.min.min(r.value);
        entry.max = entry.max.max(r.value);
        entry.sum += r.value;
        if r.measured_at_us >= entry.last_measured_at_us {
            entry.last_value = r.value;
            entry.last_measured_at_us = r.measured_at_us;
        }
    }
    rollups
}

/// The details of each audit record of `action`.
fn audited(t: &TestAppliance, action: &str) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    appliance::audit::export::for_each_record(&mut t.conn(), &Default::default(), |r| {
        if r.action == action {
            found.push(serde_json::from_str(&r.details).unwrap());
        }
        Ok(true)
    })
    .unwrap();
    found
}

fn assert_rollups_match(t: &TestAppliance, devices: &[DeviceId], stored: &[NewReading]) {
    for width in WIDTHS {
        let want = expected(stored, width);
        let mut got = Vec::new();
        for device in devices {
            got.extend(rollups::list(&mut t.conn(), *device, None, width).unwrap());
        }
        assert_eq!(got.len(), want.len(), "buckets of width {width}");
        for (got, want) in got.iter().zip(want.values()) {
            // Sums are added in another order; everything else is exact.
            assert!(
                (got.sum - want.sum).abs() <= 1e-9 * want.sum.abs().max(1.0),
                "sum {got:?} against {want:?}"
            );
            assert_eq!(
                Rollup {
                    sum: want.sum,
                    ..got.clone()
                },
                want.clone(),
                "width {width}"
            );
        }
    }
}

/// A value that wanders, the same on every run.
fn value(i: i64) -> f64 {
    ((i * 7919) % 1000) as f64 / 10.0 - 20.0
}

fn every_reading_is_counted_once_in_its_minute_hour_and_day(backend: Backend) {
    let t = TestAppliance::new(backend);
    let (a, b) = (device(&t, "MM-1").id, device(&t, "MM-2").id);
    let start = 1_780_000_000_000_000;
    let mut stored = Vec::new();
    // 60,000 readings, more than one roll-up step holds, measured every 7 s over about
    // five days on two devices and two metrics, stored out of time order in batches of
    // 1,000 with a roll-up step now and then, so buckets fill across steps.
    let mut batch = Vec::new();
    for i in 0..60_000_i64 {
        let (device, metric) = if i % 3 == 0 {
            (b, "cycle_count")
        } else {
            (a, "mold_c")
        };
        let at = start + ((i * 37) % 60_000) * 7_000_000;
        batch.push(reading(device, i, metric, value(i), at));
        if batch.len() == 1000 {
            let mut conn = t.conn();
            assert_eq!(readings::insert_new(&mut conn, &batch).unwrap(), 1000);
            // A retried batch stores nothing and so counts nothing.
            assert_eq!(readings::insert_new(&mut conn, &batch).unwrap(), 0);
            stored.append(&mut batch);
            if i % 7_000 < 1000 {
                rollups::advance(&mut conn).unwrap();
            }
        }
    }
    rollups::catch_up(&mut t.conn()).unwrap();
    assert_rollups_match(&t, &[a, b], &stored);

    // A reading measured in an old, already rolled-up bucket joins it; one measured at the
    // same moment as that bucket's last reading becomes its last value.
    let late = vec![
        reading(a, 100_000, "mold_c", 555.0, start + 3 * 7_000_000 + 1),
        reading(a, 100_001, "mold_c", -55.0, start + 59_999 * 7_000_000),
    ];
    readings::insert_new(&mut t.conn(), &late).unwrap();
    assert!(!rollups::advance(&mut t.conn()).unwrap());
    stored.extend(late);
    assert_rollups_match(&t, &[a, b], &stored);

    // Nothing new: another step changes nothing.
    assert!(!rollups::advance(&mut t.conn()).unwrap());
    assert_rollups_match(&t, &[a, b], &stored);
    assert_eq!(
        rollups::rolled_through(&mut t.conn()).unwrap(),
        readings::last_id(&mut t.conn()).unwrap()
    );
}

fn long_spans_are_drawn_from_rollups_and_outlive_the_raw_readings(backend: Backend) {
    let t = TestAppliance::new(backend);
    let mold = device(&t, "MM-1");
    let now = now_us();
    // A reading every 2 hours for 480 days, ending today.
    let from = (now - 480 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let rows: Vec<NewReading> = (0..480 * 12)
        .map(|i| {
            reading(
                mold.id,
                i,
                "mold_c",
                value(i),
                from + i * 2 * HOUR_US + 60_000_000,
            )
        })
        .collect();
    readings::insert_new(&mut t.conn(), &rows).unwrap();

    // 480 days in 480 buckets: each a day, drawn from hourly rollups.
    let span = Span::new(from, from + 480 * DAY_US, 480).unwrap();
    assert_eq!(Source::for_span(span, now), Source::Rollups(HOUR_US));
    let raw =
        series::buckets_from(&mut t.conn(), mold.id, "mold_c", span, Source::Readings).unwrap();
    assert_eq!(raw.len(), 480);
    // Not rolled up yet: the rollups hold nothing, and nothing is pruned.
    assert!(
        series::buckets(&mut t.conn(), mold.id, "mold_c", span, now)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        retention::prune_by_age(&t.app.audit, &test_actor(), 1, now + 2 * DAY_US).unwrap(),
        0
    );

    rollups::catch_up(&mut t.conn()).unwrap();
    let drawn = series::buckets(&mut t.conn(), mold.id, "mold_c", span, now).unwrap();
    let same = |a: &[series::Bucket], b: &[series::Bucket]| {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_eq!(
                (a.index, a.count, a.min, a.max),
                (b.index, b.count, b.min, b.max)
            );
            assert!((a.mean - b.mean).abs() < 1e-9, "{a:?} against {b:?}");
        }
    };
    same(&drawn, &raw);

    // Every raw reading but the newest goes; the chart stays as it was, and the pruning is
    // audited.
    let mut pruned = 0;
    loop {
        let n = retention::prune_by_age(&t.app.audit, &test_actor(), 1, now + 2 * DAY_US).unwrap();
        if n == 0 {
            break;
        }
        pruned += n;
    }
    assert_eq!(pruned, rows.len() - 1);
    assert_eq!(readings::count_for(&mut t.conn(), mold.id).unwrap(), 1);
    same(
        &series::buckets(&mut t.conn(), mold.id, "mold_c", span, now).unwrap(),
        &raw,
    );
    let audited = audited(&t, "readings.pruned");
    assert!(audited.iter().all(|d| d["reason"] == "age"));
    let deleted: i64 = audited.iter().map(|d| d["deleted"].as_i64().unwrap()).sum();
    assert_eq!(deleted, pruned as i64);
}

fn minute_rollups_go_by_age_and_hours_and_days_stay(backend: Backend) {
    let t = TestAppliance::new(backend);
    let mold = device(&t, "MM-1");
    let now = now_us();
    // An hour 40 days ago and an hour yesterday, each within one day whatever the time now.
    let today = now.div_euclid(DAY_US) * DAY_US;
    let old = today - 40 * DAY_US + HOUR_US;
    let yesterday = today - DAY_US + HOUR_US;
    let rows: Vec<NewReading> = (0..120)
        .map(|i| {
            let at = if i < 60 { old } else { yesterday };
            reading(mold.id, i, "mold_c", value(i), at + (i % 60) * MINUTE_US)
        })
        .collect();
    readings::insert_new(&mut t.conn(), &rows).unwrap();
    rollups::catch_up(&mut t.conn()).unwrap();
    let minutes =
        |t: &TestAppliance| rollups::list(&mut t.conn(), mold.id, None, MINUTE_US).unwrap();
    assert_eq!(minutes(&t).len(), 120);
    let hours = rollups::list(&mut t.conn(), mold.id, None, HOUR_US).unwrap();

    assert_eq!(
        rollups::prune_minutes(&t.app.audit, &test_actor(), now).unwrap(),
        60
    );
    assert_eq!(
        rollups::prune_minutes(&t.app.audit, &test_actor(), now).unwrap(),
        0
    );
    assert!(minutes(&t).iter().all(|m| m.bucket_start_us >= yesterday));
    assert_eq!(minutes(&t).len(), 60);
    assert_eq!(
        rollups::list(&mut t.conn(), mold.id, None, HOUR_US).unwrap(),
        hours
    );
    assert_eq!(
        rollups::list(&mut t.conn(), mold.id, None, DAY_US)
            .unwrap()
            .len(),
        2
    );
    let audited = audited(&t, "rollups.pruned");
    assert_eq!(audited.len(), 1);
    assert_eq!(
        (audited[0]["width"].as_str(), audited[0]["deleted"].as_i64()),
        (Some("minute"), Some(60))
    );

    // A month that began 40 days ago is drawn from hours now; this month from minutes.
    let month = |from| Span::new(from, from + 30 * DAY_US, 480).unwrap();
    assert_eq!(Source::for_span(month(old), now), Source::Rollups(HOUR_US));
    assert_eq!(
        Source::for_span(month(now - 30 * DAY_US), now),
        Source::Rollups(MINUTE_US)
    );
    let week = Span::new(now - 7 * DAY_US, now, 480).unwrap();
    assert_eq!(Source::for_span(week, now), Source::Readings);
}

on_both_backends!(
    every_reading_is_counted_once_in_its_minute_hour_and_day,
    long_spans_are_drawn_from_rollups_and_outlive_the_raw_readings,
    minute_rollups_go_by_age_and_hours_and_days_stay,
);
