//! The device registry and alerts in the store, on both backends: secrets that work once
//! issued and stop when revoked, gateways that speak only for their own devices, and alerts
//! that are never active twice.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};

use appliance::alerts::{self, AlertChange, AlertKind, AlertRule, Measure, RuleRequest, RuleScope};
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::models::Site;
use appliance::readings::{self, NewReading};
use appliance::time::now_us;
use common::{Backend, TestAppliance, test_actor};
use diesel::prelude::*;

fn site(t: &TestAppliance) -> Site {
    let org = t.organisation("Plant");
    t.site(org.id, "Hall 1")
}

fn request(serial: &str, kind: DeviceKind, site: &Site, gateway: Option<&str>) -> DeviceRequest {
    DeviceRequest {
        serial: serial.into(),
        kind,
        site: site.id,
        gateway: gateway.map(str::to_owned),
        model: None,
    }
}

fn a_secret_names_its_device_until_revoked_and_every_step_is_audited(backend: Backend) {
    let t = TestAppliance::new(backend);
    let site = site(&t);
    let actor = test_actor();
    let (device, secret) = Device::register(
        &t.app.audit,
        &actor,
        &request("MM-1", DeviceKind::Monitor, &site, None),
        now_us(),
    )
    .unwrap();
    let mut conn = t.conn();
    assert_eq!(
        Device::authenticate(&mut conn, secret.reveal())
            .unwrap()
            .map(|d| d.id),
        Some(device.id)
    );
    assert!(
        Device::authenticate(&mut conn, "pgd_guess")
            .unwrap()
            .is_none()
    );
    let again = Device::register(
        &t.app.audit,
        &actor,
        &request("MM-1", DeviceKind::Monitor, &site, None),
        now_us(),
    );
    assert!(
        matches!(again, Err(appliance::Error::Conflict(_))),
        "{again:?}"
    );

    let rotated = Device::rotate_secret(&t.app.audit, &actor, "MM-1").unwrap();
    assert!(
        Device::authenticate(&mut conn, secret.reveal())
            .unwrap()
            .is_none(),
        "old secret still works"
    );
    assert!(
        Device::authenticate(&mut conn, rotated.reveal())
            .unwrap()
            .is_some()
    );
    Device::revoke(&t.app.audit, &actor, "MM-1", now_us()).unwrap();
    assert!(
        Device::authenticate(&mut conn, rotated.reveal())
            .unwrap()
            .is_none(),
        "revoked secret still works"
    );

    let actions: Vec<String> = appliance::schema::audit_log::table
        .filter(appliance::schema::audit_log::action.like("device.%"))
        .order(appliance::schema::audit_log::seq)
        .select(appliance::schema::audit_log::action)
        .load(&mut *conn)
        .unwrap();
    assert_eq!(
        actions,
        [
            "device.enrolled",
            "device.credential.issued",
            "device.credential.rotated",
            "device.credential.revoked"
        ]
    );
    let details: Vec<String> = appliance::schema::audit_log::table
        .select(appliance::schema::audit_log::details)
        .load(&mut *conn)
        .unwrap();
    assert!(
        !details
            .iter()
            .any(|d| d.contains(secret.reveal()) || d.contains(rotated.reveal())),
        "a secret reached the audit log"
    );
}

fn a_gateway_speaks_only_for_devices_registered_behind_it(backend: Backend) {
    let t = TestAppliance::new(backend);
    let site = site(&t);
    let actor = test_actor();
    let (gateway, _) = Device::register(
        &t.app.audit,
        &actor,
        &request("GW-1", DeviceKind::Gateway, &site, None),
        now_us(),
    )
    .unwrap();
    let (behind, _) = Device::register(
        &t.app.audit,
        &actor,
        &request("MM-2", DeviceKind::Monitor, &site, Some("GW-1")),
        now_us(),
    )
    .unwrap();
    let (alone, _) = Device::register(
        &t.app.audit,
        &actor,
        &request("MM-3", DeviceKind::Monitor, &site, None),
        now_us(),
    )
    .unwrap();
    assert!(gateway.may_post_for(&behind));
    assert!(!gateway.may_post_for(&alone));
    assert!(!behind.may_post_for(&gateway));
    let not_a_gateway = Device::register(
        &t.app.audit,
        &actor,
        &request("MM-4", DeviceKind::Monitor, &site, Some("MM-3")),
        now_us(),
    );
    assert!(
        matches!(not_a_gateway, Err(appliance::Error::Invalid { .. })),
        "{not_a_gateway:?}"
    );
}

