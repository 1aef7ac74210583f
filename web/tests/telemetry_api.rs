//! The telemetry journey through the REST API with a token, against the real
//! `plantgate-web` and `plantgate-ingest` binaries: register a device (its secret returned
//! once), post readings with it, create a threshold rule, see the alert raised and cleared,
//! remove the rule. Bad input is refused naming the field; a viewer's token, even with the
//! write scopes, changes nothing; a token without the scope is refused.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use common::people::person;
use common::*;

use std::time::{Duration, Instant};

use appliance::models::{Organisation, Role, Site};
use appliance::time::now_us;
use serde_json::{Value, json};

fn call(
    portal: &Portal,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("{}/api/v1{path}", portal.origin());
    let mut args = vec!["-X", method, "-H", &auth];
    let text = body.map(Value::to_string);
    if let Some(text) = &text {
        args.extend([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            text,
        ]);
    }
    args.push(&url);
    let reply = portal.curl(None, &args);
    (
        reply.status,
        serde_json::from_str(&reply.body).unwrap_or(Value::Null),
    )
}

fn reading(seq: i64, value: f64) -> String {
    json!({ "readings": [{ "metric": "mold_c", "value": value, "seq": seq, "ts": now_us() / 1000 }] }).to_string()
}

#[test]
fn a_token_registers_a_device_sets_a_rule_and_follows_its_alert() {
    let portal = Portal::start(
        "api_requests_per_minute = 10000\n[ingest]\nhttps_listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\n",
    );
    portal.setup_admin();
    let ingest = portal.start_ingest();
    let org = Organisation::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let actor = appliance::Actor::System("test".into());
    let hall = Site::create(&portal.app.audit, &actor, org.id, "Hall 3", "", now_us()).unwrap();
    let (token, _) = portal.token(
        &[
            "devices:read",
            "devices:write",
            "alerts:read",
            "alerts:write",
        ],
        30,
        0,
    );

    // Bad input is refused naming the field, and registers nothing.
    for (body, field) in [
        (
            json!({ "serial": "has space", "kind": "monitor", "site": hall.id.0 }),
            "serial",
        ),
        (
            json!({ "serial": "MM-1", "kind": "toaster", "site": hall.id.0 }),
            "kind",
        ),
        (
            json!({ "serial": "MM-1", "kind": "monitor", "site": 999_999 }),
            "site",
        ),
    ] {
        let (status, answer) = call(&portal, &token, "POST", "/devices", Some(&body));
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{answer}"
        );
    }
    let (status, answer) = call(
        &portal,
        &token,
        "POST",
        "/devices",
        Some(&json!({ "serial": "MM-1", "kind": "monitor", "site": hall.id.0, "colour": "red" })),
    );
    assert_eq!(status, 400, "an unknown field: {answer}");
    assert_eq!(call(&portal, &token, "GET", "/devices", None).1, json!([]));

    // Registered: the secret comes back once.
    let (status, created) = call(
        &portal,
        &token,
        "POST",
        "/devices",
        Some(&json!({ "serial": "MM-1", "kind": "monitor", "site": hall.id.0 })),
    );
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(created["device"]["serial"], "MM-1");
    let (_, listed) = call(&portal, &token, "GET", "/devices", None);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is listed"
    );
    assert_eq!(ingest.post(&secret, &reading(1, 60.0)).0, 200);

    // A rule: a bad threshold is refused naming it; a good one is created.
    let rule = json!({ "name": "Mold too hot", "device": "MM-1", "kind": "above", "metric": "mold_c", "threshold": 80.0, "hysteresis": 2.0, "notify_email": "shift@plant.example" });
    let mut bad = rule.clone();
    bad["hysteresis"] = json!(-1.0);
    let (status, answer) = call(&portal, &token, "POST", "/alert-rules", Some(&bad));
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("hysteresis:"),
        "{answer}"
    );
    let (status, created) = call(&portal, &token, "POST", "/alert-rules", Some(&rule));
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["device"].as_str(), created["enabled"].as_bool()),
        (Some("MM-1"), Some(true))
    );
    let id = created["id"].as_i64().unwrap();

    // Raised, then cleared, as the API reports the device's alerts.
    let alerts_until = |want: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, alerts) = call(&portal, &token, "GET", "/alerts?device=MM-1", None);
            assert_eq!(status, 200, "{alerts}");
            if want(&alerts) {
                return alerts;
            }
            assert!(Instant::now() < deadline, "the alerts stayed {alerts}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(ingest.post(&secret, &reading(2, 91.5)).0, 200);
    let raised = alerts_until(&|a| a.as_array().is_some_and(|a| a.len() == 1));
    assert_eq!(
        (
            raised[0]["rule"].as_str(),
            raised[0]["raised_value"].as_f64()
        ),
        (Some("Mold too hot"), Some(91.5))
    );
    assert!(raised[0]["cleared_at"].is_null(), "{raised}");
    assert_eq!(ingest.post(&secret, &reading(3, 70.0)).0, 200);
    let cleared = alerts_until(&|a| !a[0]["cleared_at"].is_null());
    assert_eq!(cleared[0]["cleared_value"].as_f64(), Some(70.0));

    // Tested over the last day: the one alert it raised and cleared, nothing stored.
    let (status, test) = call(&portal, &token, "POST", "/alert-tests?days=1", Some(&rule));
    assert_eq!(status, 200, "{test}");
    assert_eq!(
        (test["devices"].as_i64(), test["readings"].as_i64()),
        (Some(1), Some(3)),
        "{test}"
    );
    let episodes = test["episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 1, "{test}");
    assert_eq!(
        (
            episodes[0]["raised_value"].as_f64(),
            episodes[0]["cleared_value"].as_f64()
        ),
        (Some(91.5), Some(70.0))
    );
    // Disabled and enabled.
    let (status, disabled) = call(
        &portal,
        &token,
        "POST",
        &format!("/alert-rules/{id}/disable"),
        None,
    );
    assert_eq!(
        (status, disabled["enabled"].as_bool()),
        (200, Some(false)),
        "{disabled}"
    );
    let (status, enabled) = call(
        &portal,
        &token,
        "POST",
        &format!("/alert-rules/{id}/enable"),
        None,
    );
    assert_eq!(
        (status, enabled["enabled"].as_bool()),
        (200, Some(true)),
        "{enabled}"
    );

    // A new secret: the old one stops working, the new one posts. Moved to another site,
    // not to another organisation's. Revoked: it posts nothing more.
    let (status, rotated) = call(&portal, &token, "POST", "/devices/MM-1/rotate", None);
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(ingest.post(&secret, &reading(4, 60.0)).0, 401);
    assert_eq!(ingest.post(&new_secret, &reading(4, 60.0)).0, 200);
    let annex = Site::create(&portal.app.audit, &actor, org.id, "Annex", "", now_us()).unwrap();
    let (status, moved) = call(
        &portal,
        &token,
        "POST",
        "/devices/MM-1/move",
        Some(&json!({ "site": annex.id.0 })),
    );
    assert_eq!(
        (status, moved["site_id"].as_i64()),
        (200, Some(annex.id.0)),
        "{moved}"
    );
    let elsewhere = Organisation::create(&portal.app.audit, &actor, "Elsewhere", now_us()).unwrap();
    let theirs = Site::create(
        &portal.app.audit,
        &actor,
        elsewhere.id,
        "Their hall",
        "",
        now_us(),
    )
    .unwrap();
    let (status, answer) = call(
        &portal,
        &token,
        "POST",
        "/devices/MM-1/move",
        Some(&json!({ "site": theirs.id.0 })),
    );
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().starts_with("site:"),
        "{answer}"
    );
    let (status, revoked) = call(&portal, &token, "POST", "/devices/MM-1/revoke", None);
    assert_eq!(
        (status, revoked["revoked"].as_bool()),
        (200, Some(true)),
        "{revoked}"
    );
    assert_eq!(ingest.post(&new_secret, &reading(5, 60.0)).0, 401);
    assert_eq!(
        call(&portal, &token, "POST", "/devices/NO-SUCH/rotate", None).0,
        404
    );

    // Changed, then removed.
    let mut higher = rule.clone();
    higher["threshold"] = json!(95.0);
    let (status, changed) = call(
        &portal,
        &token,
        "PUT",
        &format!("/alert-rules/{id}"),
        Some(&higher),
    );
    assert_eq!(
        (status, changed["threshold"].as_f64()),
        (200, Some(95.0)),
        "{changed}"
    );
    assert_eq!(
        call(
            &portal,
            &token,
            "DELETE",
            &format!("/alert-rules/{id}"),
            None
        )
        .0,
        204
    );
    assert_eq!(
        call(&portal, &token, "GET", "/alert-rules", None).1,
        json!([])
    );
    assert_eq!(
        call(
            &portal,
            &token,
            "DELETE",
            &format!("/alert-rules/{id}"),
            None
        )
        .0,
        404
    );

    // A viewer's token with every scope reads and changes nothing; a token without the
    // write scope is refused for the scope.
    let vera = person(&portal.app, &org, "Vera", Role::Viewer);
    let (viewer_token, _) = appliance::tokens::create(
        &portal.app.audit,
        &actor,
        &vera,
        "dashboards",
        &appliance::tokens::SCOPES.map(str::to_owned),
        30,
        now_us(),
    )
    .unwrap();
    let viewer_token = viewer_token.reveal().to_owned();
    assert_eq!(call(&portal, &viewer_token, "GET", "/devices", None).0, 200);
    for (method, path, body) in [
        (
            "POST",
            "/devices",
            Some(json!({ "serial": "MM-2", "kind": "monitor", "site": hall.id.0 })),
        ),
        ("POST", "/alert-rules", Some(rule.clone())),
        ("PUT", "/alert-rules/1", Some(rule.clone())),
        ("DELETE", "/alert-rules/1", None),
        ("POST", "/alert-rules/1/disable", None),
        ("POST", "/devices/MM-1/rotate", None),
        ("POST", "/devices/MM-1/revoke", None),
        ("POST", "/connectors/1/pause", None),
        ("DELETE", "/connectors/1", None),
    ] {
        let (status, answer) = call(&portal, &viewer_token, method, path, body.as_ref());
        assert_eq!(status, 403, "{method} {path} as a viewer: {answer}");
    }
    let (reader, _) = portal.token(&["devices:read"], 30, 0);
    let (status, answer) = call(
        &portal,
        &reader,
        "POST",
        "/devices",
        Some(&json!({ "serial": "MM-3", "kind": "monitor", "site": hall.id.0 })),
    );
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("auth.missing_scope")),
        "{answer}"
    );
    assert_eq!(
        call(&portal, &token, "GET", "/devices", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Connectors: listed with what they owe, paused, resumed, their log read, removed.
    let key = appliance::connectors::SealingKey::load(&appliance::keyring::path(
        &portal.app.config,
        appliance::keyring::Secret::ConnectorSealing,
    ))
    .unwrap();
    let (connector, _) = appliance::connectors::Connector::add(
        &portal.app.audit,
        &actor,
        &key,
        &appliance::connectors::ConnectorRequest {
            site: hall.id,
            name: "Historian".into(),
            url: "https://historian.plant.example/in".into(),
            send_readings: true,
            send_alerts: true,
            ca_pem: None,
        },
        now_us(),
    )
    .unwrap();
    let connector_path = format!("/connectors/{}", connector.id.0);
    let (status, listed) = call(&portal, &token, "GET", "/connectors", None);
    assert_eq!(
        status, 403,
        "connectors:read is a scope of its own: {listed}"
    );
    let (connectors_token, _) = portal.token(&["connectors:read", "connectors:write"], 30, 0);
    let (status, listed) = call(&portal, &connectors_token, "GET", "/connectors", None);
    assert_eq!(
        (
            status,
            listed[0]["name"].as_str(),
            listed[0]["state"].as_str()
        ),
        (200, Some("Historian"), Some("active")),
        "{listed}"
    );
    let (status, paused) = call(
        &portal,
        &connectors_token,
        "POST",
        &format!("{connector_path}/pause"),
        None,
    );
    assert_eq!(
        (status, paused["state"].as_str()),
        (200, Some("paused")),
        "{paused}"
    );
    let (status, resumed) = call(
        &portal,
        &connectors_token,
        "POST",
        &format!("{connector_path}/resume"),
        None,
    );
    assert_eq!(
        (status, resumed["state"].as_str()),
        (200, Some("active")),
        "{resumed}"
    );
    let (status, log) = call(
        &portal,
        &connectors_token,
        "GET",
        &format!("{connector_path}/deliveries"),
        None,
    );
    assert_eq!((status, log.is_array()), (200, true), "{log}");
    assert_eq!(
        call(&portal, &connectors_token, "DELETE", &connector_path, None).0,
        204
    );
    let (_, listed) = call(&portal, &connectors_token, "GET", "/connectors", None);
    assert_eq!(listed[0]["state"], "removed");
    assert_eq!(
        call(
            &portal,
            &connectors_token,
            "POST",
            &format!("{connector_path}/pause"),
            None
        )
        .0,
        404
    );

    let actions = portal.actions();
    for action in [
        "device.enrolled",
        "device.credential.rotated",
        "device.moved",
        "device.credential.revoked",
        "alert.rule.created",
        "alert.raised",
        "alert.cleared",
        "alert.rule.disabled",
        "alert.rule.enabled",
        "alert.rule.changed",
        "alert.rule.removed",
        "connector.paused",
        "connector.resumed",
        "connector.removed",
    ] {
        assert!(count(&actions, action) >= 1, "{action}: {actions:?}");
    }
    drop(ingest);
}
