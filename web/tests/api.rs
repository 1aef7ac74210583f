//! The REST API as its callers meet it, in process (`common::in_process`: the real
//! application over a real store): scoped tokens, organisations kept apart, rate limits, and paged readings.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::EMAIL;
use common::in_process::InProcess;
use testkit::store::Backend;

use appliance::Actor;

#[actix_web::test]
async fn the_api_serves_a_scoped_token_and_refuses_a_revoked_or_expired_one() {
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    let (token, id) = portal.token(&["audit:read", "users:read"], 30, 0);
    let (status, me) = portal.api(Some(&token), "/api/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], EMAIL);
    assert_eq!(
        me["scopes"],
        serde_json::json!(["audit:read", "users:read"])
    );
    let (status, page) = portal
        .api(Some(&token), "/api/v1/audit?action=setup.&limit=5")
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["records"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["records"][0]["action"], "setup.first_admin.created");

    assert_eq!(
        portal.api(None, "/api/v1/me").await,
        (
            401,
            serde_json::json!({"error": "auth.missing_token", "message": "send Authorization: Bearer followed by an API token"})
        )
    );
    assert_eq!(
        portal.api(Some("pgt_made-up"), "/api/v1/me").await.1["error"],
        "auth.invalid_token"
    );
    let (narrow, _) = portal.token(&["users:read"], 30, 0);
    let (status, body) = portal.api(Some(&narrow), "/api/v1/audit").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("auth.missing_scope"))
    );
    for bad in [
        "/api/v1/audit?limit=0",
        "/api/v1/audit?since=yesterday",
        "/api/v1/audit?outcome=maybe",
        "/api/v1/audit?before=x",
    ] {
        let (status, body) = portal.api(Some(&token), bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{bad}: {body}"
        );
    }
    assert_eq!(
        portal.api(Some(&token), "/api/v1/nothing-here").await.0,
        404
    );

    appliance::tokens::revoke(
        &portal.app.audit,
        &Actor::System("test".into()),
        id,
        appliance::time::now_us(),
    )
    .unwrap();
    assert_eq!(
        portal.api(Some(&token), "/api/v1/me").await.0,
        401,
        "a revoked token still works"
    );
    let (expired, _) = portal.token(&["users:read"], 1, 2);
    assert_eq!(
        portal.api(Some(&expired), "/api/v1/me").await.0,
        401,
        "an expired token still works"
    );
    let actions = portal.actions();
    assert!(
        actions.contains(&"api.token.created".to_owned())
            && actions.contains(&"api.token.revoked".to_owned())
    );
}

#[actix_web::test]
async fn api_callers_see_only_their_own_organisation() {
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    let actor = Actor::System("test".into());
    let other = appliance::models::Organisation::create(
        &portal.app.audit,
        &actor,
        "Other Plant",
        appliance::time::now_us(),
    )
    .unwrap();
    appliance::models::User::create(
        &portal.app.audit,
        &actor,
        other.id,
        "Eve",
        "eve@other.example",
        appliance::models::Role::Admin,
        appliance::time::now_us(),
    )
    .unwrap();
    let (token, _) = portal.token(&["users:read"], 30, 0);
    let (status, users) = portal.api(Some(&token), "/api/v1/users").await;
    assert_eq!(status, 200);
    let emails: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(emails, [EMAIL], "another organisation's users leaked");
}

#[actix_web::test]
async fn the_api_is_rate_limited_with_retry_after() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "api_requests_per_minute = 5");
    portal.setup_admin().await;
    let (token, _) = portal.token(&["users:read"], 30, 0);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(portal.api(Some(&token), "/api/v1/me").await.0);
    }
    assert_eq!(statuses, [200; 5]);
    let limited = portal.get_with_token(Some(&token), "/api/v1/me").await;
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| (1..=60).contains(&s))
    );
    assert!(limited.body.contains("rate.limited"));
}

// The OpenAPI document and schemathesis have their own file: tests/openapi.rs.

#[actix_web::test]
async fn readings_are_paged_through_the_api_for_the_callers_own_devices() {
    use appliance::devices::{Device, DeviceKind, DeviceRequest};
    use appliance::models::{Organisation, Site};
    use appliance::readings::{NewReading, insert_new};
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    let actor = Actor::System("test".into());
    let own = Organisation::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let other = Organisation::create(
        &portal.app.audit,
        &actor,
        "Other Plant",
        appliance::time::now_us(),
    )
    .unwrap();
    let t0 = 1_795_334_400_000_000;
    for (org, serial) in [(own.id, "MM-1"), (other.id, "MM-9")] {
        let site = Site::create(
            &portal.app.audit,
            &actor,
            org,
            "Hall 3",
            "",
            appliance::time::now_us(),
        )
        .unwrap();
        let request = DeviceRequest {
            serial: serial.into(),
            kind: DeviceKind::Monitor,
            site: site.id,
            gateway: None,
            model: None,
        };
        let (device, _) = Device::register(
            &portal.app.audit,
            &actor,
            &request,
            appliance::time::now_us(),
        )
        .unwrap();
        let rows: Vec<NewReading> = (1..=1200)
            .map(|i| NewReading {
                device_id: device.id,
                seq: i,
                metric: if i % 2 == 0 {
                    "temperature_c".into()
                } else {
                    "cycle_count".into()
                },
                value: i as f64,
                measured_at_us: t0 + i * 1_000_000,
                received_at_us: t0 + i * 1_000_000,
            })
            .collect();
        insert_new(&mut portal.app.store.conn().unwrap(), &rows).unwrap();
    }
    let (token, _) = portal.token(&["readings:read"], 30, 0);

    let mut seqs = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = portal
            .api(
                Some(&token),
                &format!("/api/v1/readings?device=MM-1&limit=500{after}"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        seqs.extend(
            page["readings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_i64().unwrap()),
        );
        match page["next_after"].as_i64() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        seqs,
        (1..=1200).collect::<Vec<_>>(),
        "pages skipped or repeated readings"
    );

    let (_, temps) = portal
        .api(
            Some(&token),
            "/api/v1/readings?device=MM-1&metric=temperature_c&limit=5000",
        )
        .await;
    assert_eq!(temps["readings"].as_array().unwrap().len(), 600);
    // t0 is 2026-11-22T08:00:00Z; measured in [t0 + 100 s, t0 + 200 s) are seq 100 to 199.
    let (_, window) = portal.api(Some(&token), "/api/v1/readings?device=MM-1&since=2026-11-22T08:01:40Z&until=2026-11-22T08:03:20Z&limit=5000").await;
    assert_eq!(
        window["readings"].as_array().unwrap().len(),
        100,
        "{window}"
    );

    assert_eq!(
        portal
            .api(Some(&token), "/api/v1/readings?device=MM-9")
            .await
            .0,
        404,
        "another organisation's device was readable"
    );
    assert_eq!(
        portal
            .api(Some(&token), "/api/v1/readings?device=NOPE")
            .await
            .0,
        404
    );
    assert_eq!(
        portal
            .api(Some(&token), "/api/v1/readings?device=MM-1&limit=0")
            .await
            .0,
        400
    );
    assert_eq!(
        portal.api(Some(&token), "/api/v1/readings").await.0,
        400,
        "a missing device was accepted"
    );
    let (no_scope, _) = portal.token(&["users:read"], 30, 0);
    assert_eq!(
        portal
            .api(Some(&no_scope), "/api/v1/readings?device=MM-1")
            .await
            .0,
        403
    );
}
