//! What is not text never reaches the store: a query or a form field that percent-decodes to
//! a NUL character (which PostgreSQL cannot store in text, and which failed the audit query
//! with a 500 when the API was fuzzed) or to bytes that are not UTF-8 is refused with 400, on
//! pages and in the API, and changes nothing. In process over PostgreSQL, where a NUL would
//! otherwise fail the query.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use common::in_process::InProcess;
use common::{EMAIL, PASSWORD};
use testkit::store::Backend;

#[actix_web::test]
async fn a_nul_or_non_utf8_in_a_query_or_a_form_is_refused_with_400() {
    let portal = InProcess::with_web_settings(Backend::Postgres, "logins_per_minute = 100");
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;

    for query in ["action=auth%00.", "target=%FF%FE", "%00=x"] {
        let page = portal.get(Some("admin"), &format!("/audit?{query}")).await;
        assert_eq!(page.status, 400, "/audit?{query}: {}", page.body);
        assert!(page.body.contains("not text"), "{}", page.body);
        let api = portal.get(None, &format!("/api/v1/audit?{query}")).await;
        assert_eq!(api.status, 400, "/api/v1/audit?{query}: {}", api.body);
        let json: serde_json::Value = serde_json::from_str(&api.body).expect("JSON");
        assert_eq!(json["error"], "request.invalid", "{}", api.body);
    }
    // A clean filter still works.
    let clean = portal.get(Some("admin"), "/audit?action=auth.").await;
    assert_eq!(clean.status, 200, "{}", clean.body);

    let csrf = portal.csrf("admin").await;
    let before = portal.actions().len();
    let add = portal
        .post(
            Some("admin"),
            "/users",
            &[
                ("csrf", csrf.as_str()),
                ("name", "Tom\0Tech"),
                ("email", "tom@vendor.example"),
                ("role", "technician"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(add.status, 400, "{}", add.body);
    assert_eq!(
        portal.actions().len(),
        before,
        "a refused form changed something"
    );
    let users = portal.get(Some("admin"), "/users").await;
    assert!(!users.body.contains("tom@vendor.example"), "{}", users.body);
}