fn readings_are_stored_once_and_an_alert_is_never_active_twice(backend: Backend) {
    let t = TestAppliance::new(backend);
    let site = site(&t);
    let actor = test_actor();
    let (device, _) = Device::register(
        &t.app.audit,
        &actor,
        &request("MM-5", DeviceKind::Monitor, &site, None),
        now_us(),
    )
    .unwrap();
    let rows: Vec<NewReading> = (1..=3)
        .map(|seq| NewReading {
            device_id: device.id,
            seq,
            metric: "temperature_c".into(),
            value: 90.0,
            measured_at_us: seq,
            received_at_us: seq,
        })
        .collect();
    let mut conn = t.conn();
    assert_eq!(readings::insert_new(&mut conn, &rows).unwrap(), 3);
    assert_eq!(readings::insert_new(&mut conn, &rows).unwrap(), 0);
    assert_eq!(readings::count_for(&mut conn, device.id).unwrap(), 3);

    let rule = AlertRule::create(
        &t.app.audit,
        &actor,
        site.organisation_id,
        &RuleRequest {
            scope: RuleScope::Device(device.id),
            name: "hot".into(),
            kind: AlertKind::Above,
            metric: "temperature_c".into(),
            threshold: 80.0,
            hysteresis: 1.0,
            consecutive: 3,
            silent_seconds: 0,
            notify_email: String::new(),
            measure: Measure::Value,
            for_seconds: 0,
        },
        now_us(),
    )
    .unwrap();
    let touched = BTreeMap::from([(device.id, BTreeSet::from(["temperature_c".to_owned()]))]);
    let changes = alerts::decide_for_readings(&mut conn, &touched).unwrap();
    assert_eq!(
        changes,
        [AlertChange::Raise {
            rule: rule.id,
            device: device.id,
            value: Some(90.0)
        }]
    );
    // Two deciders saw the same thing; only one alert becomes active.
    assert_eq!(
        alerts::apply(&t.app.audit, &actor, &changes, now_us()).unwrap(),
        1
    );
    assert_eq!(
        alerts::apply(&t.app.audit, &actor, &changes, now_us()).unwrap(),
        0
    );
    assert!(
        alerts::decide_for_readings(&mut conn, &touched)
            .unwrap()
            .is_empty()
    );
}

