//! One's own sessions and password, in process (`common::in_process`: the real application
//! over a real store; its emails go through a real SMTP server): seeing and ending sessions, changing the password, giving it again before sensitive
//! pages, and the security notices that reach the user by email.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::in_process::InProcess;
use common::{EMAIL, PASSWORD};
use testkit::store::Backend;

use std::time::{Duration, Instant};

#[actix_web::test]
async fn a_user_sees_and_ends_their_own_sessions() {
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    portal.login("laptop", EMAIL, PASSWORD).await;
    portal.login("phone", EMAIL, PASSWORD).await;
    let page = portal.get(Some("laptop"), "/sessions").await;
    assert_eq!(page.body.matches("<tr>").count() - 1, 2, "{}", page.body);
    let other = page
        .body
        .split("/sessions/")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("an end button")
        .to_owned();
    let csrf = portal.csrf("laptop").await;
    assert_eq!(
        portal
            .post(
                Some("laptop"),
                &format!("/sessions/{other}/end"),
                &[("csrf", &csrf)]
            )
            .await
            .status,
        303
    );
    assert_eq!(
        portal.get(Some("phone"), "/").await.header("location"),
        Some("/login"),
        "the ended session still works"
    );
    assert_eq!(
        portal
            .post(Some("laptop"), "/sessions/999999/end", &[("csrf", &csrf)])
            .await
            .status,
        404
    );
}

#[actix_web::test]
async fn changing_the_password_needs_the_current_one_and_ends_every_session() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 100");
    portal.setup_admin().await;
    portal.login("laptop", EMAIL, PASSWORD).await;
    portal.login("phone", EMAIL, PASSWORD).await;
    let csrf = portal.csrf("laptop").await;
    let change = async |current: &str, new: &str| {
        portal
            .post(
                Some("laptop"),
                "/account/password",
                &[("csrf", &csrf), ("current", current), ("new", new)],
            )
            .await
    };
    assert_eq!(
        change("Wrong-password-1", "Neue-Schraube-88").await.status,
        422
    );
    let weak = change(PASSWORD, "password1234").await;
    assert_eq!(weak.status, 422);
    assert!(weak.body.contains("common"), "{}", weak.body);
    assert!(
        portal
            .get(Some("phone"), "/")
            .await
            .body
            .contains("Welcome"),
        "a refused change ended sessions"
    );

    let done = change(PASSWORD, "Neue-Schraube-88").await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Your password is changed"));
    assert_eq!(
        portal.get(Some("phone"), "/").await.header("location"),
        Some("/login"),
        "another session survived the change"
    );
    assert!(
        portal
            .get(Some("laptop"), "/")
            .await
            .body
            .contains("Welcome"),
        "the changing session was not renewed"
    );
    assert_eq!(portal.login("old", EMAIL, PASSWORD).await.status, 401);
    assert_eq!(
        portal.login("new", EMAIL, "Neue-Schraube-88").await.status,
        303
    );
    assert!(
        portal
            .actions()
            .contains(&"auth.password.changed".to_owned())
    );
}

#[actix_web::test]
async fn sensitive_pages_ask_for_the_password_again_once_it_is_stale() {
    // Long enough that a login and the next page fit inside it on a loaded machine.
    let portal = InProcess::with_web_settings(
        Backend::Sqlite,
        "reauthenticate_seconds = 5\nlogins_per_minute = 100",
    );
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    assert_eq!(
        portal.get(Some("admin"), "/users").await.status,
        200,
        "a fresh login had to confirm"
    );
    let csrf = portal.csrf("admin").await;
    // Once the window has passed (however long the machine takes to notice), the page asks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while portal.get(Some("admin"), "/users").await.header("location")
        != Some("/account/confirm?next=users")
    {
        assert!(
            Instant::now() < deadline,
            "a stale password was never asked for again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let add = portal
        .post(
            Some("admin"),
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "Tom"),
                ("email", "tom@vendor.example"),
                ("role", "viewer"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(add.header("location"), Some("/account/confirm?next=users"));
    assert!(
        appliance::models::User::find_by_email(
            &mut portal.app.store.conn().unwrap(),
            "tom@vendor.example"
        )
        .unwrap()
        .is_none(),
        "a stale session changed users"
    );

    let confirm = async |password: &str| {
        portal
            .post(
                Some("admin"),
                "/account/confirm",
                &[("csrf", &csrf), ("next", "users"), ("password", password)],
            )
            .await
    };
    assert_eq!(confirm("Wrong-password-1").await.status, 401);
    let ok = confirm(PASSWORD).await;
    assert_eq!((ok.status, ok.header("location")), (303, Some("/users")));
    assert_eq!(portal.get(Some("admin"), "/users").await.status, 200);
    // `next` names a page from a fixed list; anything else goes home.
    let elsewhere = portal
        .post(
            Some("admin"),
            "/account/confirm",
            &[
                ("csrf", &csrf),
                ("next", "https://evil.example/"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(elsewhere.header("location"), Some("/"));
    assert!(
        portal
            .actions()
            .contains(&"auth.reauthenticated".to_owned())
    );
}

#[actix_web::test]
async fn security_notices_reach_the_user_by_email() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = InProcess::with_web_settings(
        Backend::Sqlite,
        &format!(
            "second_factor_roles = []\nlogins_per_minute = 100\nlockout_attempts = 3\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
        ),
    );
    portal.setup_admin().await;
    portal.login("admin", EMAIL, PASSWORD).await;
    let csrf = portal.csrf("admin").await;
    let changed = portal
        .post(
            Some("admin"),
            "/account/password",
            &[
                ("csrf", &csrf),
                ("current", PASSWORD),
                ("new", "Zahnrad-Getriebe-2027"),
            ],
        )
        .await;
    assert!(matches!(changed.status, 200 | 303), "{}", changed.body);
    mail.wait_for("Subject: [Plantgate] Your password was set");
    // Three wrong passwords lock the account, and its owner is told from where.
    for _ in 0..3 {
        portal.login("guess", EMAIL, "Wrong-password-123").await;
    }
    mail.wait_for("Subject: [Plantgate] Your account was locked");
    mail.wait_for("the last from 127.0.0.1");
    assert!(portal.actions().iter().any(|a| a == "mail.sent"));
}
