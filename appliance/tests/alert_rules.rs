//! Managing alert rules and devices in the store, on both backends: a rule for one kind of
//! device at a site, disabled and removed rules that raise nothing and clear what they
//! raised, a change that is audited with before and after, a device moved to another site
//! taking its alerts with it, and another organisation's sites, devices and rules that do
//! not exist for the caller.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};

use appliance::alerts::{
    self, Alert, AlertChange, AlertKind, AlertRule, Measure, RuleRequest, RuleScope,
};
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::readings::{self, NewReading};
use appliance::time::now_us;
use common::{Backend, TestAppliance, test_actor};

fn register(
    t: &TestAppliance,
    serial: &str,
    kind: DeviceKind,
    site: &appliance::models::Site,
) -> Device {
    Device::register(
        &t.app.audit,
        &test_actor(),
        &DeviceRequest {
            serial: serial.into(),
            kind,
            site: site.id,
            gateway: None,
            model: None,
        },
        now_us(),
    )
    .unwrap()
    .0
}

fn hot(scope: RuleScope) -> RuleRequest {
    RuleRequest {
        scope,
        name: "mold too hot".into(),
        kind: AlertKind::Above,
        metric: "mold_c".into(),
        threshold: 80.0,
        hysteresis: 2.0,
        consecutive: 1,
        silent_seconds: 0,
        notify_email: "Ops@Plant.example, shift@plant.example".into(),
        measure: Measure::Value,
        for_seconds: 0,
    }
}

/// Stores one reading and applies what the live evaluation decides; returns the changes.
fn feed(t: &TestAppliance, device: &Device, seq: i64, value: f64) -> Vec<AlertChange> {
    let mut conn = t.conn();
    readings::insert_new(
        &mut conn,
        &[NewReading {
            device_id: device.id,
            seq,
            metric: "mold_c".into(),
            value,
            measured_at_us: seq * 1_000_000,
            received_at_us: now_us(),
        }],
    )
    .unwrap();
    let touched = BTreeMap::from([(device.id, BTreeSet::from(["mold_c".to_owned()]))]);
    let changes = alerts::decide_for_readings(&mut conn, &touched).unwrap();
    alerts::apply(&t.app.audit, &test_actor(), &changes, now_us()).unwrap();
    changes
}

fn active(t: &TestAppliance, device: &Device) -> Vec<Alert> {
    Alert::list_for_device(&mut t.conn(), device.id)
        .unwrap()
        .into_iter()
        .filter(|a| a.cleared_at_us.is_none())
        .collect()
}

fn actions(t: &TestAppliance) -> Vec<String> {
    appliance::audit::export::page(
        &mut t.conn(),
        &appliance::audit::export::ExportFilter::default(),
        None,
        10_000,
    )
    .unwrap()
    .into_iter()
    .map(|r| r.action)
    .collect()
}

