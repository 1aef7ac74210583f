//! Data connectors end to end: readings posted with curl and an alert they raise reach a
//! real HTTPS receiver (Python's http.server over TLS, checking the HMAC signature as a
//! customer would), in order, even across the receiver being down for 30 s and
//! `plantgate-ingest` being killed with SIGKILL meanwhile.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use appliance::alerts::{AlertKind, AlertRule, Measure, RuleRequest, RuleScope};
use appliance::connectors::{self, Connector, ConnectorRequest, SealingKey};
use appliance::devices::DeviceKind;
use appliance::schema::audit_log;
use common::{Backend, TestIngest, actor};
use diesel::prelude::*;
use testkit::on_both_backends;

/// The receiver's port, held by the test for its whole length, so that no other process
/// can take it while the receiver is down (a port found free by binding and releasing it
/// can be taken by anyone meanwhile, and a connect would then reach them).
struct Port {
    listener: TcpListener,
}

impl Port {
    fn new() -> Port {
        Port {
            listener: TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"),
        }
    }

    fn number(&self) -> u16 {
        self.listener.local_addr().expect("bound address").port()
    }
}

/// The real receiver, serving on the test's listening socket, given to it as its standard
/// input: it serves what is queued there as soon as it runs, so there is nothing to wait
/// for.
struct Receiver {
    child: Child,
}

impl Receiver {
    fn start(port: &Port, cert: &Path, key: &Path, secret: &str, out: &Path) -> Receiver {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/webhook_receiver.py");
        let listener = port.listener.try_clone().expect("dup the listening socket");
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([cert, key])
            .arg(secret)
            .arg(out)
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .spawn()
            .expect("start the Python receiver");
        Receiver { child }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The receiver down: while it lives, every connection to the port is accepted and closed
/// at once, as a receiver that has stopped refuses. (The port stays the test's, so the
/// kernel would otherwise queue the connections until a receiver came back.)
struct Down {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Down {
    fn start(port: &Port) -> Down {
        let listener = port.listener.try_clone().expect("dup the listening socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for connection in listener.incoming() {
                drop(connection);
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
        Down {
            port: port.number(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        // Raise the flag, then wake the blocking accept with a connection of our own.
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
    let port = Port::new();

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
            url: format!("https://127.0.0.1:{}/plantgate", port.number()),
            send_readings: true,
            send_alerts: true,
            ca_pem: Some(String::from_utf8(cert_pem).unwrap()),
        },
        appliance::time::now_us(),
    )
    .unwrap();
    let secret = secret.reveal().to_owned();
    let monitor = t.register("MM-HOOK", DeviceKind::Monitor, None);
    AlertRule::create(
        &t.app.audit,
        &actor(),
        t.site.organisation_id,
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
        appliance::time::now_us(),
    )
    .unwrap();

    let receiver = Receiver::start(&port, &cert, &key, &secret, &out);
    t.start();
    for seq in 1..=3 {
        post(&t, &monitor.secret, seq, 20.0);
    }
    wait_until("readings 1-3 did not arrive", &out, |r| {
        reading_seqs(r) == [1, 2, 3]
    });

    drop(receiver);
    let down = Down::start(&port);
    let down_since = Instant::now();
    for seq in 4..=6 {
        post(&t, &monitor.secret, seq, 20.0);
    }
    post(&t, &monitor.secret, 7, 95.0); // raises the alert
    t.kill9(); // the outbox is in the store, not in the process
    t.start();
    // Down for 30 s at least, as a maintenance window might be, and until the failed
    // attempts are seen in the audit log (they are retried, and each is audited).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let failures: i64 = audit_log::table
            .filter(audit_log::action.eq("connector.delivery.failed"))
            .count()
            .get_result(&mut *t.app.store.conn().unwrap())
            .unwrap();
        if failures >= 2 && down_since.elapsed() >= Duration::from_secs(30) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed attempts are audited, got {failures}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(down);

    let _receiver = Receiver::start(&port, &cert, &key, &secret, &out);
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
