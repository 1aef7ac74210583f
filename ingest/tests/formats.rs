//! MQTT 5 with Debian's `mosquitto_pub -V mqttv5`, CBOR bodies with curl and with MQTT 5's
//! content-type property, and the retention job, against the real binary.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use appliance::devices::DeviceKind;
use appliance::readings::NewReading;
use common::{Backend, TestIngest};
use testkit::on_both_backends;

fn cbor(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("cbor");
    out
}

fn reading(metric: &str, value: f64, seq: i64) -> serde_json::Value {
    serde_json::json!({ "metric": metric, "value": value, "ts": 1_767_225_600_000_i64 + seq, "seq": seq })
}

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn mqtt5_publishes_json_and_cbor_and_refusals_carry_a_reason(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let mm1 = t.register("MM-1", DeviceKind::Monitor, None);
    let mm2 = t.register("MM-2", DeviceKind::Monitor, None);
    t.start();

    let json = serde_json::json!({ "readings": [reading("cycle_count", 18211.0, 1)] }).to_string();
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &mm1.secret,
        "plantgate/MM-1/readings",
        json.as_bytes(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));

    let body = cbor(
        &serde_json::json!({ "readings": [reading("temperature_c", 71.5, 2), reading("temperature_c", 72.0, 3)] }),
    );
    let cbor_type = ["-D", "publish", "content-type", "application/cbor"];
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &mm1.secret,
        "plantgate/MM-1/readings",
        &body,
        &cbor_type,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(t.stored_seqs(&mm1.device), [1, 2, 3]);

    // Another device's topic: a PUBACK "not authorized", then DISCONNECT; nothing stored.
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &mm1.secret,
        "plantgate/MM-2/readings",
        json.as_bytes(),
        &[],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.to_lowercase().contains("not authori"), "{said}");
    assert_eq!(t.stored_count(&mm2.device), 0);

    // A body that is not what its content type says: "payload format invalid".
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &mm1.secret,
        "plantgate/MM-1/readings",
        json.as_bytes(),
        &cbor_type,
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.to_lowercase().contains("payload format invalid"),
        "{said}"
    );
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &mm1.secret,
        "plantgate/MM-1/readings",
        json.as_bytes(),
        &["-D", "publish", "content-type", "text/csv"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(t.stored_seqs(&mm1.device), [1, 2, 3]);

    // A wrong secret gets CONNACK "bad user name or password" in MQTT 5 too.
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &mm2.secret,
        "plantgate/MM-1/readings",
        json.as_bytes(),
        &[],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.to_lowercase().contains("bad user"), "{said}");

    // MQTT 3.1.1 still works beside it.
    let v311 = serde_json::json!({ "readings": [reading("cycle_count", 18212.0, 4)] }).to_string();
    let out = t.mosquitto_pub("MM-1", &mm1.secret, "plantgate/MM-1/readings", &v311);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(t.stored_seqs(&mm1.device), [1, 2, 3, 4]);
}

