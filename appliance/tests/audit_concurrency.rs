//! Four processes appending at once for ten seconds leave one unbroken chain, and an
//! appender killed with SIGKILL loses nothing it acknowledged and leaves a log that verifies.
//!
//! The workers are this test binary re-executed with `--ignored --exact append_worker`, so
//! they are real, separate processes with their own pools, as the web, ingest, firewall
//! and updater services will be.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code: a failed expectation is a failed test

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::audit::verify::verify;
use appliance::config::Config;
use appliance::keys::VerifyingKey;
use appliance::{Actor, Appliance, AuditEvent};
use common::{Backend, Cli, TestAppliance, stdout};

const WORKERS: usize = 4;
const SECONDS: u64 = 10;

#[test]
#[ignore = "a worker process for concurrent_appends_leave_one_chain, not a test of its own"]
fn append_worker() {
    let Ok(config_path) = std::env::var("APPEND_WORKER_CONFIG") else {
        return;
    };
    let name = std::env::var("APPEND_WORKER_NAME").expect("worker name");
    let config = Config::load(Some(config_path.as_ref())).expect("config");
    let actor = Actor::System(name.clone());
    let app = Appliance::open(config, &actor).expect("open");
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let mut appended = 0usize;
    let mut round = 0usize;
    while Instant::now() < deadline {
        // Alternate single appends and small batches, as services do.
        let batch = 1 + round % 3;
        let events = (0..batch)
            .map(|i| {
                AuditEvent::new(actor.clone(), "test.concurrent.append")
                    .details(serde_json::json!({ "worker": name, "n": appended + i }))
            })
            .collect();
        app.audit.record_all(events).expect("append");
        appended += batch;
        round += 1;
    }
    println!("\nAPPENDED {appended}");
}

fn concurrent_appends_leave_one_chain(backend: Backend) {
    let t = TestAppliance::new(backend);
    let before = t.tail();
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--ignored",
                    "--exact",
                    "append_worker",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("APPEND_WORKER_CONFIG", &t.config_path)
                .env("APPEND_WORKER_NAME", format!("worker-{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut total = 0usize;
    for worker in workers {
        let output = worker.wait_with_output().expect("worker");
        let text = stdout(&output);
        assert!(
            output.status.success(),
            "worker failed: {text}{}",
            common::stderr(&output)
        );
        let appended: usize = text
            .lines()
            .find_map(|line| line.split("APPENDED ").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("worker printed no count: {text}"));
        assert!(appended > 0, "a worker appended nothing");
        total += appended;
    }

    // Every acknowledged append is in the log, exactly once, in one chain.
    assert_eq!(
        t.tail(),
        before + total as i64,
        "appends lost or duplicated"
    );
    let key = VerifyingKey::load(&t.app.config.keys_dir()).expect("key");
    let head = t.app.audit.head_file().read().expect("head");
    let report = verify(&mut t.conn(), &key, head.as_ref()).expect("verify");
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.tail_seq, before + total as i64);
    assert_eq!(
        report.head_seq,
        Some(report.tail_seq),
        "the signed head fell behind"
    );

    // The workers really interleaved: the writer changes many times along the chain.
    let mut writers: Vec<String> = Vec::new();
    {
        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        let ids: Vec<String> = audit_log
            .filter(seq.gt(before))
            .order(seq)
            .select(actor_id)
            .load(&mut t.conn())
            .expect("actors");
        for id in ids {
            if writers.last() != Some(&id) {
                writers.push(id);
            }
        }
    }
    assert!(
        writers.len() > 4 * WORKERS,
        "appends did not interleave: {} runs",
        writers.len()
    );

    let output = t
        .cli()
        .args(["audit", "verify"])
        .output()
        .expect("cli verify");
    assert!(output.status.success(), "{}", stdout(&output));
}

#[test]
#[ignore = "a worker process for a_killed_appender_loses_no_acknowledged_record"]
fn ack_worker() {
    let Ok(config_path) = std::env::var("ACK_WORKER_CONFIG") else {
        return;
    };
    let config = Config::load(Some(config_path.as_ref())).expect("config");
    let actor = Actor::System("ack-worker".into());
    let app = Appliance::open(config, &actor).expect("open");
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        let event = AuditEvent::new(actor.clone(), "test.durable.append")
            .details(serde_json::json!({ "n": n }));
        let seq = app.audit.record(event).expect("append");
        writeln!(out, "ACK {seq} {n}")
            .and_then(|()| out.flush())
            .expect("stdout");
    }
}

fn a_killed_appender_loses_no_acknowledged_record(backend: Backend) {
    let t = TestAppliance::new(backend);
    // Different kill points land in different phases of an append.
    for kill_after in [40, 97, 151] {
        let mut worker = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "ack_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ACK_WORKER_CONFIG", &t.config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker");
        let mut acked = Vec::new();
        let mut lines = BufReader::new(worker.stdout.take().expect("stdout")).lines();
        while acked.len() < kill_after {
            let Some(Ok(line)) = lines.next() else {
                panic!("worker stopped early")
            };
            if let Some(rest) = line.split("ACK ").nth(1) {
                let mut parts = rest
                    .split_whitespace()
                    .map(|p| p.parse::<i64>().expect("number"));
                acked.push((parts.next().expect("seq"), parts.next().expect("n")));
            }
        }
        worker.kill().expect("SIGKILL");
        worker.wait().expect("reap");

        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        for (acked_seq, n) in &acked {
            let stored: String = audit_log
                .filter(seq.eq(acked_seq))
                .select(details)
                .first(&mut t.conn())
                .unwrap_or_else(|err| panic!("acknowledged record {acked_seq} is gone: {err}"));
            assert_eq!(stored, format!("{{\"n\":{n}}}"));
        }
        let output = t
            .cli()
            .args(["audit", "verify"])
            .output()
            .expect("cli verify");
        assert!(
            output.status.success(),
            "after kill at {kill_after}: {}",
            stdout(&output)
        );
    }
}

on_both_backends!(
    concurrent_appends_leave_one_chain,
    a_killed_appender_loses_no_acknowledged_record
);
