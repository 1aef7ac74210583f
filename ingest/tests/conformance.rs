//! What the ingest accepts is what it stores, through a real client (curl over HTTPS): every
//! member of a gzip body is stored and bytes after the last one refuse the body; readings
//! timestamped before `ingest.earliest_timestamp` (a clock never set, seconds sent as
//! milliseconds) and values no device can report are refused with the reason, and nothing
//! of a refused batch is stored. The decoder is the one MQTT uses.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use appliance::devices::{Device, DeviceKind};
use common::{TestIngest, gzip};
use testkit::store::Backend;

fn reading(metric: &str, value: f64, ts: serde_json::Value, seq: i64) -> serde_json::Value {
    serde_json::json!({ "metric": metric, "value": value, "ts": ts, "seq": seq })
}

#[test]
fn a_body_is_stored_whole_or_refused_with_the_reason() {
    let mut t = TestIngest::new(Backend::Sqlite);
    let monitor = t.register("MM-0001", DeviceKind::Monitor, None);
    t.start();
    let ts = |seq: i64| serde_json::json!(1_767_225_600_000_i64 + seq);

    // One JSON text cut in two, each half its own gzip member: both are inflated.
    let text = serde_json::json!({ "readings": [
        reading("cycle_count", 1.0, ts(1), 1),
        reading("cycle_count", 2.0, ts(2), 2),
    ]})
    .to_string();
    let (first, second) = text.split_at(text.len() / 2);
    let mut two_members = gzip(first.as_bytes());
    two_members.extend(gzip(second.as_bytes()));
    let (status, answer) = t.curl(
        &monitor.secret,
        &two_members,
        &["-H", "Content-Encoding: gzip"],
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""stored":2"#), "{answer}");
    assert_eq!(t.stored_seqs(&monitor.device), [1, 2]);

    // A member followed by bytes that are not one: refused, not half stored.
    let mut trailing = gzip(
        serde_json::json!({ "readings": [reading("cycle_count", 3.0, ts(3), 3)] })
            .to_string()
            .as_bytes(),
    );
    trailing.extend_from_slice(b"trailing garbage");
    let (status, answer) = t.curl(
        &monitor.secret,
        &trailing,
        &["-H", "Content-Encoding: gzip"],
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("body.bad_gzip"), "{answer}");

    let refusals = [
        (
            "the Unix epoch",
            serde_json::json!({ "readings": [reading("cycle_count", 4.0, serde_json::json!(0), 4)] }),
            "reading.invalid",
            "before 2000-01-01",
        ),
        (
            "1969",
            serde_json::json!({ "readings": [reading("cycle_count", 4.0, serde_json::json!(-86_400_000), 4)] }),
            "reading.invalid",
            "before 2000-01-01",
        ),
        (
            "year 1",
            serde_json::json!({ "readings": [reading("cycle_count", 4.0, serde_json::json!("0001-01-01T00:00:00Z"), 4)] }),
            "reading.invalid",
            "before 2000-01-01",
        ),
        (
            "seconds sent as milliseconds",
            serde_json::json!({ "readings": [reading("cycle_count", 4.0, serde_json::json!(1_767_225_600), 4)] }),
            "reading.invalid",
            "milliseconds",
        ),
        (
            "a battery at -50 %",
            serde_json::json!({ "readings": [reading("battery_pct", -50.0, ts(4), 4)] }),
            "reading.invalid",
            "battery_pct",
        ),
        (
            "a battery at 250 % in the state",
            serde_json::json!({ "states": [{ "battery_pct": 250 }] }),
            "state.invalid",
            "battery_pct",
        ),
        (
            "a signal of 1e300 dBm",
            serde_json::json!({ "states": [{ "signal_dbm": 1e300 }] }),
            "state.invalid",
            "signal_dbm",
        ),
    ];
    for (what, mut body, code, reason) in refusals {
        // A good reading beside the bad part: nothing of the batch may be stored.
        let good = reading("cycle_count", 5.0, ts(5), 5);
        match body.get_mut("readings") {
            Some(readings) => readings.as_array_mut().unwrap().insert(0, good),
            None => body["readings"] = serde_json::json!([good]),
        }
        let (status, answer) = t.curl(&monitor.secret, body.to_string().as_bytes(), &[]);
        assert_eq!(status, 422, "{what}: {answer}");
        assert!(
            answer.contains(code) && answer.contains(reason),
            "{what}: {answer}"
        );
    }
    assert_eq!(
        t.stored_seqs(&monitor.device),
        [1, 2],
        "a refused batch left readings"
    );
    let device = Device::find_by_serial(&mut t.app.store.conn().unwrap(), "MM-0001")
        .unwrap()
        .unwrap();
    assert_eq!(
        (device.battery_pct, device.signal_dbm),
        (None, None),
        "a refused state was kept"
    );
}
