//! Users and roles in the portal, in process (`common::in_process`: the real application
//! over a real store, without TLS or a second process): an administrator manages the users
//! of their own organisation. Every page's answer to every role is `permissions.rs`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use common::in_process::InProcess;
use common::pages::is_escaped_script;
use common::{EMAIL, PASSWORD};
use testkit::store::Backend;

use appliance::Actor;

#[actix_web::test]
async fn an_admin_manages_users_of_their_own_organisation_only() {
    // Many logins from one address: the throttle has its own test.
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 100");
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    let csrf = portal.csrf("admin").await;
    let add = async |name: &str, email: &str, password: &str| {
        portal
            .post(
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
            .await
    };
    let weak = add("<script>x</script>", "tom@vendor.example", "password1234").await;
    assert_eq!(weak.status, 422);
    assert!(
        is_escaped_script(&weak.body) || weak.body.contains("common"),
        "{}",
        weak.body
    );
    assert!(
        !portal
            .get(Some("admin"), "/users")
            .await
            .body
            .contains("tom@vendor.example"),
        "a refused user was created"
    );
    assert_eq!(
        add("Tom Tech", "tom@vendor.example", PASSWORD).await.status,
        303
    );
    assert!(
        portal
            .get(Some("admin"), "/users")
            .await
            .body
            .contains("tom@vendor.example")
    );

    // The technician works until disabled; disabling ends the live session too.
    assert_eq!(
        portal
            .login("tom", "tom@vendor.example", PASSWORD)
            .await
            .status,
        303
    );
    assert!(
        portal
            .get(Some("tom"), "/")
            .await
            .body
            .contains("Welcome, Tom Tech")
    );
    assert_eq!(
        portal.get(Some("tom"), "/users").await.status,
        403,
        "a technician reached user management"
    );
    let tom = appliance::models::User::find_by_email(
        &mut portal.t.app.store.conn().unwrap(),
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
            .await
            .status,
        303
    );
    assert_eq!(
        portal.get(Some("tom"), "/").await.location.as_deref(),
        Some("/login"),
        "the disabled user's session lived on"
    );
    assert_eq!(
        portal
            .login("tom2", "tom@vendor.example", PASSWORD)
            .await
            .status,
        401
    );
    assert_eq!(
        portal
            .post(
                Some("admin"),
                &format!("/users/{}/enable", tom.id.0),
                &[("csrf", &csrf)]
            )
            .await
            .status,
        303
    );
    assert_eq!(
        portal
            .login("tom3", "tom@vendor.example", PASSWORD)
            .await
            .status,
        303
    );

    // Locked out, then unlocked by the admin before the lockout ends.
    for _ in 0..5 {
        portal
            .login("x", "tom@vendor.example", "Wrong-password-1")
            .await;
    }
    assert_eq!(
        portal
            .login("tom4", "tom@vendor.example", PASSWORD)
            .await
            .status,
        401
    );
    assert!(
        portal
            .get(Some("admin"), "/users")
            .await
            .body
            .contains("locked")
    );
    assert_eq!(
        portal
            .post(
                Some("admin"),
                &format!("/users/{}/unlock", tom.id.0),
                &[("csrf", &csrf)]
            )
            .await
            .status,
        303
    );
    assert_eq!(
        portal
            .login("tom5", "tom@vendor.example", PASSWORD)
            .await
            .status,
        303
    );

    // Another organisation's users are invisible and untouchable: 404, not 403.
    let actor = Actor::System("test".into());
    let other = appliance::models::Organisation::create(
        &portal.t.app.audit,
        &actor,
        "Other Plant",
        appliance::time::now_us(),
    )
    .unwrap();
    let eve = appliance::models::User::create(
        &portal.t.app.audit,
        &actor,
        other.id,
        "Eve",
        "eve@other.example",
        appliance::models::Role::Admin,
        appliance::time::now_us(),
    )
    .unwrap();
    assert!(
        !portal
            .get(Some("admin"), "/users")
            .await
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
                .await
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
