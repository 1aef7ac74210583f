//! The audit viewer in the portal, in process (`common::in_process`: the real application
//! and route table over a real store): filtering, paging, export and verification, and who
//! may read the log.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::in_process::InProcess;
use common::{EMAIL, PASSWORD};

use appliance::Actor;
use testkit::store::Backend;

#[actix_web::test]
async fn the_audit_viewer_filters_pages_exports_and_verifies() {
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    for _ in 0..3 {
        portal.login("x", EMAIL, "Wrong-password-1").await;
    }
    portal.login("admin", EMAIL, PASSWORD).await;
    let failed = portal
        .get(Some("admin"), "/audit?action=auth.login.failed")
        .await;
    assert_eq!(
        failed.body.matches("<td>auth.login.failed</td>").count(),
        3,
        "{}",
        failed.body
    );
    assert!(!failed.body.contains("<td>auth.login.succeeded</td>"));
    let auth = portal.get(Some("admin"), "/audit?action=auth.").await;
    assert!(auth.body.contains("<td>auth.login.succeeded</td>"));
    let bad_filter = portal.get(Some("admin"), "/audit?since=yesterday").await;
    assert!(
        bad_filter.body.contains("is not a time"),
        "{}",
        bad_filter.body
    );

    let verified = portal.get(Some("admin"), "/audit?verify=1").await;
    assert!(
        verified.body.contains("The chain is intact"),
        "{}",
        verified.body
    );
    let csv = portal
        .get(
            Some("admin"),
            "/audit/export?format=csv&action=auth.login.failed",
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("seq,time,actor_kind"), "{}", csv.body);
    assert_eq!(csv.body.lines().count(), 4, "{}", csv.body);
    assert!(portal.actions().contains(&"audit.exported".to_owned()));

    // Paging: 60 more records make more than one page of 50.
    let events = (0..60)
        .map(|i| appliance::AuditEvent::new(Actor::System("test".into()), "test.paging").target(i))
        .collect();
    portal.t.app.audit.record_all(events).unwrap();
    let first = portal.get(Some("admin"), "/audit?action=test.paging").await;
    assert_eq!(first.body.matches("<td>test.paging</td>").count(), 50);
    let next = first
        .body
        .split("/audit?before=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("a next-page link")
        .to_owned();
    let second = portal
        .get(
            Some("admin"),
            &format!("/audit?before={next}&action=test.paging"),
        )
        .await;
    assert_eq!(second.body.matches("<td>test.paging</td>").count(), 10);
}

#[actix_web::test]
async fn only_admins_and_auditors_read_the_audit_log() {
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    let actor = Actor::System("test".into());
    let org = appliance::models::Organisation::list(&mut portal.t.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    for (email, role) in [
        ("tech@vendor.example", appliance::models::Role::Technician),
        ("audit@plant.example", appliance::models::Role::Auditor),
    ] {
        let user = appliance::models::User::create(
            &portal.t.app.audit,
            &actor,
            org.id,
            "Someone",
            email,
            role,
            appliance::time::now_us(),
        )
        .unwrap();
        appliance::accounts::set_password(
            &portal.t.app.audit,
            &actor,
            &user,
            PASSWORD,
            appliance::accounts::PasswordPolicy { min_chars: 12 },
            0,
        )
        .unwrap();
    }
    portal.login("tech", "tech@vendor.example", PASSWORD).await;
    assert_eq!(portal.get(Some("tech"), "/audit").await.status, 403);
    assert_eq!(portal.get(Some("tech"), "/audit/export").await.status, 403);
    portal
        .login("auditor", "audit@plant.example", PASSWORD)
        .await;
    assert_eq!(portal.get(Some("auditor"), "/audit").await.status, 200);
    assert_eq!(
        portal.get(None, "/audit").await.location.as_deref(),
        Some("/login")
    );
}
