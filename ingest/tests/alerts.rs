//! Alerts end to end: readings through curl raise and clear a threshold alert, a silent
//! device raises "no data", and a real SMTP server (aiosmtpd, not written here) receives
//! exactly one email per event. The ingest queues the emails in the mail outbox and the
//! portal, running beside it as on the appliance, sends them.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::alerts::{Alert, AlertKind, AlertRule, RuleRequest, RuleScope};
use appliance::devices::DeviceKind;
use common::{Backend, TestIngest, actor};
use testkit::on_both_backends;

fn reading(seq: i64, value: f64) -> String {
    serde_json::json!({ "readings": [{ "metric": "temperature_c", "value": value, "ts": 1_767_225_600_000_i64 + seq, "seq": seq }] }).to_string()
}

fn a_hot_mold_emails_once_clears_with_hysteresis_and_silence_raises_no_data(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let smtp = t.mail_catcher();
    let monitor = t.register("MM-HOT", DeviceKind::Monitor, None);
    let quiet = t.register("MM-QUIET", DeviceKind::Monitor, None);
    let rule = |scope, name: &str, kind, silent_seconds| RuleRequest {
        scope,
        name: name.into(),
        kind,
        metric: "temperature_c".into(),
        threshold: 80.0,
        hysteresis: 2.0,
        consecutive: 2,
        silent_seconds,
        notify_email: "maintenance@plant.example".into(),
        measure: appliance::alerts::Measure::Value,
        for_seconds: 0,
    };
    let hot = AlertRule::create(
        &t.app.audit,
        &actor(),
        t.site.organisation_id,
        &rule(
            RuleScope::Site(t.site.id),
            "mold too hot",
            AlertKind::Above,
            0,
        ),
        appliance::time::now_us(),
    )
    .unwrap();
    AlertRule::create(
        &t.app.audit,
        &actor(),
        t.site.organisation_id,
        &rule(
            RuleScope::Device(quiet.device.id),
            "no data",
            AlertKind::Silent,
            2,
        ),
        appliance::time::now_us(),
    )
    .unwrap();
    t.start();
    t.start_portal();

    let post = |seq, value| {
        let (status, reply) = t.curl(&monitor.secret, reading(seq, value).as_bytes(), &[]);
        assert_eq!(status, 200, "{reply}");
    };
    post(1, 85.0); // one reading above: not yet "2 in a row"
    post(2, 90.0); // raised
    post(3, 95.0); // still the same alert
    post(4, 79.0); // below 80 but not below 80 - 2: stays raised
    smtp.wait_for_count("alert RAISED: mold too hot on MM-HOT", 1);
    post(5, 70.0); // cleared
    smtp.wait_for_count("alert cleared: mold too hot on MM-HOT", 1);
    smtp.wait_for_count("alert RAISED: no data on MM-QUIET", 1);

    assert_eq!(
        smtp.count("alert RAISED: mold too hot"),
        1,
        "duplicate alert email"
    );
    assert_eq!(smtp.count("alert cleared: mold too hot"), 1);
    let alerts =
        Alert::list_for_device(&mut t.app.store.conn().unwrap(), monitor.device.id).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].rule_id, hot.id);
    assert_eq!(alerts[0].raised_value, Some(90.0));
    assert_eq!(alerts[0].cleared_value, Some(70.0));
    assert!(smtp.text().contains("To: maintenance@plant.example"));
}

on_both_backends!(a_hot_mold_emails_once_clears_with_hysteresis_and_silence_raises_no_data);
