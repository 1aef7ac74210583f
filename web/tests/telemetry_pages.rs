//! Devices, alert rules and connectors from the portal's pages, in process over a real
//! store: each change an administrator makes takes effect in the store and the audit log,
//! each bad value is refused beside its field with nothing stored, and another
//! organisation's devices, rules and connectors are not found. (Who may change what is
//! `permissions.rs`; the journey in a real browser is `telemetry_browser.rs`.)
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use appliance::Actor;
use appliance::alerts::AlertRule;
use appliance::connectors::{self, Connector, ConnectorRequest, SealingKey};
use appliance::devices::Device;
use appliance::models::{Organisation, Role, Site};
use appliance::readings::{self, NewReading};
use appliance::time::now_us;
use common::in_process::InProcess;
use common::people::{organisation, person};
use common::{EMAIL, PASSWORD, count};
use testkit::store::Backend;

fn secret_in(page: &str) -> String {
    let start = page
        .find("id=\"device-secret\">")
        .expect("the secret is shown")
        + 19;
    page[start..].split('<').next().unwrap().to_owned()
}

#[actix_web::test]
async fn an_administrator_registers_rotates_moves_and_revokes_a_device() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 1000");
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    let org = organisation(&portal.app);
    let actor = Actor::System("test".into());
    let (audit, now) = (&portal.app.audit, now_us());
    let hall = Site::create(audit, &actor, org.id, "Hall 3", "", now).unwrap();
    let annex = Site::create(audit, &actor, org.id, "Annex", "", now).unwrap();
    let other = Organisation::create(audit, &actor, "Elsewhere", now).unwrap();
    let theirs = Site::create(audit, &actor, other.id, "Their hall", "", now).unwrap();
    let csrf = portal.csrf("admin").await;
    let hall_id = hall.id.0.to_string();

    // Refused beside its field, and nothing registered.
    for (field, value, error) in [
        ("serial", "has space", "serial-error"),
        ("kind", "toaster", "kind-error"),
        ("site", &theirs.id.0.to_string()[..], "site-error"),
    ] {
        let mut fields = vec![
            ("csrf", &csrf[..]),
            ("serial", "MM-1"),
            ("kind", "monitor"),
            ("site", &hall_id[..]),
        ];
        fields.retain(|(name, _)| *name != field);
        fields.push((field, value));
        let reply = portal.post(Some("admin"), "/devices", &fields).await;
        assert_eq!(reply.status, 422, "{field}: {}", reply.body);
        assert!(
            reply.body.contains(&format!("id=\"{error}\"")),
            "{field}: {}",
            reply.body
        );
    }
    assert!(
        Device::list(&mut portal.app.store.conn().unwrap())
            .unwrap()
            .is_empty()
    );

    // Registered: the secret is shown once, never cached, and names the device.
    let reply = portal
        .post(
            Some("admin"),
            "/devices",
            &[
                ("csrf", &csrf),
                ("serial", "MM-1"),
                ("kind", "monitor"),
                ("site", &hall_id),
                ("model", "mm-200"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let first = secret_in(&reply.body);
    let mut conn = portal.app.store.conn().unwrap();
    let device = Device::authenticate(&mut conn, &first)
        .unwrap()
        .expect("the shown secret works");
    assert_eq!(
        (
            device.serial.as_str(),
            device.site_id,
            device.model.as_deref()
        ),
        ("MM-1", hall.id, Some("mm-200"))
    );
    let page = portal
        .get(Some("admin"), &format!("/devices/{}", device.id.0))
        .await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(&first), "the secret is shown again");
    // The same serial again is refused as taken.
    let again = portal
        .post(
            Some("admin"),
            "/devices",
            &[
                ("csrf", &csrf),
                ("serial", "MM-1"),
                ("kind", "monitor"),
                ("site", &hall_id),
            ],
        )
        .await;
    assert_eq!(again.status, 422);
    assert!(again.body.contains("already exists"), "{}", again.body);

    // Rotated: the new secret works, the old one no longer.
    let reply = portal
        .post(
            Some("admin"),
            &format!("/devices/{}/rotate", device.id.0),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let second = secret_in(&reply.body);
    assert!(Device::authenticate(&mut conn, &first).unwrap().is_none());
    assert!(Device::authenticate(&mut conn, &second).unwrap().is_some());

    // Moved to the annex; not to another organisation's site.
    let moved = portal
        .post(
            Some("admin"),
            &format!("/devices/{}/move", device.id.0),
            &[("csrf", &csrf), ("site", &annex.id.0.to_string())],
        )
        .await;
    assert_eq!(moved.status, 303, "{}", moved.body);
    let refused = portal
        .post(
            Some("admin"),
            &format!("/devices/{}/move", device.id.0),
            &[("csrf", &csrf), ("site", &theirs.id.0.to_string())],
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("id=\"site-error\""),
        "{}",
        refused.body
    );
    assert_eq!(
        Device::find(&mut conn, device.id).unwrap().unwrap().site_id,
        annex.id
    );

    // Revoked: the secret stops working and the page says so.
    let reply = portal
        .post(
            Some("admin"),
            &format!("/devices/{}/revoke", device.id.0),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.status, 303);
    assert!(Device::authenticate(&mut conn, &second).unwrap().is_none());
    assert!(
        portal
            .get(Some("admin"), &format!("/devices/{}", device.id.0))
            .await
            .body
            .contains("(revoked)")
    );

    // Another organisation's device is not found, for reading or changing.
    let (their_device, _) = Device::register(
        audit,
        &actor,
        &appliance::devices::DeviceRequest {
            serial: "THEIRS-1".into(),
            kind: appliance::devices::DeviceKind::Monitor,
            site: theirs.id,
            gateway: None,
            model: None,
        },
        now,
    )
    .unwrap();
    let path = format!("/devices/{}", their_device.id.0);
    assert_eq!(portal.get(Some("admin"), &path).await.status, 404);
    for change in ["rotate", "revoke"] {
        let reply = portal
            .post(
                Some("admin"),
                &format!("{path}/{change}"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(reply.status, 404, "{change}");
    }
    assert!(
        !portal
            .get(Some("admin"), "/devices")
            .await
            .body
            .contains("THEIRS-1")
    );

    let actions = portal.actions();
    for (action, n) in [
        ("device.enrolled", 2),
        ("device.credential.rotated", 1),
        ("device.moved", 1),
        ("device.credential.revoked", 1),
    ] {
        assert_eq!(count(&actions, action), n, "{action}: {actions:?}");
    }
}

#[actix_web::test]
async fn an_administrator_tests_creates_changes_disables_and_removes_a_rule() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 1000");
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    let org = organisation(&portal.app);
    let actor = Actor::System("test".into());
    let (audit, now) = (&portal.app.audit, now_us());
    let hall = Site::create(audit, &actor, org.id, "Hall 3", "", now).unwrap();
    let hall_id = hall.id.0.to_string();
    let (device, _) = Device::register(
        audit,
        &actor,
        &appliance::devices::DeviceRequest {
            serial: "MM-7".into(),
            kind: appliance::devices::DeviceKind::Monitor,
            site: hall.id,
            gateway: None,
            model: None,
        },
        now,
    )
    .unwrap();
    // A day ago the mold ran hot for three readings.
    let day_ago = now - 24 * 3600 * 1_000_000;
    let rows: Vec<NewReading> = [70.0, 88.0, 90.0, 86.0, 72.0]
        .iter()
        .enumerate()
        .map(|(i, value)| NewReading {
            device_id: device.id,
            seq: i as i64 + 1,
            metric: "mold_c".into(),
            value: *value,
            measured_at_us: day_ago + i as i64 * 60_000_000,
            received_at_us: day_ago,
        })
        .collect();
    readings::insert_new(&mut portal.app.store.conn().unwrap(), &rows).unwrap();
    let csrf = portal.csrf("admin").await;
    let form = |threshold: &'static str, action: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("name", "Mold too hot".to_owned()),
            ("site", hall_id.clone()),
            ("device_kind", "monitor".to_owned()),
            ("kind", "above".to_owned()),
            ("metric", "mold_c".to_owned()),
            ("threshold", threshold.to_owned()),
            ("hysteresis", "2".to_owned()),
            ("consecutive", "2".to_owned()),
            ("notify_email", "shift@plant.example".to_owned()),
            ("action", action.to_owned()),
        ]
    };
    let post = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let portal = &portal;
        async move {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            portal.post(Some("admin"), path, &fields).await
        }
    };

    // A threshold that is not a number, and an address that is not one: refused beside
    // their fields, nothing stored.
    let reply = post("/alert-rules", form("hot", "create")).await;
    assert_eq!(reply.status, 422);
    assert!(
        reply.body.contains("id=\"threshold-error\""),
        "{}",
        reply.body
    );
    let mut bad_mail = form("80", "create");
    bad_mail[9].1 = "shift@plant.example, nobody".into();
    let reply = post("/alert-rules", bad_mail).await;
    assert!(
        reply.body.contains("id=\"notify_email-error\""),
        "{}",
        reply.body
    );
    assert!(
        AlertRule::list(&mut portal.app.store.conn().unwrap())
            .unwrap()
            .is_empty()
    );

    // Tested over the last week: one alert, raised at 90 (the second in a row above 80),
    // cleared at 72; and still nothing stored.
    let reply = post("/alert-rules", form("80", "test")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("would have raised 1 alert(s)"),
        "{}",
        reply.body
    );
    assert_eq!(reply.body.matches("class=\"episode\"").count(), 1);
    assert!(reply.body.contains("<td>90</td>"), "{}", reply.body);
    assert!(
        AlertRule::list(&mut portal.app.store.conn().unwrap())
            .unwrap()
            .is_empty()
    );

    // Created, then changed to a higher threshold, which would have raised nothing.
    let reply = post("/alert-rules", form("80", "create")).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let rule = AlertRule::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    assert_eq!(
        (rule.device_kind.as_deref(), rule.threshold),
        (Some("monitor"), 80.0)
    );
    let path: &'static str = Box::leak(format!("/alert-rules/{}", rule.id.0).into_boxed_str());
    let page = portal.get(Some("admin"), path).await;
    assert!(
        page.body.contains("every monitor at Hall 3"),
        "{}",
        page.body
    );
    let reply = post(path, form("95", "test")).await;
    assert!(
        reply.body.contains("would have raised 0 alert(s)"),
        "{}",
        reply.body
    );
    let reply = post(path, form("95", "save")).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let stored = AlertRule::find(&mut portal.app.store.conn().unwrap(), rule.id)
        .unwrap()
        .unwrap();
    assert_eq!(stored.threshold, 95.0);

    // Disabled, enabled, removed.
    for change in ["disable", "enable", "remove"] {
        let changed: &'static str = Box::leak(format!("{path}/{change}").into_boxed_str());
        let reply = post(changed, vec![("csrf", csrf.clone())]).await;
        assert_eq!(reply.status, 303, "{change}: {}", reply.body);
    }
    assert!(
        AlertRule::list(&mut portal.app.store.conn().unwrap())
            .unwrap()
            .is_empty()
    );
    assert_eq!(portal.get(Some("admin"), path).await.status, 404);

    let actions = portal.actions();
    for action in [
        "alert.rule.created",
        "alert.rule.changed",
        "alert.rule.disabled",
        "alert.rule.enabled",
        "alert.rule.removed",
    ] {
        assert_eq!(count(&actions, action), 1, "{action}: {actions:?}");
    }

    // Another organisation's administrator finds none of it.
    let other = Organisation::create(audit, &actor, "Elsewhere", now).unwrap();
    let stranger = person(&portal.app, &other, "Stan", Role::Admin);
    portal.login("stan", &stranger.email, PASSWORD).await;
    let theirs = AlertRule::create(
        audit,
        &actor,
        org.id,
        &appliance::alerts::RuleRequest {
            scope: appliance::alerts::RuleScope::Site(hall.id),
            name: "ours".into(),
            kind: appliance::alerts::AlertKind::Silent,
            metric: String::new(),
            threshold: 0.0,
            hysteresis: 0.0,
            consecutive: 1,
            silent_seconds: 600,
            notify_email: String::new(),
            measure: appliance::alerts::Measure::Value,
            for_seconds: 0,
        },
        now,
    )
    .unwrap();
    assert_eq!(
        portal
            .get(Some("stan"), &format!("/alert-rules/{}", theirs.id.0))
            .await
            .status,
        404
    );
    assert!(
        !portal
            .get(Some("stan"), "/alert-rules")
            .await
            .body
            .contains("ours")
    );
    let csrf = portal.csrf("stan").await;
    let reply = portal
        .post(
            Some("stan"),
            &format!("/alert-rules/{}/remove", theirs.id.0),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.status, 404);
}

