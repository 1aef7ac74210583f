//! Users and roles in the portal, against the real `plantgate-web` binary over real TLS: an
//! administrator manages the users of their own organisation, and every page answers every
//! role as the permission table says.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::pages::is_escaped_script;
use common::*;

use appliance::Actor;

#[test]
fn an_admin_manages_users_of_their_own_organisation_only() {
    // Many logins from one address: the throttle has its own test.
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    portal.login("admin", EMAIL, PASSWORD);
    let csrf = portal.csrf("admin");
    let add = |name: &str, email: &str, password: &str| {
        portal.post(
            Some("admin"),
            "/users",
            &[
                ("csrf", &csrf),
                ("name", name),
                ("email", email),
                ("role", "technician"),
                ("password", password),
            ],
        )
    };
    let weak = add("<script>x</script>", "tom@vendor.example", "password1234");
    assert_eq!(weak.status, 422);
    assert!(
        is_escaped_script(&weak.body) || weak.body.contains("common"),
        "{}",
        weak.body
    );
    assert!(
        !portal
            .get(Some("admin"), "/users")
            .body
            .contains("tom@vendor.example"),
        "a refused user was created"
    );
    assert_eq!(add("Tom Tech", "tom@vendor.example", PASSWORD).status, 303);
    assert!(
        portal
            .get(Some("admin"), "/users")
            .body
            .contains("tom@vendor.example")
    );

    // The technician works until disabled; disabling ends the live session too.
    assert_eq!(
        portal.login("tom", "tom@vendor.example", PASSWORD).status,
        303
    );
    assert!(
        portal
            .get(Some("tom"), "/")
            .body
            .contains("Welcome, Tom Tech")
    );
    assert_eq!(
        portal.get(Some("tom"), "/users").status,
        403,
        "a technician reached user management"
    );
    let tom = appliance::models::User::find_by_email(
        &mut portal.app.store.conn().unwrap(),
        "tom@vendor.example",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        portal
            .post(
                Some("admin"),
                &format!("/users/{}/disable", tom.id.0),
                &[("csrf", &csrf)]
            )
            .status,
        303
    );
    assert_eq!(
        portal.get(Some("tom"), "/").header("location"),
        Some("/login"),
        "the disabled user's session lived on"
    );
    assert_eq!(
        portal.login("tom2", "tom@vendor.example", PASSWORD).status,
        401
    );
    assert_eq!(
        portal
            .post(
                Some("admin"),
                &format!("/users/{}/enable", tom.id.0),
                &[("csrf", &csrf)]
            )
            .status,
        303
    );
    assert_eq!(
        portal.login("tom3", "tom@vendor.example", PASSWORD).status,
        303
    );

    // Locked out, then unlocked by the admin before the lockout ends.
    for _ in 0..5 {
        portal.login("x", "tom@vendor.example", "Wrong-password-1");
    }
    assert_eq!(
        portal.login("tom4", "tom@vendor.example", PASSWORD).status,
        401
    );
    assert!(portal.get(Some("admin"), "/users").body.contains("locked"));
    assert_eq!(
        portal
            .post(
                Some("admin"),
                &format!("/users/{}/unlock", tom.id.0),
                &[("csrf", &csrf)]
            )
            .status,
        303
    );
    assert_eq!(
        portal.login("tom5", "tom@vendor.example", PASSWORD).status,
        303
    );

    // Another organisation's users are invisible and untouchable: 404, not 403.
    let actor = Actor::System("test".into());
    let other =
        appliance::models::Organisation::create(&portal.app.audit, &actor, "Other Plant").unwrap();
    let eve = appliance::models::User::create(
        &portal.app.audit,
        &actor,
        other.id,
        "Eve",
        "eve@other.example",
        appliance::models::Role::Admin,
    )
    .unwrap();
    assert!(
        !portal
            .get(Some("admin"), "/users")
            .body
            .contains("eve@other.example")
    );
    for change in ["disable", "enable", "unlock"] {
        assert_eq!(
            portal
                .post(
                    Some("admin"),
                    &format!("/users/{}/{change}", eve.id.0),
                    &[("csrf", &csrf)]
                )
                .status,
            404,
            "{change}"
        );
    }
    let actions = portal.actions();
    assert!(
        actions.contains(&"user.disabled".to_owned())
            && actions.contains(&"auth.account.unlocked".to_owned())
    );
}

#[test]
fn every_page_answers_every_role_as_the_permission_table_says() {
    use appliance::models::{Organisation, Role, User};
    let portal = Portal::start("logins_per_minute = 1000");
    portal.setup_admin();
    let actor = Actor::System("test".into());
    let org = Organisation::list(&mut portal.app.store.conn().unwrap())
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
        let user =
            User::create(&portal.app.audit, &actor, org.id, "Someone", &email, role).unwrap();
        appliance::accounts::set_password(
            &portal.app.audit,
            &actor,
            &user,
            PASSWORD,
            appliance::accounts::PasswordPolicy { min_chars: 12 },
            0,
        )
        .unwrap();
        assert_eq!(portal.login(role.as_str(), &email, PASSWORD).status, 303);
    }
    portal.login("admin", EMAIL, PASSWORD);

    // The table: what each kind of caller gets. 303 is the way to the login page.
    const OK: u16 = 200;
    const LOGIN: u16 = 303;
    const NO: u16 = 403;
    #[rustfmt::skip]
    let table: [(&str, [u16; 6]); 17] = [
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
            let reply = portal.get(*caller, path);
            assert_eq!(reply.status, want, "{path} as {caller:?}");
            if want == LOGIN {
                assert_eq!(
                    reply.header("location"),
                    Some("/login"),
                    "{path} as {caller:?}"
                );
            }
        }
    }
    // Every change an administrator makes: refused to every other role (with a valid form
    // token), and sent to the login page without a session. Ids need not exist: the role is
    // checked first.
    const ADMIN_POSTS: [&str; 17] = [
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
        "/sites",
        "/sites/1/details",
        "/sites/1/delete",
        "/sites/1/policy",
        "/sites/1/machines",
        "/firmware/rollouts",
        "/firmware/rollouts/1/pause",
    ];
    for path in ADMIN_POSTS {
        for caller in ["approver", "technician", "viewer", "auditor"] {
            let csrf = portal.csrf(caller);
            let reply = portal.post(Some(caller), path, &[("csrf", &csrf), ("name", "X")]);
            assert_eq!(reply.status, NO, "POST {path} as {caller}: {}", reply.body);
        }
        let anonymous = portal.post(None, path, &[("name", "X")]);
        assert_eq!(anonymous.status, LOGIN, "POST {path} anonymously");
        assert_eq!(anonymous.header("location"), Some("/login"));
    }
    // Posting to what one may not see is refused the same way.
    let csrf = portal.csrf("technician");
    let post = portal.post(
        Some("technician"),
        "/users",
        &[
            ("csrf", &csrf),
            ("name", "X"),
            ("email", "x@y.example"),
            ("role", "admin"),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(post.status, 403, "a technician created a user");
}
