//! Every page answers every role as the permission table says, and every change an
//! administrator makes is refused to every other role. In process (`common::in_process`:
//! the real application and route table over a real store): a few hundred requests, each
//! of which needs neither TLS nor a second process.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use appliance::Actor;
use common::in_process::InProcess;
use common::{EMAIL, PASSWORD};
use testkit::store::Backend;

#[actix_web::test]
async fn every_page_answers_every_role_as_the_permission_table_says() {
    use appliance::models::{Organisation, Role, User};
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 1000");
    portal.setup_admin().await;
    let actor = Actor::System("test".into());
    let org = Organisation::list(&mut portal.t.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let roles = [
        Role::Approver,
        Role::Technician,
        Role::Viewer,
        Role::Auditor,
    ];
    for role in roles {
        let email = format!("{role}@plant.example");
        let user = User::create(
            &portal.t.app.audit,
            &actor,
            org.id,
            "Someone",
            &email,
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
        assert_eq!(
            portal.login(role.as_str(), &email, PASSWORD).await.status,
            303
        );
    }
    portal.login("admin", EMAIL, PASSWORD).await;

    // The table: what each kind of caller gets. 303 is the way to the login page.
    const OK: u16 = 200;
    const LOGIN: u16 = 303;
    const NO: u16 = 403;
    #[rustfmt::skip]
    let table: [(&str, [u16; 6]); 19] = [
        //                          anonymous admin approver technician viewer auditor
        ("/",                       [LOGIN, OK, OK, OK, OK, OK]),
        ("/account",                [LOGIN, OK, OK, OK, OK, OK]),
        ("/organisations",          [LOGIN, OK, NO, NO, NO, NO]),
        ("/settings",               [LOGIN, OK, NO, NO, NO, NO]),
        ("/errors",                 [LOGIN, OK, NO, NO, NO, NO]),
        ("/sessions",               [LOGIN, OK, OK, OK, OK, OK]),
        ("/account/password",       [LOGIN, OK, OK, OK, OK, OK]),
        ("/account/second-factor",  [LOGIN, OK, OK, OK, OK, OK]),
        ("/users",                  [LOGIN, OK, NO, NO, NO, NO]),
        ("/audit",                  [LOGIN, OK, NO, NO, NO, OK]),
        ("/audit/export",           [LOGIN, OK, NO, NO, NO, OK]),
        ("/firmware",               [LOGIN, OK, NO, NO, NO, NO]),
        ("/account/email",          [LOGIN, OK, OK, OK, OK, OK]),
        ("/access",                 [LOGIN, OK, OK, OK, OK, OK]),
        ("/sites",                  [LOGIN, OK, OK, OK, OK, OK]),
        ("/devices",                [LOGIN, OK, OK, OK, OK, OK]),
        ("/alert-rules",            [LOGIN, OK, OK, OK, OK, OK]),
        ("/connectors",             [LOGIN, OK, OK, OK, OK, OK]),
        ("/anything/else",          [404, 404, 404, 404, 404, 404]),
    ];
    let callers: [Option<&str>; 6] = [
        None,
        Some("admin"),
        Some("approver"),
        Some("technician"),
        Some("viewer"),
        Some("auditor"),
    ];
    for (path, expected) in table {
        for (caller, want) in callers.iter().zip(expected) {
            let reply = portal.get(*caller, path).await;
            assert_eq!(reply.status, want, "{path} as {caller:?}");
            if want == LOGIN {
                assert_eq!(
                    reply.location.as_deref(),
                    Some("/login"),
                    "{path} as {caller:?}"
                );
            }
        }
    }
    // Every change an administrator makes: refused to every other role (with a valid form
    // token), and sent to the login page without a session. Ids need not exist: the role is
    // checked first.
    const ADMIN_POSTS: [&str; 30] = [
        "/users",
        "/users/1",
        "/users/1/disable",
        "/users/1/delete",
        "/organisations",
        "/organisations/1/rename",
        "/organisations/1/delete",
        "/settings/certificate",
        "/settings/mail",
        "/settings/mail/test",
        "/settings/telemetry",
        "/sites",
        "/sites/1/details",
        "/sites/1/delete",
        "/sites/1/policy",
        "/sites/1/machines",
        "/firmware/rollouts",
        "/firmware/rollouts/1/pause",
        "/devices",
        "/devices/1/rotate",
        "/devices/1/revoke",
        "/devices/1/move",
        "/alert-rules",
        "/alert-rules/1",
        "/alert-rules/1/disable",
        "/alert-rules/1/enable",
        "/alert-rules/1/remove",
        "/connectors/1/pause",
        "/connectors/1/resume",
        "/connectors/1/remove",
    ];
    for path in ADMIN_POSTS {
        for caller in ["approver", "technician", "viewer", "auditor"] {
            let csrf = portal.csrf(caller).await;
            let reply = portal
                .post(Some(caller), path, &[("csrf", &csrf), ("name", "X")])
                .await;
            assert_eq!(reply.status, NO, "POST {path} as {caller}: {}", reply.body);
        }
        let anonymous = portal.post(None, path, &[("name", "X")]).await;
        assert_eq!(anonymous.status, LOGIN, "POST {path} anonymously");
        assert_eq!(anonymous.location.as_deref(), Some("/login"));
    }
    // Posting to what one may not see is refused the same way.
    let csrf = portal.csrf("technician").await;
    let post = portal
        .post(
            Some("technician"),
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "X"),
                ("email", "x@y.example"),
                ("role", "admin"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(post.status, 403, "a technician created a user");
}
