//! The ingest service through real clients: curl over HTTPS, mosquitto_pub over MQTT/TLS,
//! a real `kill -9` (the rollups too), on SQLite and PostgreSQL.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use appliance::devices::{Device, DeviceKind};
use common::{Backend, TestIngest, batch, gzip};
use testkit::on_both_backends;

fn readings_posted_with_curl_are_stored_once_even_when_retried(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-0001", DeviceKind::Monitor, None);
    t.start();

    let body = batch(None, "temperature_c", 1, 50, 71.5);
    let (status, reply) = t.curl(&monitor.secret, body.as_bytes(), &[]);
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains(r#""stored":50"#), "{reply}");

    // The ack was "lost": the device sends the same batch again, gzip-compressed this time.
    let (status, reply) = t.curl(
        &monitor.secret,
        &gzip(body.as_bytes()),
        &["-H", "Content-Encoding: gzip"],
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains(r#""duplicates":50"#), "{reply}");
    assert_eq!(t.stored_seqs(&monitor.device), (1..=50).collect::<Vec<_>>());

    // State reported beside readings shows on the device.
    let state = r#"{"states":[{"firmware_version":"4.2.1","signal_dbm":-67}],"readings":[{"metric":"battery_pct","value":88,"ts":"2026-01-01T00:00:00Z","seq":51}]}"#;
    assert_eq!(t.curl(&monitor.secret, state.as_bytes(), &[]).0, 200);
    let device = Device::find_by_serial(&mut t.app.store.conn().unwrap(), "MM-0001")
        .unwrap()
        .unwrap();
    assert_eq!(device.firmware_version.as_deref(), Some("4.2.1"));
    assert_eq!(device.battery_pct, Some(88.0));
    assert_eq!(device.signal_dbm, Some(-67.0));
    assert!(device.last_seen_at_us.is_some());
}

fn a_gateway_posts_for_the_devices_behind_it_and_no_others(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let gateway = t.register("GW-1", DeviceKind::Gateway, None);
    let behind = t.register("MM-BEHIND", DeviceKind::Monitor, Some("GW-1"));
    let elsewhere = t.register("MM-ELSEWHERE", DeviceKind::Monitor, None);
    t.start();

    let (status, reply) = t.curl(
        &gateway.secret,
        batch(Some("MM-BEHIND"), "cycle_count", 1, 3, 10.0).as_bytes(),
        &[],
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(t.stored_count(&behind.device), 3);

    let (status, reply) = t.curl(
        &gateway.secret,
        batch(Some("MM-ELSEWHERE"), "cycle_count", 1, 3, 10.0).as_bytes(),
        &[],
    );
    assert_eq!(status, 403, "{reply}");
    assert!(reply.contains(r#""error":"device.forbidden""#), "{reply}");
    // A monitor cannot post for its gateway's other devices either.
    let (status, _) = t.curl(
        &elsewhere.secret,
        batch(Some("MM-BEHIND"), "cycle_count", 9, 1, 1.0).as_bytes(),
        &[],
    );
    assert_eq!(status, 403);
    assert_eq!(t.stored_count(&elsewhere.device), 0);
    assert_eq!(t.stored_count(&behind.device), 3);
}

fn bad_input_gets_a_4xx_with_a_reason_and_stores_nothing(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-0002", DeviceKind::Monitor, None);
    let other = t.register("MM-0003", DeviceKind::Monitor, None);
    t.start();
    let good = batch(None, "temperature_c", 1, 2, 20.0);
    let mut bomb_source = br#"{"readings":[],"pad":""#.to_vec();
    bomb_source.extend(std::iter::repeat_n(b' ', 4 << 20));
    let huge = batch(None, "temperature_c", 1, 3000, 20.0);
    let future = r#"{"readings":[{"metric":"temperature_c","value":1,"ts":"2099-01-01T00:00:00Z","seq":1}]}"#;
    // (what, body, extra curl arguments, expected status, expected error code)
    type Case<'a> = (&'a str, Vec<u8>, Vec<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong type",
            br#"{"readings":[{"metric":"temperature_c","value":"hot","ts":0,"seq":1}]}"#.to_vec(),
            vec![],
            400,
            "body.invalid_json",
        ),
        (
            "malformed JSON",
            b"{\"readings\":[".to_vec(),
            vec![],
            400,
            "body.invalid_json",
        ),
        (
            "invalid UTF-8",
            b"{\"readings\":[{\"metric\":\"\xff\xfe\"}]}".to_vec(),
            vec![],
            400,
            "body.invalid_utf8",
        ),
        (
            "bad metric name",
            br#"{"readings":[{"metric":"Temp C","value":1,"ts":"2026-01-01T00:00:00Z","seq":1}]}"#
                .to_vec(),
            vec![],
            422,
            "reading.invalid",
        ),
        (
            "future timestamp",
            future.as_bytes().to_vec(),
            vec![],
            422,
            "reading.invalid",
        ),
        (
            "body over the limit",
            huge.into_bytes(),
            vec![],
            413,
            "body.too_large",
        ),
        (
            // Sixty times the limit: answered with its reason, not a reset connection.
            "body far over the limit",
            batch(None, "temperature_c", 1, 40_000, 20.0).into_bytes(),
            vec![],
            413,
            "body.too_large",
        ),
        (
            "bad gzip",
            b"definitely not gzip".to_vec(),
            vec!["-H", "Content-Encoding: gzip"],
            400,
            "body.bad_gzip",
        ),
        (
            "gzip bomb",
            gzip(&bomb_source),
            vec!["-H", "Content-Encoding: gzip"],
            413,
            "body.too_large",
        ),
        (
            "not JSON",
            good.clone().into_bytes(),
            vec!["-H", "Content-Type: text/plain"],
            415,
            "body.bad_content_type",
        ),
        (
            "unknown device",
            batch(Some("NOPE-1"), "temperature_c", 1, 1, 1.0).into_bytes(),
            vec![],
            404,
            "device.unknown",
        ),
        (
            "another device",
            batch(Some("MM-0003"), "temperature_c", 1, 1, 1.0).into_bytes(),
            vec![],
            403,
            "device.forbidden",
        ),
    ];
    for (name, body, extra, status, code) in cases {
        let (got, reply) = t.curl(&monitor.secret, &body, &extra);
        assert_eq!(got, status, "{name}: {reply}");
        let reply: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|_| panic!("{name}: not JSON: {reply}"));
        assert_eq!(reply["error"], code, "{name}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    let (got, reply) = t.curl("pgd_not-a-real-secret", good.as_bytes(), &[]);
    assert_eq!(got, 401, "{reply}");
    assert!(reply.contains("auth.invalid_credential"), "{reply}");
    assert_eq!(t.stored_count(&monitor.device), 0);
    assert_eq!(t.stored_count(&other.device), 0);

    // The service is still up and takes the next good batch.
    assert_eq!(t.curl(&monitor.secret, good.as_bytes(), &[]).0, 200);
    assert_eq!(t.stored_count(&monitor.device), 2);
}

fn acknowledged_readings_survive_kill_9_exactly_once(backend: Backend) {
    const BATCHES: i64 = 40;
    const PER_BATCH: i64 = 25;
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-KILL", DeviceKind::Monitor, None);
    t.start();
    let t = Arc::new(Mutex::new(t));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let acked_batches = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    // The load generator: curl, batch after batch; a batch without a 200 is sent again. Each
    // start of the service listens on new ports: the generator follows `https_port`.
    let https_port = Arc::new(AtomicU16::new(t.lock().unwrap().https_port));
    let cert = t.lock().unwrap().cert();
    let sender = {
        let (acked, acked_batches, done, secret, https_port) = (
            acked.clone(),
            acked_batches.clone(),
            done.clone(),
            monitor.secret.clone(),
            https_port.clone(),
        );
        std::thread::spawn(move || {
            for b in 0..BATCHES {
                let first = b * PER_BATCH;
                let body = batch(None, "cycle_count", first, PER_BATCH, b as f64);
                // Sent again until it is acknowledged, however long a restart takes on a
                // busy machine (the test's guard ends a service that never comes back).
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(600);
                while std::time::Instant::now() < give_up {
                    let client = common::Curl {
                        port: https_port.load(Ordering::SeqCst),
                        cert: cert.clone(),
                    };
                    let (status, _) = client.post(&secret, body.as_bytes());
                    if status == 200 {
                        acked.lock().unwrap().extend(first..first + PER_BATCH);
                        acked_batches.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    for round in 1..=3 {
        while acked_batches.load(Ordering::SeqCst) < round * 8 && !done.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut guard = t.lock().unwrap();
        guard.kill9();
        guard.start();
        https_port.store(guard.https_port, Ordering::SeqCst);
    }
    sender.join().unwrap();
    let t = t.lock().unwrap();
    let acked = acked.lock().unwrap();
    assert_eq!(
        acked.len() as i64,
        BATCHES * PER_BATCH,
        "the load generator gave up on a batch"
    );
    let stored = t.stored_seqs(&monitor.device);
    let unique: BTreeSet<i64> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "a reading was stored twice");
    let missing: Vec<_> = acked.difference(&unique).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged readings lost: {missing:?}"
    );

    // The rollups, stepped each second by the ingest across the kills, count each stored
    // reading once.
    let mut conn = t.app.store.conn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while appliance::rollups::rolled_through(&mut conn).unwrap()
        < appliance::readings::last_id(&mut conn).unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollups never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Hours: these readings were measured in January, past the keeping of minute rollups.
    let hours = appliance::rollups::list(
        &mut conn,
        monitor.device.id,
        Some("cycle_count"),
        appliance::rollups::HOUR_US,
    )
    .unwrap();
    assert_eq!(
        hours.iter().map(|h| h.count).sum::<i64>(),
        stored.len() as i64,
        "rolled up once each"
    );
}

fn mqtt_publishes_are_stored_and_a_device_cannot_publish_as_another(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-MQTT", DeviceKind::Monitor, None);
    let victim = t.register("MM-VICTIM", DeviceKind::Monitor, None);
    t.start();

    let message = batch(None, "shock_g", 1, 3, 2.5);
    let out = t.mosquitto_pub(
        "MM-MQTT",
        &monitor.secret,
        "plantgate/MM-MQTT/readings",
        &message,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(t.stored_seqs(&monitor.device), vec![1, 2, 3]);
    // The same message again (a retry after a lost PUBACK) is stored once.
    let out = t.mosquitto_pub(
        "MM-MQTT",
        &monitor.secret,
        "plantgate/MM-MQTT/readings",
        &message,
    );
    assert!(out.status.success());
    assert_eq!(t.stored_count(&monitor.device), 3);

    // Another device's topic: no PUBACK, the connection is closed, nothing stored.
    let out = t.mosquitto_pub(
        "MM-MQTT",
        &monitor.secret,
        "plantgate/MM-VICTIM/readings",
        &batch(None, "shock_g", 1, 1, 9.0),
    );
    assert!(
        !out.status.success(),
        "a publish to another device's topic was acknowledged"
    );
    assert_eq!(t.stored_count(&victim.device), 0);
    // Posing as the other device with one's own secret is refused at CONNECT.
    let out = t.mosquitto_pub(
        "MM-VICTIM",
        &monitor.secret,
        "plantgate/MM-VICTIM/readings",
        &message,
    );
    assert!(!out.status.success());
    assert_eq!(t.stored_count(&victim.device), 0);

    let mut conn = t.app.store.conn().unwrap();
    use diesel::prelude::*;
    let denied: i64 = appliance::schema::audit_log::table
        .filter(
            appliance::schema::audit_log::action
                .eq_any(["device.publish.denied", "device.auth.failed"]),
        )
        .count()
        .get_result(&mut *conn)
        .unwrap();
    assert_eq!(denied, 2, "each refusal is audited");
}

on_both_backends!(
    readings_posted_with_curl_are_stored_once_even_when_retried,
    a_gateway_posts_for_the_devices_behind_it_and_no_others,
    bad_input_gets_a_4xx_with_a_reason_and_stores_nothing,
    acknowledged_readings_survive_kill_9_exactly_once,
    mqtt_publishes_are_stored_and_a_device_cannot_publish_as_another,
);

/// Only `plantgate init` creates the store: the ingest refuses to start on a missing one
/// (SQLite) or an empty database (PostgreSQL), and creates nothing.
#[test]
fn the_ingest_refuses_to_start_without_its_store() {
    for backend in [
        testkit::store::Backend::Sqlite,
        testkit::store::Backend::Postgres,
    ] {
        let w = testkit::store::WithoutStore::new(
            backend,
            "[ingest]\nhttps_listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\n",
        );
        w.assert_refused(
            std::process::Command::new(env!("CARGO_BIN_EXE_plantgate-ingest"))
                .env("PLANTGATE_CONFIG", &w.config_path),
        );
    }
}
