//! Organisations run from the portal, in process (`common::in_process`: the real application
//! over a real store; its emails go through a real SMTP server): the operator creates, renames, disables and deletes organisations, whose administrators
//! see only their own.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::in_process::InProcess;
use common::pages::field_error;
use common::{EMAIL, PASSWORD, count};
use testkit::store::Backend;

use appliance::schema::mail_outbox;
use diesel::prelude::*;

#[actix_web::test]
async fn the_operator_runs_organisations_whose_administrators_see_only_their_own() {
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
    let page = portal.get(Some("ada"), "/organisations").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Moulding Plant Nord") && page.body.contains("(operator)"));
    let csrf = portal.csrf_from(&page.body);
    let create = async |name: &str, admin: &str, email: &str| {
        portal
            .post(
                Some("ada"),
                "/organisations",
                &[
                    ("csrf", &csrf),
                    ("name", name),
                    ("admin_name", admin),
                    ("admin_email", email),
                ],
            )
            .await
    };
    let before = portal.actions().len();
    for (name, admin, email, field) in [
        ("", "Bea", "bea@werkzeug.example", "name"),
        ("Moulding Plant Nord", "Bea", "bea@werkzeug.example", "name"),
        ("Werkzeugbau Süd", "", "bea@werkzeug.example", "admin_name"),
        ("Werkzeugbau Süd", "Bea", "bea at werkzeug", "admin_email"),
        ("Werkzeugbau Süd", "Bea", EMAIL, "admin_email"),
    ] {
        let refused = create(name, admin, email).await;
        assert_eq!(refused.status, 422, "{name}/{admin}/{email}");
        field_error(&refused.body, field);
    }
    assert_eq!(
        portal.actions().len(),
        before,
        "a refused form left a trace"
    );

    let created = create("Werkzeugbau Süd", "Bea Boss", "bea@werkzeug.example").await;
    assert_eq!(created.status, 200, "{}", created.body);
    mail.wait_for_message("bea@werkzeug.example", &["You administer Werkzeugbau"]);
    // The link, from the outbox (the SMTP copy may be quoted-printable).
    let body: String = mail_outbox::table
        .filter(mail_outbox::recipient.eq("bea@werkzeug.example"))
        .select(mail_outbox::body)
        .first(&mut portal.app.store.conn().unwrap())
        .unwrap();
    let at = body.find("/invite/").unwrap();
    let link = body[at..].split_whitespace().next().unwrap().to_owned();
    let accepted = portal
        .post(
            None,
            &link,
            &[
                ("password", "Fraes-Maschine-88"),
                ("repeat", "Fraes-Maschine-88"),
            ],
        )
        .await;
    assert!([200, 303].contains(&accepted.status), "{}", accepted.body);
    assert_eq!(
        portal
            .login("bea", "bea@werkzeug.example", "Fraes-Maschine-88")
            .await
            .status,
        303
    );

    // Bea runs her organisation, and nothing else.
    assert_eq!(portal.get(Some("bea"), "/organisations").await.status, 403);
    assert_eq!(portal.get(Some("bea"), "/settings").await.status, 403);
    // The audit log holds every organisation's actions: not hers to read, by page or API.
    assert_eq!(portal.get(Some("bea"), "/audit").await.status, 403);
    assert_eq!(portal.get(Some("bea"), "/audit/export").await.status, 403);
    assert!(
        !portal
            .get(Some("bea"), "/")
            .await
            .body
            .contains("href=\"/audit\"")
    );
    let bea_user = appliance::models::User::find_by_email(
        &mut portal.app.store.conn().unwrap(),
        "bea@werkzeug.example",
    )
    .unwrap()
    .unwrap();
    let (bea_token, _) = appliance::tokens::create(
        &portal.app.audit,
        &appliance::Actor::System("test".into()),
        &bea_user,
        "siem",
        &["audit:read".to_owned()],
        30,
        appliance::time::now_us(),
    )
    .unwrap();
    assert_eq!(
        portal
            .api(Some(bea_token.reveal()), "/api/v1/audit")
            .await
            .0,
        403
    );
    let (ada_token, _) = portal.token(&["audit:read"], 30, 0);
    assert_eq!(portal.api(Some(&ada_token), "/api/v1/audit").await.0, 200);
    let users = portal.get(Some("bea"), "/users").await.body;
    assert!(users.contains("bea@werkzeug.example") && !users.contains(EMAIL));
    // Ada's site and users are "not found" to Bea, by every URL.
    let ada_csrf = portal.csrf("ada").await;
    let site = portal
        .post(
            Some("ada"),
            "/sites",
            &[
                ("csrf", &ada_csrf),
                ("name", "Hall 7"),
                ("location", "Nord"),
            ],
        )
        .await;
    let site = site.header("location").unwrap().to_owned();
    let ada_id =
        appliance::models::User::find_by_email(&mut portal.app.store.conn().unwrap(), EMAIL)
            .unwrap()
            .unwrap()
            .id
            .0;
    let bea_id = appliance::models::User::find_by_email(
        &mut portal.app.store.conn().unwrap(),
        "bea@werkzeug.example",
    )
    .unwrap()
    .unwrap()
    .id
    .0;
    let bea_csrf = portal.csrf("bea").await;
    assert_eq!(portal.get(Some("bea"), &site).await.status, 404);
    assert_eq!(
        portal
            .get(Some("bea"), &format!("/users/{ada_id}"))
            .await
            .status,
        404
    );
    assert_eq!(
        portal
            .get(Some("ada"), &format!("/users/{bea_id}"))
            .await
            .status,
        404
    );
    for (path, fields) in [
        (
            format!("{site}/details"),
            vec![("name", "Mine"), ("location", "")],
        ),
        (format!("{site}/delete"), vec![]),
        (format!("{site}/policy"), vec![("max_minutes", "60")]),
        (
            format!("{site}/machines"),
            vec![("name", "X"), ("address", "192.168.50.9")],
        ),
        (format!("{site}/key-switch"), vec![("enabled", "off")]),
        (
            format!("/users/{ada_id}"),
            vec![
                ("name", "Mine"),
                ("email", "x@y.example"),
                ("role", "viewer"),
            ],
        ),
        (format!("/users/{ada_id}/disable"), vec![]),
        (format!("/users/{ada_id}/unlock"), vec![]),
        (format!("/users/{ada_id}/delete"), vec![]),
    ] {
        let mut all = vec![("csrf", bea_csrf.as_str())];
        all.extend(fields);
        let reply = portal.post(Some("bea"), &path, &all).await;
        assert_eq!(reply.status, 404, "Bea reached {path}: {}", reply.body);
    }
    assert!(portal.get(Some("ada"), &site).await.body.contains("Hall 7"));

    // A machine and a remote-access request in Ada's organisation: "not found" to Bea too.
    let policy = portal
        .post(
            Some("ada"),
            &format!("{site}/policy"),
            &[
                ("csrf", &ada_csrf),
                ("approval_required", "1"),
                ("max_minutes", "60"),
                ("device_allowlist", "192.168.50.0/28"),
            ],
        )
        .await;
    assert_eq!(policy.status, 303, "{}", policy.body);
    let machine = portal
        .post(
            Some("ada"),
            &format!("{site}/machines"),
            &[
                ("csrf", &ada_csrf),
                ("name", "Press 1"),
                ("address", "192.168.50.10"),
                ("agents", "vnc"),
            ],
        )
        .await;
    assert_eq!(machine.status, 303, "{}", machine.body);
    let site_id = appliance::ids::SiteId(site.rsplit('/').next().unwrap().parse().unwrap());
    let press = appliance::access::Machine::of_site(&mut portal.app.store.conn().unwrap(), site_id)
        .unwrap()
        .remove(0);
    let ada_user =
        appliance::models::User::find_by_email(&mut portal.app.store.conn().unwrap(), EMAIL)
            .unwrap()
            .unwrap();
    let ann = appliance::models::User::create(
        &portal.app.audit,
        &appliance::Actor::System("test".into()),
        ada_user.organisation_id,
        "Ann Approver",
        "ann@plant.example",
        appliance::models::Role::Approver,
        appliance::time::now_us(),
    )
    .unwrap();
    let hall = appliance::models::Site::find_in(
        &mut portal.app.store.conn().unwrap(),
        ada_user.organisation_id,
        site_id,
    )
    .unwrap();
    appliance::access::set_approver(
        &portal.app.audit,
        &appliance::Actor::System("test".into()),
        &hall,
        ann.id,
        true,
    )
    .unwrap();
    let request = appliance::access::request(
        &portal.app.audit,
        &portal.app.config,
        &ada_user,
        "10.1.0.20",
        &appliance::access::NewRequest {
            machine_id: press.id,
            agent: "vnc".into(),
            minutes: "30".into(),
            reason: "PLC alarm".into(),
            declared_address: String::new(),
        },
        appliance::time::now_us(),
    )
    .unwrap();
    let access = format!("/access/{}", request.id.0);
    assert_eq!(portal.get(Some("ada"), &access).await.status, 200);
    assert_eq!(portal.get(Some("bea"), &access).await.status, 404);
    assert!(
        !portal
            .get(Some("bea"), "/access")
            .await
            .body
            .contains("PLC alarm")
    );
    assert!(
        !portal
            .get(Some("bea"), "/sites")
            .await
            .body
            .contains("Hall 7")
    );
    assert!(
        !portal
            .get(Some("bea"), "/devices")
            .await
            .body
            .contains("Hall 7")
    );
    for path in [
        format!("{access}/approve"),
        format!("{access}/deny"),
        format!("{access}/end"),
        format!("{access}/extend"),
        format!("{site}/machines/{}/remove", press.id.0),
        format!("{site}/approvers"),
        format!("{site}/invite"),
    ] {
        let reply = portal
            .post(
                Some("bea"),
                &path,
                &[("csrf", &bea_csrf), ("minutes", "30")],
            )
            .await;
        assert_eq!(reply.status, 404, "Bea reached {path}: {}", reply.body);
    }
    let (bea_api, _) = appliance::tokens::create(
        &portal.app.audit,
        &appliance::Actor::System("test".into()),
        &appliance::models::User::find_by_email(
            &mut portal.app.store.conn().unwrap(),
            "bea@werkzeug.example",
        )
        .unwrap()
        .unwrap(),
        "api",
        &["access:read".to_owned(), "users:read".to_owned()],
        30,
        appliance::time::now_us(),
    )
    .unwrap();
    let (status, machines) = portal.api(Some(bea_api.reveal()), "/api/v1/machines").await;
    assert_eq!(status, 200);
    assert!(!machines.to_string().contains("Press 1"), "{machines}");
    let (status, requests) = portal
        .api(Some(bea_api.reveal()), "/api/v1/access-requests")
        .await;
    assert_eq!(status, 200);
    assert!(!requests.to_string().contains("PLC alarm"), "{requests}");
    let (status, users) = portal.api(Some(bea_api.reveal()), "/api/v1/users").await;
    assert_eq!(status, 200);
    assert!(!users.to_string().contains(EMAIL), "{users}");

    // Rename, disable (her sessions end, she cannot sign in), enable, delete.
    let org = appliance::models::Organisation::find_by_name(
        &mut portal.app.store.conn().unwrap(),
        "Werkzeugbau Süd",
    )
    .unwrap()
    .unwrap()
    .id
    .0;
    let change = async |what: &str, name: &str| {
        portal
            .post(
                Some("ada"),
                &format!("/organisations/{org}/{what}"),
                &[("csrf", &ada_csrf), ("name", name)],
            )
            .await
    };
    assert_eq!(change("rename", "").await.status, 422);
    assert_eq!(change("rename", "Werkzeugbau Sued").await.status, 303);
    assert!(
        portal
            .get(Some("ada"), "/organisations")
            .await
            .body
            .contains("Werkzeugbau Sued")
    );
    assert_eq!(change("disable", "").await.status, 303);
    assert_eq!(
        portal.get(Some("bea"), "/").await.status,
        303,
        "a disabled organisation's session lives"
    );
    assert_ne!(
        portal
            .login("bea2", "bea@werkzeug.example", "Fraes-Maschine-88")
            .await
            .header("location"),
        Some("/"),
        "a disabled organisation's user signed in"
    );
    assert_eq!(change("enable", "").await.status, 303);
    assert_eq!(
        portal
            .login("bea3", "bea@werkzeug.example", "Fraes-Maschine-88")
            .await
            .status,
        303
    );
    // The operator organisation is neither disabled nor deleted.
    let operator = appliance::models::Organisation::find_by_name(
        &mut portal.app.store.conn().unwrap(),
        "Moulding Plant Nord",
    )
    .unwrap()
    .unwrap()
    .id
    .0;
    for what in ["disable", "delete"] {
        let refused = portal
            .post(
                Some("ada"),
                &format!("/organisations/{operator}/{what}"),
                &[("csrf", &ada_csrf)],
            )
            .await;
        assert_eq!(refused.status, 422, "the operator organisation: {what}");
        assert!(refused.body.contains("owns the appliance"));
    }
    assert_eq!(change("delete", "").await.status, 303);
    assert!(
        !portal
            .get(Some("ada"), "/organisations")
            .await
            .body
            .contains("Werkzeugbau")
    );
    assert_ne!(
        portal
            .login("bea4", "bea@werkzeug.example", "Fraes-Maschine-88")
            .await
            .header("location"),
        Some("/")
    );
    let actions = portal.actions();
    for action in [
        "organisation.created",
        "user.invited",
        "user.invitation.accepted",
        "organisation.renamed",
        "organisation.disabled",
        "organisation.enabled",
        "organisation.deleted",
    ] {
        assert_eq!(count(&actions, action), 1, "{action}");
    }
}
