//! Running the appliance from the portal: the TLS certificate and the mail relay (organisations,
//! and editing users and sites, have files of their own). The real `plantgate-web` binary
//! over real TLS, driven by `curl` and `openssl s_client`, with a real SMTP server
//! (aiosmtpd) receiving the mail.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::certificates::certificate;
use common::pages::field_error;
use common::*;

use std::time::{Duration, Instant};

use appliance::schema::settings;
use diesel::prelude::*;
use openssl::hash::MessageDigest;
use openssl::x509::X509;

/// The SHA-256 fingerprint of the certificate the portal serves now, as `s_client` sees it,
/// with SNI or without.
fn served_fingerprint(portal: &Portal, sni: bool) -> String {
    let sni_args: &[&str] = if sni {
        &["-servername", "plantgate.plant.example"]
    } else {
        &["-noservername"]
    };
    let out = portal.s_client(sni_args);
    let pem_start = out
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let pem_end = out.find("-----END CERTIFICATE-----").unwrap() + 25;
    let cert = X509::from_pem(&out.as_bytes()[pem_start..pem_end]).unwrap();
    hex::encode(cert.digest(MessageDigest::sha256()).unwrap())
}

#[test]
fn the_portal_certificate_is_replaced_without_a_restart_and_bad_pairs_change_nothing() {
    let portal = Portal::start(
        "logins_per_minute = 100\nsecond_factor_roles = []\n[access]\ntick_seconds = 1",
    );
    portal.setup_admin();
    portal.login("admin", EMAIL, PASSWORD);
    let page = portal.get(Some("admin"), "/settings");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("(self-signed)"), "{}", page.body);
    let csrf = portal.csrf_from(&page.body);
    let first = served_fingerprint(&portal, false);
    assert!(
        page.body.contains(&first),
        "the page shows another fingerprint"
    );

    let (cert, key, fingerprint) = certificate("plantgate.plant.example", -1, 90);
    let (_, other_key, _) = certificate("other.example", -1, 90);
    let (expired, expired_key, _) = certificate("plantgate.plant.example", -60, -1);
    let install = |cert: &str, key: &str| {
        portal.post(
            Some("admin"),
            "/settings/certificate",
            &[("csrf", &csrf), ("certificate", cert), ("private_key", key)],
        )
    };
    let garbage = install("hello", &key);
    assert_eq!(garbage.status, 422);
    assert!(field_error(&garbage.body, "certificate").contains("PEM"));
    let mismatched = install(&cert, &other_key);
    assert_eq!(mismatched.status, 422);
    assert!(field_error(&mismatched.body, "private_key").contains("does not belong"));
    let stale = install(&expired, &expired_key);
    assert_eq!(stale.status, 422);
    assert!(field_error(&stale.body, "certificate").contains("expired"));
    let no_key = install(&cert, "");
    assert_eq!(no_key.status, 422);
    assert_eq!(
        served_fingerprint(&portal, false),
        first,
        "a refused certificate was served"
    );

    let installed = install(&cert, &key);
    assert_eq!(installed.status, 200, "{}", installed.body);
    assert!(installed.body.contains("certificate-done"));
    assert!(installed.body.contains("CN=plantgate.plant.example"));
    // The same process, no restart: the next handshake, with SNI or without, gets it.
    assert_eq!(served_fingerprint(&portal, false), fingerprint);
    assert_eq!(served_fingerprint(&portal, true), fingerprint);

    // The command line's way (the same core function): the worker picks it up.
    let (cli_cert, cli_key, cli_fingerprint) = certificate("plantgate.plant.example", -1, 30);
    appliance::tls::replace_portal_certificate(
        &portal.app.audit,
        &appliance::Actor::System("cli".into()),
        "cli",
        &portal.app.config,
        cli_cert.as_bytes(),
        cli_key.as_bytes(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while served_fingerprint(&portal, false) != cli_fingerprint {
        assert!(
            Instant::now() < deadline,
            "the command line's certificate was not served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let actions = portal.actions();
    assert_eq!(count(&actions, "tls.certificate.refused"), 4);
    assert_eq!(count(&actions, "tls.certificate.replaced"), 2);
    // The key never reaches the audit log.
    let mut audit = String::new();
    appliance::audit::export::for_each_record(
        &mut portal.app.store.conn().unwrap(),
        &Default::default(),
        |r| {
            audit.push_str(&r.details.to_string());
            Ok(true)
        },
    )
    .unwrap();
    assert!(!audit.contains("PRIVATE KEY"));
}

#[test]
fn the_mail_relay_set_in_the_portal_carries_every_email_and_keeps_its_password_sealed() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    // No [smtp] in the file: the relay comes from the portal alone.
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    portal.login("admin", EMAIL, PASSWORD);
    let page = portal.get(Some("admin"), "/settings");
    assert!(page.body.contains("From the configuration file"));
    let csrf = portal.csrf_from(&page.body);
    let port = smtp_port.to_string();
    let save = |fields: &[(&str, &str)]| {
        let mut all = vec![
            ("csrf", csrf.as_str()),
            ("host", "127.0.0.1"),
            ("port", port.as_str()),
            ("security", "none"),
            ("username", ""),
            ("password", ""),
            ("from", "plantgate@plant.example"),
        ];
        for (k, v) in fields {
            all.retain(|(key, _)| key != k);
            all.push((k, v));
        }
        portal.post(Some("admin"), "/settings/mail", &all)
    };
    let stored = || -> i64 {
        settings::table
            .count()
            .get_result(&mut portal.app.store.conn().unwrap())
            .unwrap()
    };
    for (field, value) in [
        ("port", "0"),
        ("port", "smtp"),
        ("host", "mail relay;rm"),
        ("security", "ssl2"),
        ("from", "not an address"),
    ] {
        let refused = save(&[(field, value)]);
        assert_eq!(refused.status, 422, "{field}={value}");
        assert!(!field_error(&refused.body, field).is_empty());
        assert_eq!(stored(), 0, "{field}={value} was stored");
    }
    let no_password = save(&[("username", "relay-user")]);
    assert_eq!(no_password.status, 422);
    field_error(&no_password.body, "username");

    // With a login: the password is sealed in the store and never shown or audited.
    let secret = "Relay-Secret-4711";
    let with_login = save(&[("username", "relay-user"), ("password", secret)]);
    assert_eq!(with_login.status, 200, "{}", with_login.body);
    assert!(!with_login.body.contains(secret));
    assert!(with_login.body.contains("stored; leave empty to keep it"));
    let value: String = settings::table
        .select(settings::value)
        .first(&mut portal.app.store.conn().unwrap())
        .unwrap();
    assert!(!value.contains(secret), "the password is stored in clear");
    let mut audit = String::new();
    appliance::audit::export::for_each_record(
        &mut portal.app.store.conn().unwrap(),
        &Default::default(),
        |r| {
            audit.push_str(&r.details.to_string());
            Ok(true)
        },
    )
    .unwrap();
    assert!(audit.contains("password_changed") && !audit.contains(secret));

    // aiosmtpd offers no login, so the relay is saved without one to send.
    assert_eq!(save(&[]).status, 200);
    let tested = portal.post(Some("admin"), "/settings/mail/test", &[("csrf", &csrf)]);
    assert_eq!(tested.status, 200, "{}", tested.body);
    assert!(
        tested.body.contains("A test email was sent"),
        "{}",
        tested.body
    );
    mail.wait_for_message(EMAIL, &["[Plantgate] Test email"]);
    // The worker sends the outbox through it too: a password change's notice arrives.
    let changed = portal.post(
        Some("admin"),
        "/account/password",
        &[
            ("csrf", &csrf),
            ("current", PASSWORD),
            ("new", "Neue-Schraube-2027"),
        ],
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    mail.wait_for_message(EMAIL, &["Your password was set"]);

    // A relay that does not answer: the test says what went wrong, and nothing breaks.
    portal.login("admin", EMAIL, "Neue-Schraube-2027");
    let csrf = portal.csrf("admin");
    let relay = testkit::ClosedPort::new();
    let dead = relay.port().to_string();
    let moved = portal.post(
        Some("admin"),
        "/settings/mail",
        &[
            ("csrf", &csrf),
            ("host", "127.0.0.1"),
            ("port", &dead),
            ("security", "none"),
            ("from", "plantgate@plant.example"),
        ],
    );
    assert_eq!(moved.status, 200);
    let failed = portal.post(Some("admin"), "/settings/mail/test", &[("csrf", &csrf)]);
    assert_eq!(failed.status, 422);
    assert!(failed.body.contains("The test email was not sent"));
    let actions = portal.actions();
    assert_eq!(count(&actions, "settings.smtp.changed"), 3);
    assert_eq!(count(&actions, "settings.smtp.tested"), 2);
}
