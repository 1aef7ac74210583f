//! Data connectors end to end: readings posted with curl and an alert they raise reach a
//! real HTTPS receiver (Python's http.server over TLS, checking the HMAC signature as a
//! customer would), in order, even across the receiver being down for 30 s and
//! `plantgate-ingest` being killed with SIGKILL meanwhile.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance::alerts::{AlertKind, AlertRule, Measure, RuleRequest, RuleScope};
use appliance::connectors::{self, Connector, ConnectorRequest, SealingKey};
use appliance::devices::DeviceKind;
use appliance::schema::audit_log;
use common::{Backend, TestIngest, actor, free_port};
use diesel::prelude::*;

struct Receiver {
    child: Child,
}

impl Receiver {
    fn start(port: u16, cert: &Path, key: &Path, secret: &str, out: &Path) -> Receiver {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/webhook_receiver.py");
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .args([cert, key])
            .arg(secret)
            .arg(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the Python receiver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver { child }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn received(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The (device, seq) of every reading received, in order of arrival.
fn reading_seqs(records: &[serde_json::Value]) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r["event"] == "readings")
        .flat_map(|r| r["body"]["readings"].as_array().unwrap().clone())
        .map(|reading| reading["seq"].as_i64().unwrap())
        .collect()
}

fn wait_until(what: &str, out: &Path, done: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records = received(out);
        if done(&records) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; the receiver got: {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn post(t: &TestIngest, secret: &str, seq: i64, value: f64) {
    let body = serde_json::json!({ "readings": [{ "metric": "temperature_c", "value": value, "ts": 1_767_225_600_000_i64 + seq, "seq": seq }] });
    let (status, reply) = t.curl(secret, body.to_string().as_bytes(), &[]);
    assert_eq!(status, 200, "{reply}");
}

fn a_receiver_that_was_down_gets_every_event_signed_and_in_order(backend: Backend) {
    let mut t = TestIngest::new(backend);
    // Retries at 1, 2, 2, 2... s, so the test does not wait out a long backoff.
    let mut config = std::fs::read_to_string(&t.config_path).unwrap();
    config.push_str("[ingest.connectors]\nmax_backoff_seconds = 2\n");
    std::fs::write(&t.config_path, config).unwrap();

    let (cert_pem, key_pem) =
        appliance::tls::self_signed("localhost", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    let cert: PathBuf = t.dir.path().join("receiver.crt");
    let key: PathBuf = t.dir.path().join("receiver.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let out = t.dir.path().join("received.jsonl");
    let port = free_port();

    let sealing = SealingKey::load(&appliance::keyring::path(
        &t.app.config,
        appliance::keyring::Secret::ConnectorSealing,
    ))
    .unwrap();
    let (connector, secret) = Connector::add(
        &t.app.audit,
        &actor(),
        &sealing,
        &ConnectorRequest {
            site: t.site.id,
            name: "MES".into(),
            url: format!("https://127.0.0.1:{port}/plantgate"),
            send_readings: true,
            send_alerts: true,
            ca_pem: Some(String::from_utf8(cert_pem).unwrap()),
        },
    )
    .unwrap();
    let secret = secret.reveal().to_owned();
    let monitor = t.register("MM-HOOK", DeviceKind::Monitor, None);
    AlertRule::create(
        &t.app.audit,
        &actor(),
        &RuleRequest {
            scope: RuleScope::Site(t.site.id),
            name: "mold too hot".into(),
            kind: AlertKind::Above,
            metric: "temperature_c".into(),
            threshold: 80.0,
            hysteresis: 0.0,
            consecutive: 1,
            silent_seconds: 0,
            notify_email: String::new(),
            measure: Measure::Value,
            for_seconds: 0,
        },
    )
    .unwrap();

    let receiver = Receiver::start(port, &cert, &key, &secret, &out);
    t.start();
    for seq in 1..=3 {
        post(&t, &monitor.secret, seq, 20.0);
    }
    wait_until("readings 1-3 did not arrive", &out, |r| {
        reading_seqs(r) == [1, 2, 3]
    });

    drop(receiver);
    for seq in 4..=6 {
        post(&t, &monitor.secret, seq, 20.0);
    }
    post(&t, &monitor.secret, 7, 95.0); // raises the alert
    t.kill9(); // the outbox is in the store, not in the process
    t.start();
    std::thread::sleep(Duration::from_secs(30)); // down for 30 s, as a maintenance window might be
    let failures: i64 = audit_log::table
        .filter(audit_log::action.eq("connector.delivery.failed"))
        .count()
        .get_result(&mut *t.app.store.conn().unwrap())
        .unwrap();
    assert!(failures >= 2, "failed attempts are audited, got {failures}");

    let _receiver = Receiver::start(port, &cert, &key, &secret, &out);
    wait_until(
        "not everything arrived after the receiver came back",
        &out,
        |r| reading_seqs(r).len() >= 7 && r.iter().any(|x| x["event"] == "alert"),
    );
    let records = received(&out);
    assert!(
        records.iter().all(|r| r["ok"] == true),
        "every delivery carries a valid signature: {records:#?}"
    );
    assert_eq!(
        reading_seqs(&records),
        [1, 2, 3, 4, 5, 6, 7],
        "in order, once each"
    );
    let alert = records.iter().find(|r| r["event"] == "alert").unwrap();
    assert_eq!(alert["body"]["state"], "raised");
    assert_eq!(alert["body"]["device"], "MM-HOOK");
    assert_eq!(alert["body"]["rule"], "mold too hot");
    // The receiver records a delivery before it answers, and the sender marks it after.
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = connectors::deliveries(&mut t.app.store.conn().unwrap(), connector.id).unwrap();
        if log.iter().all(|d| d.delivered_at_us.is_some()) {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "not all marked delivered: {log:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        log.iter().any(|d| d.attempts > 1),
        "some were retried: {log:#?}"
    );
}

on_both_backends!(a_receiver_that_was_down_gets_every_event_signed_and_in_order);
