//! Editing from the portal, in process (`common::in_process`: the real application over a
//! real store; its emails go through a real SMTP server): users and sites are edited and deleted, one's own email address is changed (and both addresses are
//! told), and every form answers garbage with a 4xx, never showing it unescaped.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::in_process::InProcess;
use common::pages::field_error;
use common::{EMAIL, PASSWORD, count};
use testkit::store::Backend;

#[actix_web::test]
async fn users_and_sites_are_edited_and_deleted_and_an_email_change_is_told_to_both_addresses() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = InProcess::with_web_settings(
        Backend::Sqlite,
        &format!(
            "logins_per_minute = 1000\nsecond_factor_roles = []\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
        ),
    );
    portal.setup_admin().await;
    portal.login("ada", EMAIL, PASSWORD).await;
    let csrf = portal.csrf("ada").await;
    let add = portal
        .post(
            Some("ada"),
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "Tom Tech"),
                ("email", "tom@plant.example"),
                ("role", "technician"),
                ("password", "Schalt-Schrank-2026"),
            ],
        )
        .await;
    assert_eq!(add.status, 303);
    let tom = appliance::models::User::find_by_email(
        &mut portal.app.store.conn().unwrap(),
        "tom@plant.example",
    )
    .unwrap()
    .unwrap()
    .id
    .0;
    let ada = appliance::models::User::find_by_email(&mut portal.app.store.conn().unwrap(), EMAIL)
        .unwrap()
        .unwrap()
        .id
        .0;
    let edit = async |id: i64, name: &str, email: &str, role: &str| {
        portal
            .post(
                Some("ada"),
                &format!("/users/{id}"),
                &[
                    ("csrf", &csrf),
                    ("name", name),
                    ("email", email),
                    ("role", role),
                ],
            )
            .await
    };
    let page = portal.get(Some("ada"), &format!("/users/{tom}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("tom@plant.example"));
    assert_eq!(
        edit(tom, "", "tom@plant.example", "approver").await.status,
        422
    );
    assert_eq!(
        edit(tom, "Tom", "tom@plant.example", "overlord")
            .await
            .status,
        422
    );
    let taken = edit(tom, "Tom", EMAIL, "approver").await;
    assert_eq!(taken.status, 422);
    assert!(field_error(&taken.body, "email").contains("in use"));
    assert_eq!(
        edit(tom, "Tom Approver", "tom@plant.example", "approver")
            .await
            .status,
        303
    );
    assert!(
        portal
            .get(Some("ada"), "/users")
            .await
            .body
            .contains("Tom Approver")
    );
    let own_role = edit(ada, "Ada Admin", EMAIL, "viewer").await;
    assert_eq!(own_role.status, 422);
    assert!(field_error(&own_role.body, "role").contains("own role"));
    assert_eq!(
        portal
            .post(
                Some("ada"),
                &format!("/users/{ada}/delete"),
                &[("csrf", &csrf)]
            )
            .await
            .status,
        422
    );
    let deleted = portal
        .post(
            Some("ada"),
            &format!("/users/{tom}/delete"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(deleted.status, 303);
    assert!(
        !portal
            .get(Some("ada"), "/users")
            .await
            .body
            .contains("tom@plant.example")
    );
    assert_eq!(
        portal
            .get(Some("ada"), &format!("/users/{tom}"))
            .await
            .status,
        404
    );

    // A site is renamed, then deleted with its machine.
    let site = portal
        .post(
            Some("ada"),
            "/sites",
            &[("csrf", &csrf), ("name", "Hall 7"), ("location", "Nord")],
        )
        .await;
    let site = site.header("location").unwrap().to_owned();
    let renamed = portal
        .post(
            Some("ada"),
            &format!("{site}/details"),
            &[
                ("csrf", &csrf),
                ("name", "Hall 7 East"),
                ("location", "Gate 2"),
            ],
        )
        .await;
    assert_eq!(renamed.status, 303);
    let shown = portal.get(Some("ada"), &site).await.body;
    assert!(shown.contains("Hall 7 East") && shown.contains("Gate 2"));
    let nameless = portal
        .post(
            Some("ada"),
            &format!("{site}/details"),
            &[("csrf", &csrf), ("name", " "), ("location", "")],
        )
        .await;
    assert_eq!(nameless.status, 422);
    assert_eq!(
        portal
            .post(Some("ada"), &format!("{site}/delete"), &[("csrf", &csrf)])
            .await
            .status,
        303
    );
    assert_eq!(portal.get(Some("ada"), &site).await.status, 404);

    // Ada changes her own address: both addresses are told; she signs in with the new one.
    let refused = portal
        .post(
            Some("ada"),
            "/account/email",
            &[("csrf", &csrf), ("email", "ada at home")],
        )
        .await;
    assert_eq!(refused.status, 422);
    field_error(&refused.body, "email");
    let changed = portal
        .post(
            Some("ada"),
            "/account/email",
            &[("csrf", &csrf), ("email", "ada.lovelace@plant.example")],
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert!(changed.body.contains("ada.lovelace@plant.example"));
    mail.wait_for_message(EMAIL, &["Your email address was changed"]);
    mail.wait_for_message(
        "ada.lovelace@plant.example",
        &["This is now your account's email address"],
    );
    assert_ne!(
        portal
            .login("old", EMAIL, PASSWORD)
            .await
            .header("location"),
        Some("/")
    );
    assert_eq!(
        portal
            .login("new", "ada.lovelace@plant.example", PASSWORD)
            .await
            .header("location"),
        Some("/")
    );
    let actions = portal.actions();
    for (action, n) in [
        ("user.updated", 2),
        ("user.role.changed", 1),
        ("user.deleted", 1),
        ("site.updated", 1),
        ("site.deleted", 1),
        ("auth.email.changed", 1),
    ] {
        assert_eq!(count(&actions, action), n, "{action}");
    }
}

/// The audit log's length: every change is audited, so an unchanged length means nothing
/// was stored.
fn audit_length(portal: &InProcess) -> usize {
    portal.actions().len()
}

#[actix_web::test]
async fn every_form_answers_garbage_with_a_4xx_and_never_shows_it_unescaped() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 1000");
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    let csrf = portal.csrf("admin").await;
    let site = portal
        .post(
            Some("admin"),
            "/sites",
            &[("csrf", &csrf), ("name", "Hall 7"), ("location", "")],
        )
        .await;
    let site = site.header("location").unwrap().to_owned();
    let add = portal
        .post(
            Some("admin"),
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "Tom"),
                ("email", "tom@plant.example"),
                ("role", "technician"),
                ("password", "Schalt-Schrank-2026"),
            ],
        )
        .await;
    assert_eq!(add.status, 303);
    let tom = appliance::models::User::find_by_email(
        &mut portal.app.store.conn().unwrap(),
        "tom@plant.example",
    )
    .unwrap()
    .unwrap()
    .id
    .0;
    let forms: Vec<(String, &[&str])> = vec![
        ("/users".into(), &["name", "email", "role", "password"]),
        (format!("/users/{tom}"), &["name", "email", "role"]),
        (
            "/organisations".into(),
            &["name", "admin_name", "admin_email"],
        ),
        ("/organisations/1/rename".into(), &["name"]),
        (
            "/settings/certificate".into(),
            &["certificate", "private_key"],
        ),
        (
            "/settings/mail".into(),
            &["host", "port", "security", "username", "password", "from"],
        ),
        ("/account/email".into(), &["email"]),
        ("/account/password".into(), &["current", "new"]),
        ("/sites".into(), &["name", "location"]),
        (format!("{site}/details"), &["name", "location"]),
        (
            format!("{site}/policy"),
            &[
                "max_minutes",
                "allowed_hours",
                "timezone",
                "declared_networks",
                "device_allowlist",
            ],
        ),
        (format!("{site}/machines"), &["name", "address", "agents"]),
        (format!("{site}/approvers"), &["user", "action"]),
        (format!("{site}/invite"), &["name", "email", "days"]),
        (
            "/access".into(),
            &["target", "minutes", "reason", "declared_address"],
        ),
        (
            "/firmware/rollouts".into(),
            &["firmware", "percent", "serials", "failure_threshold_pct"],
        ),
    ];
    let script = "<script>alert(1)</script>";
    let nasty = [
        format!("{script}' OR '1'='1'; DROP TABLE users;--"),
        "-1".to_owned(),
        "99999999999999999999999".to_owned(),
        "\u{202e}\u{7}".to_owned(),
    ];
    for (path, fields) in &forms {
        for value in &nasty {
            let mut all: Vec<(&str, &str)> = vec![("csrf", &csrf)];
            all.extend(fields.iter().map(|f| (*f, value.as_str())));
            let reply = portal.post(Some("admin"), path, &all).await;
            assert!(
                (400..500).contains(&reply.status) || reply.status == 303,
                "{path} with {value:?} got {}: {}",
                reply.status,
                reply.body
            );
            assert!(
                !reply.body.contains(script),
                "{path} echoed the script unescaped"
            );
        }
        // A body over web.max_body_bytes (64 KiB), and one that is not UTF-8: refused, and
        // nothing is stored.
        let before = audit_length(&portal);
        let huge = "x".repeat(70 * 1024);
        let mut all: Vec<(&str, &str)> = vec![("csrf", &csrf)];
        all.extend(fields.iter().map(|f| (*f, huge.as_str())));
        let reply = portal.post(Some("admin"), path, &all).await;
        assert_eq!(reply.status, 413, "{path} took a huge body: {}", reply.body);
        let body = format!("csrf={csrf}&{}=%FF%FE%FD", fields[0]);
        let reply = portal.post_raw(Some("admin"), path, body.as_bytes()).await;
        assert!(
            (400..500).contains(&reply.status),
            "{path} took invalid UTF-8: {} {}",
            reply.status,
            reply.body
        );
        assert_eq!(audit_length(&portal), before, "{path} stored something");
    }
    // Whatever was stored is shown as text on every page that lists it.
    for page in [
        "/users",
        "/sites",
        "/organisations",
        "/access",
        "/settings",
        "/account",
        &site,
    ] {
        let reply = portal.get(Some("admin"), page).await;
        assert!(reply.status < 500, "{page}: {}", reply.status);
        assert!(
            !reply.body.contains(script),
            "{page} shows the script unescaped"
        );
    }
}