fn a_rule_lives_changes_pauses_and_goes_and_each_step_is_audited(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let hall = t.site(org.id, "Hall 1");
    let (actor, now) = (test_actor(), now_us());
    let monitor = register(&t, "MM-1", DeviceKind::Monitor, &hall);
    let logger = register(&t, "DL-1", DeviceKind::DataLogger, &hall);

    // For the hall's monitors only: the logger is not covered.
    let rule = AlertRule::create(
        &t.app.audit,
        &actor,
        org.id,
        &hot(RuleScope::SiteKind(hall.id, DeviceKind::Monitor)),
        now,
    )
    .unwrap();
    assert_eq!(rule.notify_email, "ops@plant.example, shift@plant.example");
    assert_eq!(
        rule.scope().unwrap(),
        RuleScope::SiteKind(hall.id, DeviceKind::Monitor)
    );
    assert!(rule.covers(&monitor) && !rule.covers(&logger));
    assert_eq!(feed(&t, &logger, 1, 95.0), []);
    assert_eq!(feed(&t, &monitor, 1, 95.0).len(), 1);
    assert_eq!(active(&t, &monitor).len(), 1);

    // Disabled: its alert is cleared and nothing raises it again until it is enabled.
    let disabled =
        AlertRule::set_enabled(&t.app.audit, &actor, org.id, rule.id, false, now).unwrap();
    assert!(disabled.disabled_at_us.is_some() && !disabled.is_live());
    assert_eq!(active(&t, &monitor), []);
    assert_eq!(feed(&t, &monitor, 2, 96.0), []);
    // Asked again, nothing changes and nothing more is recorded.
    AlertRule::set_enabled(&t.app.audit, &actor, org.id, rule.id, false, now).unwrap();
    AlertRule::set_enabled(&t.app.audit, &actor, org.id, rule.id, true, now).unwrap();
    assert_eq!(feed(&t, &monitor, 3, 97.0).len(), 1);

    // Changed to a higher threshold: the active alert is cleared, and 97 no longer raises.
    let mut higher = hot(RuleScope::Site(hall.id));
    higher.threshold = 100.0;
    let changed = AlertRule::update(&t.app.audit, &actor, org.id, rule.id, &higher, now).unwrap();
    assert_eq!(
        (changed.threshold, changed.device_kind.as_deref()),
        (100.0, None)
    );
    assert_eq!(active(&t, &monitor), []);
    assert_eq!(feed(&t, &monitor, 4, 97.0), []);
    assert_eq!(feed(&t, &logger, 2, 101.0).len(), 1);

    // Removed: gone from the list, its alert cleared, its history kept.
    AlertRule::remove(&t.app.audit, &actor, org.id, rule.id, now).unwrap();
    assert!(AlertRule::list(&mut t.conn()).unwrap().is_empty());
    assert_eq!(active(&t, &logger), []);
    assert_eq!(
        Alert::list_for_device(&mut t.conn(), logger.id)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(feed(&t, &logger, 3, 120.0), []);
    assert!(matches!(
        AlertRule::remove(&t.app.audit, &actor, org.id, rule.id, now),
        Err(appliance::Error::NotFound(_))
    ));

    let actions = actions(&t);
    for action in [
        "alert.rule.created",
        "alert.rule.disabled",
        "alert.rule.enabled",
        "alert.rule.changed",
        "alert.rule.removed",
    ] {
        assert_eq!(
            actions.iter().filter(|a| *a == action).count(),
            1,
            "{action} once in {actions:?}"
        );
    }
    // Raised by monitor twice and logger once; each cleared by a rule change.
    assert_eq!(actions.iter().filter(|a| *a == "alert.raised").count(), 3);
    assert_eq!(actions.iter().filter(|a| *a == "alert.cleared").count(), 3);
    // Each clearing emailed both recipients.
    let outbox = appliance::mail::due(&mut t.conn(), i64::MAX, 1000).unwrap();
    assert_eq!(
        outbox
            .iter()
            .filter(|m| m.subject.contains("cleared"))
            .count(),
        6,
        "{outbox:?}"
    );
}

fn bad_values_are_refused_with_the_field_named(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let hall = t.site(org.id, "Hall 1");
    let refused = |change: &dyn Fn(&mut RuleRequest)| {
        let mut request = hot(RuleScope::Site(hall.id));
        change(&mut request);
        match AlertRule::create(&t.app.audit, &test_actor(), org.id, &request, now_us()) {
            Err(appliance::Error::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    assert_eq!(refused(&|r| r.name = " ".into()), "name");
    assert_eq!(refused(&|r| r.metric = "Mold C".into()), "metric");
    assert_eq!(refused(&|r| r.threshold = f64::NAN), "threshold");
    assert_eq!(refused(&|r| r.hysteresis = -1.0), "hysteresis");
    assert_eq!(refused(&|r| r.consecutive = 0), "consecutive");
    assert_eq!(refused(&|r| r.for_seconds = 100_000), "for_seconds");
    assert_eq!(
        refused(&|r| r.notify_email = "ops@plant.example, nobody".into()),
        "notify_email"
    );
    assert_eq!(
        refused(&|r| {
            r.kind = AlertKind::Silent;
            r.silent_seconds = 0;
        }),
        "silent_seconds"
    );
    assert!(AlertRule::list(&mut t.conn()).unwrap().is_empty());
}

fn another_organisations_sites_devices_and_rules_are_not_found(backend: Backend) {
    let t = TestAppliance::new(backend);
    let (ours, theirs) = (t.organisation("Ours"), t.organisation("Theirs"));
    let (our_hall, their_hall) = (t.site(ours.id, "Hall 1"), t.site(theirs.id, "Hall 9"));
    let their_device = register(&t, "THEIRS-1", DeviceKind::Monitor, &their_hall);
    let (actor, now) = (test_actor(), now_us());
    for scope in [
        RuleScope::Site(their_hall.id),
        RuleScope::Device(their_device.id),
    ] {
        assert!(matches!(
            AlertRule::create(&t.app.audit, &actor, ours.id, &hot(scope), now),
            Err(appliance::Error::NotFound(_))
        ));
    }
    let theirs_rule = AlertRule::create(
        &t.app.audit,
        &actor,
        theirs.id,
        &hot(RuleScope::Site(their_hall.id)),
        now,
    )
    .unwrap();
    let mut conn = t.conn();
    assert!(AlertRule::find_in(&mut conn, ours.id, theirs_rule.id).is_err());
    assert!(
        AlertRule::update(
            &t.app.audit,
            &actor,
            ours.id,
            theirs_rule.id,
            &hot(RuleScope::Site(our_hall.id)),
            now
        )
        .is_err()
    );
    assert!(
        AlertRule::set_enabled(&t.app.audit, &actor, ours.id, theirs_rule.id, false, now).is_err()
    );
    assert!(AlertRule::remove(&t.app.audit, &actor, ours.id, theirs_rule.id, now).is_err());
    assert!(
        AlertRule::find_in(&mut conn, theirs.id, theirs_rule.id)
            .unwrap()
            .is_live()
    );
    // Nor can a device move to another organisation's site.
    assert!(matches!(
        appliance::relocation::move_device(&t.app.audit, &actor, "THEIRS-1", our_hall.id, now),
        Err(appliance::Error::NotFound("site"))
    ));
    assert!(Device::find_in(&mut conn, ours.id, "THEIRS-1").is_err());
}

fn a_moved_device_leaves_its_old_sites_alerts_behind(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let (hall1, hall2) = (t.site(org.id, "Hall 1"), t.site(org.id, "Hall 2"));
    let monitor = register(&t, "MM-7", DeviceKind::Monitor, &hall1);
    let (actor, now) = (test_actor(), now_us());
    let site_rule = AlertRule::create(
        &t.app.audit,
        &actor,
        org.id,
        &hot(RuleScope::Site(hall1.id)),
        now,
    )
    .unwrap();
    let mut own = hot(RuleScope::Device(monitor.id));
    own.name = "its own".into();
    let own_rule = AlertRule::create(&t.app.audit, &actor, org.id, &own, now).unwrap();
    assert_eq!(feed(&t, &monitor, 1, 90.0).len(), 2);

    let moved =
        appliance::relocation::move_device(&t.app.audit, &actor, "MM-7", hall2.id, now).unwrap();
    assert_eq!(moved.site_id, hall2.id);
    // The hall 1 rule no longer covers it: its alert is cleared. Its own rule still does.
    let still: Vec<_> = active(&t, &monitor)
        .into_iter()
        .map(|a| a.rule_id)
        .collect();
    assert_eq!(still, [own_rule.id]);
    assert_eq!(feed(&t, &monitor, 2, 95.0), []);
    assert!(!site_rule.covers(&moved));
    assert_eq!(
        actions(&t).iter().filter(|a| *a == "device.moved").count(),
        1
    );
}

fn a_replay_shows_what_a_rule_would_have_raised(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = t.organisation("Plant");
    let hall = t.site(org.id, "Hall 1");
    let monitor = register(&t, "MM-9", DeviceKind::Monitor, &hall);
    let rows: Vec<NewReading> = [70.0, 85.0, 90.0, 75.0, 60.0, 99.0]
        .iter()
        .enumerate()
        .map(|(i, value)| NewReading {
            device_id: monitor.id,
            seq: i as i64 + 1,
            metric: "mold_c".into(),
            value: *value,
            measured_at_us: (i as i64 + 1) * 60_000_000,
            received_at_us: now_us(),
        })
        .collect();
    readings::insert_new(&mut t.conn(), &rows).unwrap();
    let mut request = hot(RuleScope::Site(hall.id));
    request.consecutive = 2;
    let replay =
        alerts::replay::replay(&mut t.conn(), org.id, &request, (0, 3_600_000_000)).unwrap();
    assert_eq!(
        (replay.devices, replay.readings, replay.truncated),
        (1, 6, false)
    );
    let episodes: Vec<_> = replay
        .episodes
        .iter()
        .map(|e| {
            (
                e.serial.as_str(),
                e.raised_at_us,
                e.raised_value,
                e.cleared_at_us,
            )
        })
        .collect();
    // 85 then 90 in a row raise at minute 3; 75 (below 78) clears at minute 4; 99 alone does not.
    assert_eq!(
        episodes,
        [("MM-9", 180_000_000, Some(90.0), Some(240_000_000))]
    );
    // Nothing was stored or recorded by it.
    assert!(
        Alert::list_for_device(&mut t.conn(), monitor.id)
            .unwrap()
            .is_empty()
    );
    // It checks the rule as creating it would.
    request.metric = "Bad Name".into();
    assert!(matches!(
        alerts::replay::replay(&mut t.conn(), org.id, &request, (0, 1)),
        Err(appliance::Error::Invalid {
            field: "metric",
            ..
        })
    ));
}

on_both_backends!(
    a_rule_lives_changes_pauses_and_goes_and_each_step_is_audited,
    bad_values_are_refused_with_the_field_named,
    another_organisations_sites_devices_and_rules_are_not_found,
    a_moved_device_leaves_its_old_sites_alerts_behind,
    a_replay_shows_what_a_rule_would_have_raised,
);
