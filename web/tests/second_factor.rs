//! The second factor in the portal, in process (`common::in_process`: the real application
//! over a real store; the emailed codes go through a real SMTP server): enrolling an authenticator app at the first sign-in, and the emailed one-time code.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::in_process::InProcess;
use common::{EMAIL, PASSWORD};
use testkit::store::Backend;

use std::time::{Duration, Instant};

/// The value of a hidden or text input in a page.
fn input_value(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    body[at..].split('"').next().unwrap_or_default().to_owned()
}

#[actix_web::test]
async fn an_admin_enrols_a_second_factor_at_first_login_and_needs_it_from_then_on() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "second_factor_roles = [\"admin\"]");
    portal.setup_admin().await;
    let login = portal.login("a", EMAIL, PASSWORD).await;
    assert_eq!(login.header("location"), Some("/account/second-factor"));
    // A password alone reaches nothing else.
    assert_eq!(
        portal.get(Some("a"), "/sessions").await.header("location"),
        Some("/account/second-factor")
    );

    let enrol = portal.get(Some("a"), "/account/second-factor").await;
    assert!(enrol.body.contains("<svg"), "no QR code: {}", enrol.body);
    let secret = input_value(&enrol.body, "secret");
    let csrf = input_value(&enrol.body, "csrf");
    let wrong = portal
        .post(
            Some("a"),
            "/account/second-factor",
            &[("csrf", &csrf), ("secret", &secret), ("code", "000000")],
        )
        .await;
    assert_eq!(wrong.status, 422);
    let now = appliance::time::now_us();
    let code = appliance::second_factor::code_at(&secret, now).unwrap();
    let done = portal
        .post(
            Some("a"),
            "/account/second-factor",
            &[("csrf", &csrf), ("secret", &secret), ("code", &code)],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let recovery: Vec<String> = done
        .body
        .split("<li><code>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(recovery.len(), 10, "{}", done.body);
    // The store holds the secret sealed under the key in {data_dir}/keys, not the secret.
    {
        use diesel::prelude::*;
        let stored: Option<String> = appliance::schema::users::table
            .filter(appliance::schema::users::email.eq(EMAIL))
            .select(appliance::schema::users::totp_secret)
            .first(&mut portal.app.store.conn().unwrap())
            .unwrap();
        let stored = stored.expect("enrolled");
        assert!(
            stored.starts_with("sealed:") && !stored.contains(&secret),
            "{stored}"
        );
    }
    assert!(
        portal.get(Some("a"), "/").await.body.contains("Welcome"),
        "enrolment did not complete the sign-in"
    );

    // The next login asks for the second factor before anything else.
    let login = portal.login("b", EMAIL, PASSWORD).await;
    assert_eq!(login.header("location"), Some("/login/second-factor"));
    assert_eq!(
        portal.get(Some("b"), "/").await.header("location"),
        Some("/login/second-factor")
    );
    let csrf = input_value(
        &portal.get(Some("b"), "/login/second-factor").await.body,
        "csrf",
    );
    let submit = async |code: &str| {
        portal
            .post(
                Some("b"),
                "/login/second-factor",
                &[("csrf", &csrf), ("code", code)],
            )
            .await
    };
    assert_eq!(submit(&code).await.status, 401, "a code was accepted twice");
    assert_eq!(submit("123456").await.status, 401);
    assert_eq!(
        submit(&recovery[0]).await.status,
        303,
        "a recovery code was refused"
    );
    assert!(portal.get(Some("b"), "/").await.body.contains("Welcome"));

    portal.login("c", EMAIL, PASSWORD).await;
    let csrf = input_value(
        &portal.get(Some("c"), "/login/second-factor").await.body,
        "csrf",
    );
    let reused = portal
        .post(
            Some("c"),
            "/login/second-factor",
            &[("csrf", &csrf), ("code", &recovery[0])],
        )
        .await;
    assert_eq!(reused.status, 401, "a recovery code worked twice");
    let next_step = appliance::second_factor::code_at(&secret, now + 30_000_000).unwrap();
    assert_eq!(
        portal
            .post(
                Some("c"),
                "/login/second-factor",
                &[("csrf", &csrf), ("code", &next_step)]
            )
            .await
            .status,
        303
    );
    let actions = portal.actions();
    assert!(actions.contains(&"auth.second_factor.enabled".to_owned()));
    assert!(
        actions
            .iter()
            .filter(|a| *a == "auth.second_factor.failed")
            .count()
            >= 3
    );
}

#[actix_web::test]
async fn the_email_one_time_code_is_a_second_factor_end_to_end() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = InProcess::with_web_settings(
        Backend::Sqlite,
        &format!(
            "second_factor_roles = [\"admin\"]\nlogins_per_minute = 100\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
        ),
    );
    portal.setup_admin().await;
    let code_in = |mail: &testkit::MailCatcher, nth: usize| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = mail.text();
            let codes: Vec<String> = text
                .split("Your Plantgate sign-in code is ")
                .skip(1)
                .map(|rest| rest.chars().take(8).collect())
                .collect();
            if codes.len() > nth {
                return codes[nth].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no sign-in code #{nth}; received:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // First login: the admin must enrol, and picks codes by email.
    let first = portal.login("a", EMAIL, PASSWORD).await;
    assert_eq!(first.header("location"), Some("/account/second-factor"));
    let enrol = portal.get(Some("a"), "/account/second-factor").await;
    assert!(
        enrol.body.contains("No authenticator app?"),
        "{}",
        enrol.body
    );
    let csrf = portal.csrf_from(&enrol.body);
    let sent = portal
        .post(
            Some("a"),
            "/account/second-factor/email-code",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let code = code_in(&mail, 0);
    let wrong = portal
        .post(
            Some("a"),
            "/account/second-factor/email",
            &[("csrf", &csrf), ("code", "00000000")],
        )
        .await;
    assert_eq!(wrong.status, 422);
    let done = portal
        .post(
            Some("a"),
            "/account/second-factor/email",
            &[("csrf", &csrf), ("code", &code)],
        )
        .await;
    assert_eq!(
        (done.status, done.header("location")),
        (303, Some("/")),
        "{}",
        done.body
    );
    assert!(portal.get(Some("a"), "/").await.body.contains("Welcome"));

    // Later logins ask for a code from the email; a used code does not work twice.
    let again = portal.login("b", EMAIL, PASSWORD).await;
    assert_eq!(again.header("location"), Some("/login/second-factor"));
    let page = portal.get(Some("b"), "/login/second-factor").await;
    assert!(page.body.contains("Code from your email"), "{}", page.body);
    let csrf = portal.csrf_from(&page.body);
    let replay = portal
        .post(
            Some("b"),
            "/login/second-factor",
            &[("csrf", &csrf), ("code", &code)],
        )
        .await;
    assert_eq!(replay.status, 401, "a spent code was accepted");
    assert_eq!(
        portal
            .post(Some("b"), "/login/second-factor/email", &[("csrf", &csrf)])
            .await
            .status,
        303
    );
    let second = code_in(&mail, 1);
    let signed_in = portal
        .post(
            Some("b"),
            "/login/second-factor",
            &[("csrf", &csrf), ("code", &second)],
        )
        .await;
    assert_eq!(
        (signed_in.status, signed_in.header("location")),
        (303, Some("/"))
    );
    assert!(portal.get(Some("b"), "/").await.body.contains("Welcome"));
    let actions = portal.actions();
    for expected in [
        "auth.email_code.sent",
        "auth.second_factor.enabled",
        "auth.second_factor.accepted",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected}: {actions:?}"
        );
    }
}