#[actix_web::test]
async fn an_administrator_pauses_resumes_and_removes_a_connector_and_reads_its_log() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 1000");
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    let org = organisation(&portal.app);
    let actor = Actor::System("test".into());
    let (audit, now) = (&portal.app.audit, now_us());
    let hall = Site::create(audit, &actor, org.id, "Hall 3", "", now).unwrap();
    let key = SealingKey::load(&appliance::keyring::path(
        &portal.app.config,
        appliance::keyring::Secret::ConnectorSealing,
    ))
    .unwrap();
    let (connector, _) = Connector::add(
        audit,
        &actor,
        &key,
        &ConnectorRequest {
            site: hall.id,
            name: "Historian".into(),
            url: "https://historian.plant.example/in".into(),
            send_readings: false,
            send_alerts: true,
            ca_pem: None,
        },
        now,
    )
    .unwrap();
    let (device, _) = Device::register(
        audit,
        &actor,
        &appliance::devices::DeviceRequest {
            serial: "MM-3".into(),
            kind: appliance::devices::DeviceKind::Monitor,
            site: hall.id,
            gateway: None,
            model: None,
        },
        now,
    )
    .unwrap();
    // Two alerts owed to it.
    let mut conn = portal.app.store.conn().unwrap();
    for alert_id in [1, 2] {
        connectors::enqueue_alert(
            &mut conn,
            &connectors::AlertOut {
                state: "raised",
                alert_id,
                rule_id: 1,
                rule: "hot",
                kind: "above",
                metric: "mold_c",
                device: device.id,
                value: Some(91.0),
                at_us: now,
            },
        )
        .unwrap();
    }
    let path = format!("/connectors/{}", connector.id.0);
    let page = portal.get(Some("admin"), &path).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body.matches("class=\"delivery\"").count(),
        2,
        "{}",
        page.body
    );
    assert!(page.body.contains("2 owed"), "{}", page.body);
    assert!(
        portal
            .get(Some("admin"), "/connectors")
            .await
            .body
            .contains("Historian")
    );

    let csrf = portal.csrf("admin").await;
    let reply = portal
        .post(Some("admin"), &format!("{path}/pause"), &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, 303);
    assert!(
        portal
            .get(Some("admin"), &path)
            .await
            .body
            .contains("paused since")
    );
    // Paused: nothing is due to it, though it is still owed.
    assert!(connectors::due(&mut conn, now + 1).unwrap().is_empty());
    portal
        .post(Some("admin"), &format!("{path}/resume"), &[("csrf", &csrf)])
        .await;
    assert_eq!(connectors::due(&mut conn, now + 1).unwrap().len(), 1);
    portal
        .post(Some("admin"), &format!("{path}/remove"), &[("csrf", &csrf)])
        .await;
    let page = portal.get(Some("admin"), &path).await;
    assert!(page.body.contains("removed"), "{}", page.body);
    assert!(page.body.contains("given up"), "{}", page.body);
    assert!(!page.body.contains("id=\"pause-connector\""));

    let actions = portal.actions();
    for action in ["connector.paused", "connector.resumed", "connector.removed"] {
        assert_eq!(count(&actions, action), 1, "{action}: {actions:?}");
    }
}