fn cbor_bodies_over_https_with_curl_and_the_answer_negotiated(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let mm1 = t.register("MM-1", DeviceKind::Monitor, None);
    t.start();
    let body = cbor(&serde_json::json!({
        "readings": [reading("temperature_c", 71.5, 1), reading("cycle_count", 7.0, 2)],
        "states": [{ "firmware_version": "2.1.0", "battery_pct": 88 }],
    }));
    let (status, answer) = t.curl(
        &mm1.secret,
        &body,
        &["-H", "Content-Type: application/cbor"],
    );
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["stored"], 2);
    assert_eq!(t.stored_seqs(&mm1.device), [1, 2]);

    // Accept: application/cbor gets a CBOR answer; the same batch again is all duplicates.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(t.cert())
        .args(["-H", &format!("Authorization: Bearer {}", mm1.secret)])
        .args([
            "-H",
            "Content-Type: application/cbor",
            "-H",
            "Accept: application/cbor",
        ])
        .args(["-D", "-", "-o"])
        .arg(t.dir.path().join("answer.cbor"))
        .args(["--data-binary", "@-"])
        .arg(format!("https://127.0.0.1:{}/v1/readings", t.https_port))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&body)?;
            child.wait_with_output()
        })
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.contains("content-type: application/cbor"),
        "{headers}"
    );
    let answer: serde_json::Value =
        ciborium::de::from_reader(std::fs::File::open(t.dir.path().join("answer.cbor")).unwrap())
            .unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"accepted": 2, "stored": 0, "duplicates": 2})
    );

    // Gzip-compressed CBOR.
    let more = cbor(&serde_json::json!({ "readings": [reading("temperature_c", 70.0, 3)] }));
    let (status, answer) = t.curl(
        &mm1.secret,
        &common::gzip(&more),
        &[
            "-H",
            "Content-Type: application/cbor",
            "-H",
            "Content-Encoding: gzip",
        ],
    );
    assert_eq!(status, 200, "{answer}");

    // Bad CBOR, CBOR of the wrong shape, and a type nobody serves: a 4xx, nothing stored.
    for (bad, content_type, code, expect) in [
        (
            body[..body.len() - 4].to_vec(),
            "application/cbor",
            400,
            "body.invalid_cbor",
        ),
        (
            cbor(
                &serde_json::json!({"readings": [{"metric": "t", "value": "hot", "ts": 0, "seq": 9}]}),
            ),
            "application/cbor",
            400,
            "body.invalid_cbor",
        ),
        (
            cbor(&serde_json::json!({"readings": [reading("Temp C", 1.0, 9)]})),
            "application/cbor",
            422,
            "reading.invalid",
        ),
        (
            b"{\"readings\":[]}".to_vec(),
            "application/cbor",
            400,
            "body.invalid_cbor",
        ),
        (
            body.clone(),
            "application/xml",
            415,
            "body.bad_content_type",
        ),
    ] {
        let (status, answer) = t.curl(
            &mm1.secret,
            &bad,
            &["-H", &format!("Content-Type: {content_type}")],
        );
        assert_eq!(status, code, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"], expect, "{answer}");
    }
    assert_eq!(t.stored_seqs(&mm1.device), [1, 2, 3]);
}

