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

    let actions = portal.actions();
    for action in [
        "device.enrolled",
        "alert.rule.created",
        "alert.raised",
        "alert.cleared",
        "alert.rule.changed",
        "alert.rule.removed",
    ] {
        assert!(count(&actions, action) >= 1, "{action}: {actions:?}");
    }
    drop(ingest);
}
