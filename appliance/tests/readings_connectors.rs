//! The `plantgate` CLI for stored readings and data connectors, on both backends: exports
//! that stream exactly what was asked for, neutralise spreadsheet formulas and are audited;
//! connectors whose secret is shown once, never stored in clear, and that can be removed.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::connectors::Connector;
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::models::Site;
use appliance::readings::{self, NewReading};
use appliance::schema::audit_log;
use common::{Backend, Cli, TestAppliance, stderr, stdout, test_actor};
use diesel::prelude::*;

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn device(t: &TestAppliance, serial: &str, site: &Site) -> Device {
    Device::register(
        &t.app.audit,
        &test_actor(),
        &DeviceRequest {
            serial: serial.into(),
            kind: DeviceKind::Monitor,
            site: site.id,
            gateway: None,
            model: None,
        },
        appliance::time::now_us(),
    )
    .unwrap()
    .0
}

fn store(t: &TestAppliance, device: &Device, metric: &str, seqs: std::ops::Range<i64>) {
    let rows: Vec<NewReading> = seqs
        .map(|seq| NewReading {
            device_id: device.id,
            seq,
            metric: metric.into(),
            value: seq as f64 - 0.5,
            measured_at_us: T0 + seq * 60_000_000,
            received_at_us: T0,
        })
        .collect();
    readings::insert_new(&mut t.conn(), &rows).unwrap();
}

fn last_action(t: &TestAppliance) -> (String, serde_json::Value) {
    let (action, details): (String, String) = audit_log::table
        .order(audit_log::seq.desc())
        .select((audit_log::action, audit_log::details))
        .first(&mut *t.conn())
        .unwrap();
    (action, serde_json::from_str(&details).unwrap())
}

fn readings_export_streams_what_was_asked_and_neutralises_formulas(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let hall1 = t.site(org.id, "Hall 1");
    let hall2 = t.site(org.id, "Hall 2");
    let hostile = device(&t, "=HYPERLINK(\"x\")", &hall1);
    let other = device(&t, "MM-2", &hall2);
    store(&t, &hostile, "temperature_c", 0..5000);
    store(&t, &other, "cycle_count", 0..10);

    let all = t
        .cli()
        .args(["readings", "export", "--site", &hall1.id.0.to_string()])
        .output()
        .unwrap();
    assert!(all.status.success(), "{}", stderr(&all));
    let csv = stdout(&all);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("device,seq,metric,value,measured_at,measured_at_us,received_at_us")
    );
    assert_eq!(lines.clone().count(), 5000, "no row cap, only hall 1");
    let first = lines.next().unwrap();
    assert!(first.starts_with("\"'=HYPERLINK"), "{first}");
    assert!(
        first.contains(",0,temperature_c,-0.5,2026-01-01T00:00:00"),
        "{first}"
    );
    assert_eq!(
        last_action(&t).0,
        "readings.exported",
        "the export is audited"
    );
    assert_eq!(last_action(&t).1["readings"], 5000);

    let window = t
        .cli()
        .args([
            "readings",
            "export",
            "--device",
            "MM-2",
            "--format",
            "jsonl",
            "--since",
            "2026-01-01T00:03:00Z",
            "--until",
            "2026-01-01T00:05:00Z",
        ])
        .output()
        .unwrap();
    let rows: Vec<serde_json::Value> = stdout(&window)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["device"], "MM-2");
    assert_eq!(rows[0]["seq"], 3);
    assert_eq!(rows[1]["value"], 3.5);
    let _ = other;

    let unknown = t
        .cli()
        .args(["readings", "export", "--device", "NOPE"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("device not found"),
        "{}",
        stderr(&unknown)
    );
}

fn connector_secret_is_shown_once_stored_sealed_and_removal_is_audited(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let hall = t.site(org.id, "Hall 1");
    let site = hall.id.0.to_string();

    let plain = t
        .cli()
        .args(["connector", "add", "--site", &site, "--name", "MES"])
        .args(["--url", "http://mes.plant.example/hook", "--readings"])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(
        stderr(&plain).contains("must be https"),
        "{}",
        stderr(&plain)
    );

    let added = t
        .cli()
        .args(["connector", "add", "--site", &site, "--name", "MES"])
        .args([
            "--url",
            "https://mes.plant.example/hook",
            "--readings",
            "--alerts",
        ])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", stderr(&added));
    let secret = stdout(&added).trim().to_owned();
    assert!(
        secret.starts_with("pgwh_") && secret.len() == 69,
        "{secret}"
    );

    let connector = Connector::list(&mut t.conn()).unwrap().remove(0);
    assert!(
        !connector
            .secret_sealed
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "the store holds the secret sealed, not in clear"
    );
    let key = appliance::sealing::SealingKey::load(&appliance::keyring::path(
        &t.app.config,
        appliance::keyring::Secret::ConnectorSealing,
    ))
    .unwrap();
    assert_eq!(key.open(&connector.secret_sealed).unwrap(), secret);
    let (action, details) = last_action(&t);
    assert_eq!(action, "connector.added");
    assert!(
        !details.to_string().contains(&secret),
        "never in the audit log"
    );

    let listed = t.cli().args(["connector", "list"]).output().unwrap();
    assert!(
        stdout(&listed).contains("readings+alerts"),
        "{}",
        stdout(&listed)
    );
    assert!(!stdout(&listed).contains(&secret));

    let removed = t
        .cli()
        .args(["connector", "remove", &connector.id.0.to_string()])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert_eq!(last_action(&t).0, "connector.removed");
    assert!(Connector::active(&mut t.conn()).unwrap().is_empty());
    let again = t
        .cli()
        .args(["connector", "remove", &connector.id.0.to_string()])
        .output()
        .unwrap();
    assert!(!again.status.success());
}

on_both_backends!(
    readings_export_streams_what_was_asked_and_neutralises_formulas,
    connector_secret_is_shown_once_stored_sealed_and_removal_is_audited,
);