fn readings_past_retention_are_pruned_and_the_pruning_is_audited(backend: Backend) {
    let mut t = TestIngest::new(backend);
    t.ingest_settings("retention_days = 30\nretention_check_seconds = 1");
    let mm1 = t.register("MM-1", DeviceKind::Monitor, None);
    let now = appliance::time::now_us();
    let day = 86_400_000_000_i64;
    // 25,000 readings received 40 days ago (more than one pruning chunk), 10 received 29 days ago.
    let rows: Vec<NewReading> = (1..=25_010)
        .map(|seq| NewReading {
            device_id: mm1.device.id,
            seq,
            metric: "cycle_count".into(),
            value: seq as f64,
            measured_at_us: now - 40 * day,
            received_at_us: if seq <= 25_000 {
                now - 40 * day
            } else {
                now - 29 * day
            },
        })
        .collect();
    appliance::readings::insert_new(&mut t.app.store.conn().unwrap(), &rows).unwrap();
    t.start();
    let body = common::batch(None, "cycle_count", 30_001, 5, 1.0);
    assert_eq!(t.curl(&mm1.secret, body.as_bytes(), &[]).0, 200);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while t.stored_count(&mm1.device) > 15 {
        assert!(
            std::time::Instant::now() < deadline,
            "old readings were not pruned"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let seqs = t.stored_seqs(&mm1.device);
    assert_eq!(seqs.len(), 15);
    assert!(
        seqs.iter().all(|s| *s > 25_000),
        "a reading within retention was deleted"
    );

    let mut pruned = 0;
    let mut conn = t.app.store.conn().unwrap();
    appliance::audit::export::for_each_record(&mut conn, &Default::default(), |r| {
        if r.action == "readings.pruned" {
            let details: serde_json::Value = serde_json::from_str(&r.details).unwrap();
            assert_eq!(details["retention_days"], 30);
            pruned += details["deleted"].as_i64().unwrap();
        }
        Ok(true)
    })
    .unwrap();
    assert_eq!(pruned, 25_000, "every deletion is audited");
}

/// The size limit an administrator sets in the portal: above it the oldest readings go
/// first, chunk by chunk, each chunk audited, until the store is within it; the newest stay,
/// and so do the rollups of what went.
#[test]
fn readings_over_the_size_limit_are_pruned_oldest_first_and_audited() {
    let mut t = TestIngest::new(Backend::Sqlite);
    t.ingest_settings("retention_check_seconds = 1");
    let mm1 = t.register("MM-1", DeviceKind::Monitor, None);
    let now = appliance::time::now_us();
    let rows: Vec<NewReading> = (1..=60_000)
        .map(|seq| NewReading {
            device_id: mm1.device.id,
            seq,
            metric: "cycle_count".into(),
            value: seq as f64,
            measured_at_us: now - 60_000_000 + seq,
            received_at_us: now - 60_000_000 + seq,
        })
        .collect();
    appliance::readings::insert_new(&mut t.app.store.conn().unwrap(), &rows).unwrap();
    let used = |t: &TestIngest| {
        appliance::retention::used_bytes(&mut t.app.store.conn().unwrap())
            .unwrap()
            .expect("a SQLite store")
    };
    let budget = 3 * 1024 * 1024;
    assert!(
        used(&t) > budget + 1024 * 1024,
        "the store starts over the limit: {}",
        used(&t)
    );
    // A size that is not one is refused, naming the field; nothing is set.
    let actor = common::actor();
    assert!(matches!(
        appliance::settings::set_telemetry_budget_mib(
            &t.app.audit,
            &actor,
            &t.app.config,
            "3 GB",
            now
        ),
        Err(appliance::Error::Invalid {
            field: "budget_mib",
            ..
        })
    ));
    appliance::settings::set_telemetry_budget_mib(&t.app.audit, &actor, &t.app.config, "3", now)
        .unwrap();
    t.start();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while used(&t) > budget {
        assert!(
            std::time::Instant::now() < deadline,
            "still {} bytes used",
            used(&t)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The newest stayed, and what went was the oldest, without a hole.
    let seqs = t.stored_seqs(&mm1.device);
    assert!(
        !seqs.is_empty() && seqs.len() < 60_000,
        "{} kept",
        seqs.len()
    );
    assert_eq!(*seqs.last().unwrap(), 60_000);
    let first = seqs[0];
    assert_eq!(seqs, (first..=60_000).collect::<Vec<_>>());
    // New readings are still taken.
    let body = common::batch(None, "cycle_count", 60_001, 5, 1.0);
    assert_eq!(t.curl(&mm1.secret, body.as_bytes(), &[]).0, 200);

    let (mut pruned, mut records) = (0, 0);
    let mut conn = t.app.store.conn().unwrap();
    appliance::audit::export::for_each_record(&mut conn, &Default::default(), |r| {
        if r.action == "readings.pruned" {
            let details: serde_json::Value = serde_json::from_str(&r.details).unwrap();
            assert_eq!(
                (details["reason"].as_str(), details["budget_bytes"].as_i64()),
                (Some("size"), Some(budget))
            );
            assert!(
                details["used_bytes"].as_i64().unwrap() > budget,
                "{details}"
            );
            pruned += details["deleted"].as_i64().unwrap();
            records += 1;
        }
        if r.action == "settings.telemetry_budget.changed" {
            let details: serde_json::Value = serde_json::from_str(&r.details).unwrap();
            assert_eq!(details["after_mib"], 3);
        }
        Ok(true)
    })
    .unwrap();
    assert_eq!(pruned, first - 1, "every deletion is audited");
    assert!(records >= 2, "chunk by chunk: {records}");

    // The rollups stay: the day still counts every reading, the pruned first one too.
    let days = appliance::rollups::list(
        &mut conn,
        mm1.device.id,
        Some("cycle_count"),
        appliance::rollups::DAY_US,
    )
    .unwrap();
    let counted: i64 = days.iter().map(|d| d.count).sum();
    assert!(counted == 60_000 || counted == 60_005, "{counted} counted");
    assert_eq!(days.iter().map(|d| d.min).fold(f64::MAX, f64::min), 1.0);
}

on_both_backends!(
    mqtt5_publishes_json_and_cbor_and_refusals_carry_a_reason,
    cbor_bodies_over_https_with_curl_and_the_answer_negotiated,
    readings_past_retention_are_pruned_and_the_pruning_is_audited,
);

#[test]
fn a_malformed_mqtt_5_connect_is_refused_and_the_service_keeps_serving() {
    let mut t = TestIngest::new(Backend::Sqlite);
    let mm1 = t.register("MM-1", DeviceKind::Monitor, None);
    t.start();
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", t.mqtt_port))
        .args(["-CAfile"])
        .arg(t.cert())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            // CONNECT, protocol level 5, whose property length runs past the packet.
            child.stdin.take().unwrap().write_all(&[
                0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0x7f, 0, 0,
            ])?;
            child.wait_with_output()
        })
        .expect("openssl s_client");
    assert!(
        out.stdout.is_empty(),
        "an answer to a malformed CONNECT: {:?}",
        out.stdout
    );
    let json = serde_json::json!({ "readings": [reading("cycle_count", 1.0, 1)] }).to_string();
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &mm1.secret,
        "plantgate/MM-1/readings",
        json.as_bytes(),
        &[],
    );
    assert!(
        out.status.success(),
        "the service fell over: {}",
        text(&out)
    );
}