#[actix_web::test]
async fn an_administrator_sets_the_telemetry_storage_limit_and_sees_how_long_it_lasts() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 1000");
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    let org = organisation(&portal.app);
    let actor = Actor::System("test".into());
    let now = now_us();
    let hall = Site::create(&portal.app.audit, &actor, org.id, "Hall 3", "", now).unwrap();
    let (device, _) = Device::register(
        &portal.app.audit,
        &actor,
        &appliance::devices::DeviceRequest {
            serial: "MM-1".into(),
            kind: appliance::devices::DeviceKind::Monitor,
            site: hall.id,
            gateway: None,
            model: None,
        },
        now,
    )
    .unwrap();
    // 100 readings two days ago, 300 in the last day.
    let rows: Vec<NewReading> = (0..400)
        .map(|i| {
            let at = if i < 100 {
                now - 2 * 86_400_000_000 + i
            } else {
                now - 3_600_000_000 + i
            };
            NewReading {
                device_id: device.id,
                seq: i + 1,
                metric: "cycle_count".into(),
                value: i as f64,
                measured_at_us: at,
                received_at_us: at,
            }
        })
        .collect();
    readings::insert_new(&mut portal.app.store.conn().unwrap(), &rows).unwrap();

    let page = portal.get(Some("admin"), "/settings").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"storage-used\""), "{}", page.body);
    assert!(
        page.body
            .contains("for about 400 readings; 300 arrived in the last 24 hours"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("id=\"storage-days\""),
        "no limit, no reckoning"
    );

    let csrf = portal.csrf("admin").await;
    let refused = portal
        .post(
            Some("admin"),
            "/settings/telemetry",
            &[("csrf", &csrf), ("budget_mib", "lots")],
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("id=\"budget_mib-error\""),
        "{}",
        refused.body
    );
    let mut conn = portal.app.store.conn().unwrap();
    assert_eq!(
        appliance::settings::telemetry_budget_mib(&mut conn, &portal.app.config).unwrap(),
        None
    );

    let saved = portal
        .post(
            Some("admin"),
            "/settings/telemetry",
            &[("csrf", &csrf), ("budget_mib", "500")],
        )
        .await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(
        saved.body.contains("id=\"storage-done\"") && saved.body.contains("value=\"500\""),
        "{}",
        saved.body
    );
    assert!(
        saved.body.contains("id=\"storage-days\">about "),
        "{}",
        saved.body
    );
    assert_eq!(
        appliance::settings::telemetry_budget_mib(&mut conn, &portal.app.config).unwrap(),
        Some(500)
    );
    portal
        .post(
            Some("admin"),
            "/settings/telemetry",
            &[("csrf", &csrf), ("budget_mib", "")],
        )
        .await;
    assert_eq!(
        appliance::settings::telemetry_budget_mib(&mut conn, &portal.app.config).unwrap(),
        None
    );
    assert_eq!(
        count(&portal.actions(), "settings.telemetry_budget.changed"),
        2
    );
}