fn rate_of_change_and_for_x_minutes_raise_only_when_they_hold(backend: Backend) {
    let t = TestAppliance::new(backend);
    let actor = test_actor();
    let site = site(&t);
    let register = |serial: &str| {
        Device::register(
            &t.app.audit,
            &actor,
            &request(serial, DeviceKind::Monitor, &site, None),
            now_us(),
        )
        .unwrap()
        .0
    };
    let (steady, dipping) = (register("MM-STEADY"), register("MM-DIP"));
    let rule = |name: &str, measure, for_seconds, threshold| RuleRequest {
        scope: RuleScope::Site(site.id),
        name: name.into(),
        kind: AlertKind::Above,
        metric: if measure == Measure::Rate {
            "heat_c"
        } else {
            "mold_c"
        }
        .into(),
        threshold,
        hysteresis: 0.0,
        consecutive: 1,
        silent_seconds: 0,
        notify_email: String::new(),
        measure,
        for_seconds,
    };
    let rising = AlertRule::create(
        &t.app.audit,
        &actor,
        site.organisation_id,
        &rule("rising fast", Measure::Rate, 0, 10.0),
        now_us(),
    )
    .unwrap();
    let hot = AlertRule::create(
        &t.app.audit,
        &actor,
        site.organisation_id,
        &rule("hot 5 min", Measure::Value, 300, 80.0),
        now_us(),
    )
    .unwrap();
    assert!(
        AlertRule::create(
            &t.app.audit,
            &actor,
            site.organisation_id,
            &RuleRequest {
                kind: AlertKind::Event,
                ..rule("bad", Measure::Rate, 0, 1.0)
            },
            now_us()
        )
        .is_err(),
        "a rate applies to thresholds only"
    );
    let mut conn = t.conn();
    let mut seq = 0;
    let mut feed = |device: &Device, metric: &str, points: &[(i64, f64)]| {
        let rows: Vec<NewReading> = points
            .iter()
            .map(|&(minute_s, value)| {
                seq += 1;
                NewReading {
                    device_id: device.id,
                    seq,
                    metric: metric.into(),
                    value,
                    measured_at_us: minute_s * 1_000_000,
                    received_at_us: 0,
                }
            })
            .collect();
        readings::insert_new(&mut conn, &rows).unwrap();
        let touched = BTreeMap::from([(device.id, BTreeSet::from([metric.to_owned()]))]);
        alerts::decide_for_readings(&mut conn, &touched).unwrap()
    };
    let raised = |rule: &AlertRule, device: &Device, value: f64| {
        vec![AlertChange::Raise {
            rule: rule.id,
            device: device.id,
            value: Some(value),
        }]
    };

    // 20 -> 25 in a minute is 5/min; 25 -> 45 is 20/min, above 10/min.
    assert!(feed(&steady, "heat_c", &[(0, 20.0), (60, 25.0)]).is_empty());
    assert_eq!(
        feed(&steady, "heat_c", &[(120, 45.0)]),
        raised(&rising, &steady, 20.0)
    );

    // Above 80 for 4 minutes is not yet 5 minutes; at 6 minutes it is.
    assert!(feed(&steady, "mold_c", &[(0, 85.0), (120, 90.0), (240, 88.0)]).is_empty());
    assert_eq!(
        feed(&steady, "mold_c", &[(360, 86.0)]),
        raised(&hot, &steady, 86.0)
    );
    // A dip inside the window restarts the clock.
    assert!(
        feed(
            &dipping,
            "mold_c",
            &[(0, 85.0), (120, 70.0), (240, 85.0), (400, 85.0)]
        )
        .is_empty()
    );
    assert_eq!(
        feed(&dipping, "mold_c", &[(560, 85.0)]),
        raised(&hot, &dipping, 85.0)
    );
}

/// Batches of every size from 0 to 130 (SQLite stores them in statements of 64, 32, ...,
/// 1 rows): each reading is stored once, a batch sent again stores nothing, and a batch
/// partly sent before stores only what is new.
fn batches_of_every_size_store_each_reading_once(backend: Backend) {
    let t = TestAppliance::new(backend);
    let site = site(&t);
    let (device, _) = Device::register(
        &t.app.audit,
        &test_actor(),
        &request("MM-B", DeviceKind::Monitor, &site, None),
        now_us(),
    )
    .unwrap();
    let reading = |seq: i64| NewReading {
        device_id: device.id,
        seq,
        metric: "cycle_count".into(),
        value: seq as f64,
        measured_at_us: seq,
        received_at_us: seq,
    };
    let mut conn = t.conn();
    let mut next = 1;
    for size in 0..=130 {
        let batch: Vec<NewReading> = (next..next + size).map(reading).collect();
        assert_eq!(
            readings::insert_new(&mut conn, &batch).unwrap(),
            size as usize,
            "size {size}"
        );
        assert_eq!(
            readings::insert_new(&mut conn, &batch).unwrap(),
            0,
            "size {size} again"
        );
        next += size;
    }
    // Half old, half new.
    let overlapping: Vec<NewReading> = (next - 50..next + 50).map(reading).collect();
    assert_eq!(readings::insert_new(&mut conn, &overlapping).unwrap(), 50);
    assert_eq!(
        readings::seqs_for(&mut conn, device.id).unwrap(),
        (1..next + 50).collect::<Vec<_>>()
    );
}

on_both_backends!(
    batches_of_every_size_store_each_reading_once,
    rate_of_change_and_for_x_minutes_raise_only_when_they_hold,
    a_secret_names_its_device_until_revoked_and_every_step_is_audited,
    a_gateway_speaks_only_for_devices_registered_behind_it,
    readings_are_stored_once_and_an_alert_is_never_active_twice,
);
