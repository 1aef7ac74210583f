//! The errors page: every service's recent warnings and errors, for the administrators of the
//! organisation that runs the appliance. The real `plantgate-web` binary, driven by `curl`,
//! logging a real warning (an email its relay refused) into its own error file.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use common::*;

use std::time::{Duration, Instant};

use appliance::Actor;
use appliance::accounts::{PasswordPolicy, set_password};
use appliance::models::{Organisation, Role, User};

/// The errors page as `jar` sees it, once it shows `wanted`.
fn errors_page_showing(portal: &Portal, jar: &str, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = portal.get(Some(jar), "/errors");
        assert_eq!(page.status, 200, "{}", page.body);
        if page.body.contains(wanted) {
            return page.body;
        }
        assert!(
            Instant::now() < deadline,
            "{wanted:?} never showed: {}",
            page.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_services_warnings_and_errors_are_shown_to_the_operators_administrators_only() {
    // A relay nobody listens at: every email the portal owes fails, with a warning.
    let relay = testkit::ClosedPort::new();
    let relay_port = relay.port();
    let portal = Portal::start(&format!(
        "logins_per_minute = 1000\nsecond_factor_roles = []\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {relay_port}\nsecurity = \"none\"\n\
         [access]\ntick_seconds = 1\n"
    ));
    portal.setup_admin();
    portal.login("ada", EMAIL, PASSWORD);
    let empty = portal.get(Some("ada"), "/errors");
    assert_eq!(empty.status, 200);
    assert!(
        empty
            .body
            .contains("No service has logged a warning or an error."),
        "{}",
        empty.body
    );
    assert!(empty.body.contains("href=\"/errors\""), "not in the menu");

    // Another service's refusal to start, as it records it before it can log.
    let data_dir = &portal.app.config.data_dir;
    appliance::telemetry::record_refusal(
        data_dir,
        "plantgate-ingest",
        "plantgate-ingest: cannot read <keys/ingest.key>: Permission denied",
    );
    let page = errors_page_showing(&portal, "ada", "plantgate-ingest");
    assert!(
        page.contains("plantgate-ingest: cannot read &#60;keys/ingest.key&#62;: Permission denied"),
        "{page}"
    );
    assert!(!page.contains("<keys/"), "unescaped: {page}");

    // Normal use: a new user's "your password was set" email, which the relay refuses.
    let csrf = portal.csrf("ada");
    let added = portal.post(
        Some("ada"),
        "/users",
        &[
            ("csrf", &csrf),
            ("name", "Tom Tech"),
            ("email", "tom@plant.example"),
            ("role", "technician"),
            ("password", "Schalt-Schrank-2026"),
        ],
    );
    assert_eq!(added.status, 303, "{}", added.body);
    let page = errors_page_showing(&portal, "ada", "email failed");
    let warning = page.find("email failed").unwrap();
    let row = &page[page[..warning].rfind("<tr").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("<td>plantgate-web</td>"), "{row}");
    assert!(row.contains("<td>WARN</td>"), "{row}");
    assert!(row.contains("reason="), "the fields are shown: {row}");
    assert!(
        warning < page.find("plantgate-ingest: cannot read").unwrap(),
        "newest first"
    );
    let files: Vec<String> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        files.contains(&"plantgate-web.errors".to_owned()),
        "{files:?}"
    );

    // Anyone else gets what the settings page gives them.
    assert_eq!(
        portal
            .login("tom", "tom@plant.example", "Schalt-Schrank-2026")
            .status,
        303
    );
    let actor = Actor::System("test".into());
    let other = Organisation::create(
        &portal.app.audit,
        &actor,
        "Werkzeugbau Süd",
        appliance::time::now_us(),
    )
    .unwrap();
    let bea = User::create(
        &portal.app.audit,
        &actor,
        other.id,
        "Bea Boss",
        "bea@werkzeug.example",
        Role::Admin,
        appliance::time::now_us(),
    )
    .unwrap();
    set_password(
        &portal.app.audit,
        &actor,
        &bea,
        PASSWORD,
        PasswordPolicy { min_chars: 12 },
        0,
    )
    .unwrap();
    assert_eq!(
        portal.login("bea", "bea@werkzeug.example", PASSWORD).status,
        303
    );
    for jar in ["tom", "bea"] {
        let refused = portal.get(Some(jar), "/errors");
        assert_eq!(refused.status, 403, "{jar}");
        assert_eq!(portal.get(Some(jar), "/settings").status, 403, "{jar}");
        assert!(!refused.body.contains("email failed"), "{jar}");
        assert!(
            !portal.get(Some(jar), "/").body.contains("href=\"/errors\""),
            "{jar}"
        );
    }
    let anonymous = portal.get(None, "/errors");
    assert_eq!(
        (anonymous.status, anonymous.header("location")),
        (303, Some("/login"))
    );
}
