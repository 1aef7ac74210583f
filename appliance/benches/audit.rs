//! Audit log throughput on the embedded SQLite store.
//!
//! `cargo bench -p plantgate-appliance --bench audit` prints append rates (one writer and
//! four, batched and one record per transaction) and the `audit verify` rate over 1,000,000
//! records. Under `cargo test` the same code runs on small numbers, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::time::Instant;

use appliance::audit::verify::verify;
use appliance::config::Config;
use appliance::keys::{SigningKey, VerifyingKey};
use appliance::{Actor, Appliance, AuditEvent};

const BATCH: usize = 1000;
const WRITERS: usize = 4;

struct Sizes {
    batched: usize,
    single: usize,
    verify: usize,
}

fn events(n: usize, writer: usize) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| {
            AuditEvent::new(Actor::Device(format!("MM-{writer}-{:04}", i % 500)), "telemetry.alert.raised")
                .source(format!("10.20.{}.{}", writer, i % 250))
                .target(format!("device:{}", i % 500))
                .details(serde_json::json!({ "metric": "temperature_c", "value": 81.5, "threshold": 80, "n": i }))
        })
        .collect()
}

fn rate(records: usize, started: Instant) -> (f64, f64) {
    let seconds = started.elapsed().as_secs_f64();
    (records as f64 / seconds, seconds)
}

#[allow(clippy::print_stdout)]
fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let sizes = if full {
        Sizes {
            batched: 200_000,
            single: 2_000,
            verify: 1_000_000,
        }
    } else {
        Sizes {
            batched: 4_000,
            single: 20,
            verify: 10_000,
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.prepare_data_dir().expect("data dir");
    SigningKey::generate(&config.keys_dir()).expect("key");
    let app = Appliance::create(config.clone(), &Actor::System("bench".into())).expect("create");
    println!(
        "audit benchmark on SQLite (WAL, synchronous=FULL) in {}",
        dir.path().display()
    );
    println!("{:<52} {:>12} {:>10}", "", "records/s", "seconds");

    let batches: Vec<Vec<AuditEvent>> = events(sizes.batched, 0)
        .chunks(BATCH)
        .map(<[_]>::to_vec)
        .collect();
    let started = Instant::now();
    for batch in batches {
        app.audit.record_all(batch).expect("append");
    }
    let (per_s, s) = rate(sizes.batched, started);
    println!(
        "{:<52} {per_s:>12.0} {s:>10.2}",
        format!("append, 1 writer, batches of {BATCH}")
    );

    let singles = events(sizes.single, 0);
    let started = Instant::now();
    for event in singles {
        app.audit.record(event).expect("append");
    }
    let (per_s, s) = rate(sizes.single, started);
    println!(
        "{:<52} {per_s:>12.0} {s:>10.2}",
        "append, 1 writer, 1 record per commit"
    );

    let started = Instant::now();
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let audit = app.audit.clone();
            let batches: Vec<Vec<AuditEvent>> = events(sizes.batched / WRITERS, writer + 1)
                .chunks(BATCH)
                .map(<[_]>::to_vec)
                .collect();
            scope.spawn(move || {
                for batch in batches {
                    audit.record_all(batch).expect("append");
                }
            });
        }
    });
    let (per_s, s) = rate(sizes.batched, started);
    println!(
        "{:<52} {per_s:>12.0} {s:>10.2}",
        format!("append, {WRITERS} writers, batches of {BATCH}")
    );

    let started = Instant::now();
    let per_writer = (sizes.single / WRITERS).max(1);
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let audit = app.audit.clone();
            let singles = events(per_writer, writer + 1);
            scope.spawn(move || {
                for event in singles {
                    audit.record(event).expect("append");
                }
            });
        }
    });
    let (per_s, s) = rate(per_writer * WRITERS, started);
    println!(
        "{:<52} {per_s:>12.0} {s:>10.2}",
        format!("append, {WRITERS} writers, 1 record per commit")
    );

    // Fill up to the verification size, in large batches, outside the timing.
    let mut conn = app.store.conn().expect("conn");
    let tail = {
        use diesel::prelude::*;
        appliance::schema::audit_log::table
            .count()
            .get_result::<i64>(&mut *conn)
            .expect("count") as usize
    };
    for batch in events(sizes.verify.saturating_sub(tail), 9).chunks(10_000) {
        app.audit.record_all(batch.to_vec()).expect("fill");
    }
    let key = VerifyingKey::load(&config.keys_dir()).expect("key");
    let head = app.audit.head_file().read().expect("head");
    let started = Instant::now();
    let report = verify(&mut conn, &key, head.as_ref()).expect("verify");
    let (per_s, s) = rate(report.records as usize, started);
    assert!(report.is_intact(), "{:?}", report.problem);
    println!(
        "{:<52} {per_s:>12.0} {s:>10.2}",
        format!("verify {} records", report.records)
    );

    let started = Instant::now();
    let exported = appliance::audit::export::export(
        &mut conn,
        &Default::default(),
        appliance::audit::ExportFormat::Jsonl,
        std::io::sink(),
    )
    .expect("export");
    let (per_s, s) = rate(exported as usize, started);
    println!(
        "{:<52} {per_s:>12.0} {s:>10.2}",
        format!("export {exported} records as JSONL")
    );
}
