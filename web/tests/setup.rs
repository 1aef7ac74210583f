//! First-run setup as the first administrator meets it, in process: the real application
//! (its middleware and route table) over a real store, without TLS or a second process
//! (`common::in_process`); the transport is `portal.rs`'s.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use common::in_process::InProcess;
use common::pages::is_escaped_script;
use common::{EMAIL, PASSWORD};
use testkit::store::Backend;

#[actix_web::test]
async fn first_run_setup_needs_the_enrolment_token_and_a_good_password() {
    let portal = InProcess::new(Backend::Sqlite);
    assert_eq!(
        portal.get(None, "/").await.location.as_deref(),
        Some("/setup")
    );
    let attempt = |token: String, password: &'static str| {
        let portal = &portal;
        async move {
            portal
                .post(
                    None,
                    "/setup",
                    &[
                        ("token", token.as_str()),
                        ("organisation", "Plant"),
                        ("name", "<script>alert(1)</script>"),
                        ("email", EMAIL),
                        ("password", password),
                    ],
                )
                .await
        }
    };
    let wrong_token = attempt("not-the-token".into(), PASSWORD).await;
    assert_eq!(wrong_token.status, 422);
    assert!(
        wrong_token.body.contains("enrolment token is not valid"),
        "{}",
        wrong_token.body
    );
    let weak = attempt(portal.token.clone(), "password1234").await;
    assert_eq!(weak.status, 422);
    assert!(weak.body.contains("common or breached"), "{}", weak.body);
    // What was typed comes back escaped, never as markup.
    assert!(is_escaped_script(&weak.body), "{}", weak.body);
    assert!(
        !weak.body.contains("password1234"),
        "the password was echoed back"
    );
    assert_eq!(
        portal.get(None, "/").await.location.as_deref(),
        Some("/setup"),
        "a refused setup created someone"
    );

    assert_eq!(attempt(portal.token.clone(), PASSWORD).await.status, 303);
    assert!(
        portal
            .get(None, "/setup")
            .await
            .body
            .contains("Already set up")
    );
    assert_eq!(
        attempt(portal.token.clone(), PASSWORD).await.status,
        200,
        "a second setup was accepted"
    );
    assert!(
        portal
            .actions()
            .contains(&"setup.first_admin.created".to_owned())
    );
    // The name is shown escaped once signed in.
    portal.login("admin", EMAIL, PASSWORD).await;
    let home = portal.get(Some("admin"), "/").await;
    assert!(is_escaped_script(&home.body), "{}", home.body);
}
