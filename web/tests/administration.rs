//! Running the appliance from the portal: organisations, the TLS certificate, the mail
//! relay, editing and deleting users and sites, and one's own email address. The real
//! `plantgate-web` binary over real TLS, driven by `curl` and `openssl s_client`, with a real
//! SMTP server (aiosmtpd) receiving the mail.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::*;

use std::time::{Duration, Instant};

use appliance::schema::{mail_outbox, settings};
use diesel::prelude::*;
use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

const DAY: i64 = 86_400;

/// A certificate for `host` valid from `from_days` to `to_days` around now, and its key, as PEM.
fn certificate(host: &str, from_days: i64, to_days: i64) -> (String, String, String) {
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, host).unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    let now = appliance::time::now_us() / 1_000_000;
    cert.set_not_before(&Asn1Time::from_unix(now + from_days * DAY).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::from_unix(now + to_days * DAY).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns(host)
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None))
        .unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build();
    let fingerprint = hex::encode(cert.digest(MessageDigest::sha256()).unwrap());
    (
        String::from_utf8(cert.to_pem().unwrap()).unwrap(),
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        fingerprint,
    )
}

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

fn field_error<'a>(body: &'a str, field: &str) -> &'a str {
    let marker = format!("id=\"{field}-error\">");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no error beside {field}: {body}"))
        + marker.len();
    &body[at..at + body[at..].find("</p>").unwrap()]
}

fn count(actions: &[String], action: &str) -> usize {
    actions.iter().filter(|a| *a == action).count()
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

#[test]
fn the_operator_runs_organisations_whose_administrators_see_only_their_own() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = Portal::start(&format!(
        "logins_per_minute = 1000\nsecond_factor_roles = []\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
    ));
    portal.setup_admin();
    portal.login("ada", EMAIL, PASSWORD);
    let page = portal.get(Some("ada"), "/organisations");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Moulding Plant Nord") && page.body.contains("(operator)"));
    let csrf = portal.csrf_from(&page.body);
    let create = |name: &str, admin: &str, email: &str| {
        portal.post(
            Some("ada"),
            "/organisations",
            &[
                ("csrf", &csrf),
                ("name", name),
                ("admin_name", admin),
                ("admin_email", email),
            ],
        )
    };
    let before = portal.actions().len();
    for (name, admin, email, field) in [
        ("", "Bea", "bea@werkzeug.example", "name"),
        ("Moulding Plant Nord", "Bea", "bea@werkzeug.example", "name"),
        ("Werkzeugbau Süd", "", "bea@werkzeug.example", "admin_name"),
        ("Werkzeugbau Süd", "Bea", "bea at werkzeug", "admin_email"),
        ("Werkzeugbau Süd", "Bea", EMAIL, "admin_email"),
    ] {
        let refused = create(name, admin, email);
        assert_eq!(refused.status, 422, "{name}/{admin}/{email}");
        field_error(&refused.body, field);
    }
    assert_eq!(
        portal.actions().len(),
        before,
        "a refused form left a trace"
    );

    let created = create("Werkzeugbau Süd", "Bea Boss", "bea@werkzeug.example");
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
    let accepted = portal.post(
        None,
        &link,
        &[
            ("password", "Fraes-Maschine-88"),
            ("repeat", "Fraes-Maschine-88"),
        ],
    );
    assert!([200, 303].contains(&accepted.status), "{}", accepted.body);
    assert_eq!(
        portal
            .login("bea", "bea@werkzeug.example", "Fraes-Maschine-88")
            .status,
        303
    );

    // Bea runs her organisation, and nothing else.
    assert_eq!(portal.get(Some("bea"), "/organisations").status, 403);
    assert_eq!(portal.get(Some("bea"), "/settings").status, 403);
    // The audit log holds every organisation's actions: not hers to read, by page or API.
    assert_eq!(portal.get(Some("bea"), "/audit").status, 403);
    assert_eq!(portal.get(Some("bea"), "/audit/export").status, 403);
    assert!(
        !portal
            .get(Some("bea"), "/")
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
    assert_eq!(portal.api(Some(bea_token.reveal()), "/api/v1/audit").0, 403);
    let (ada_token, _) = portal.token(&["audit:read"], 30, 0);
    assert_eq!(portal.api(Some(&ada_token), "/api/v1/audit").0, 200);
    let users = portal.get(Some("bea"), "/users").body;
    assert!(users.contains("bea@werkzeug.example") && !users.contains(EMAIL));
    // Ada's site and users are "not found" to Bea, by every URL.
    let ada_csrf = portal.csrf("ada");
    let site = portal.post(
        Some("ada"),
        "/sites",
        &[
            ("csrf", &ada_csrf),
            ("name", "Hall 7"),
            ("location", "Nord"),
        ],
    );
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
    let bea_csrf = portal.csrf("bea");
    assert_eq!(portal.get(Some("bea"), &site).status, 404);
    assert_eq!(
        portal.get(Some("bea"), &format!("/users/{ada_id}")).status,
        404
    );
    assert_eq!(
        portal.get(Some("ada"), &format!("/users/{bea_id}")).status,
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
        let reply = portal.post(Some("bea"), &path, &all);
        assert_eq!(reply.status, 404, "Bea reached {path}: {}", reply.body);
    }
    assert!(portal.get(Some("ada"), &site).body.contains("Hall 7"));

    // A machine and a remote-access request in Ada's organisation: "not found" to Bea too.
    let policy = portal.post(
        Some("ada"),
        &format!("{site}/policy"),
        &[
            ("csrf", &ada_csrf),
            ("approval_required", "1"),
            ("max_minutes", "60"),
            ("device_allowlist", "192.168.50.0/28"),
        ],
    );
    assert_eq!(policy.status, 303, "{}", policy.body);
    let machine = portal.post(
        Some("ada"),
        &format!("{site}/machines"),
        &[
            ("csrf", &ada_csrf),
            ("name", "Press 1"),
            ("address", "192.168.50.10"),
            ("agents", "vnc"),
        ],
    );
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
    let access = format!("/access/{}", request.id);
    assert_eq!(portal.get(Some("ada"), &access).status, 200);
    assert_eq!(portal.get(Some("bea"), &access).status, 404);
    assert!(
        !portal
            .get(Some("bea"), "/access")
            .body
            .contains("PLC alarm")
    );
    assert!(!portal.get(Some("bea"), "/sites").body.contains("Hall 7"));
    assert!(!portal.get(Some("bea"), "/devices").body.contains("Hall 7"));
    for path in [
        format!("{access}/approve"),
        format!("{access}/deny"),
        format!("{access}/end"),
        format!("{access}/extend"),
        format!("{site}/machines/{}/remove", press.id),
        format!("{site}/approvers"),
        format!("{site}/invite"),
    ] {
        let reply = portal.post(
            Some("bea"),
            &path,
            &[("csrf", &bea_csrf), ("minutes", "30")],
        );
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
    let (status, machines) = portal.api(Some(bea_api.reveal()), "/api/v1/machines");
    assert_eq!(status, 200);
    assert!(!machines.to_string().contains("Press 1"), "{machines}");
    let (status, requests) = portal.api(Some(bea_api.reveal()), "/api/v1/access-requests");
    assert_eq!(status, 200);
    assert!(!requests.to_string().contains("PLC alarm"), "{requests}");
    let (status, users) = portal.api(Some(bea_api.reveal()), "/api/v1/users");
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
    let change = |what: &str, name: &str| {
        portal.post(
            Some("ada"),
            &format!("/organisations/{org}/{what}"),
            &[("csrf", &ada_csrf), ("name", name)],
        )
    };
    assert_eq!(change("rename", "").status, 422);
    assert_eq!(change("rename", "Werkzeugbau Sued").status, 303);
    assert!(
        portal
            .get(Some("ada"), "/organisations")
            .body
            .contains("Werkzeugbau Sued")
    );
    assert_eq!(change("disable", "").status, 303);
    assert_eq!(
        portal.get(Some("bea"), "/").status,
        303,
        "a disabled organisation's session lives"
    );
    assert_ne!(
        portal
            .login("bea2", "bea@werkzeug.example", "Fraes-Maschine-88")
            .header("location"),
        Some("/"),
        "a disabled organisation's user signed in"
    );
    assert_eq!(change("enable", "").status, 303);
    assert_eq!(
        portal
            .login("bea3", "bea@werkzeug.example", "Fraes-Maschine-88")
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
        let refused = portal.post(
            Some("ada"),
            &format!("/organisations/{operator}/{what}"),
            &[("csrf", &ada_csrf)],
        );
        assert_eq!(refused.status, 422, "the operator organisation: {what}");
        assert!(refused.body.contains("owns the appliance"));
    }
    assert_eq!(change("delete", "").status, 303);
    assert!(
        !portal
            .get(Some("ada"), "/organisations")
            .body
            .contains("Werkzeugbau")
    );
    assert_ne!(
        portal
            .login("bea4", "bea@werkzeug.example", "Fraes-Maschine-88")
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

#[test]
fn users_and_sites_are_edited_and_deleted_and_an_email_change_is_told_to_both_addresses() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = Portal::start(&format!(
        "logins_per_minute = 1000\nsecond_factor_roles = []\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
    ));
    portal.setup_admin();
    portal.login("ada", EMAIL, PASSWORD);
    let csrf = portal.csrf("ada");
    let add = portal.post(
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
    let edit = |id: i64, name: &str, email: &str, role: &str| {
        portal.post(
            Some("ada"),
            &format!("/users/{id}"),
            &[
                ("csrf", &csrf),
                ("name", name),
                ("email", email),
                ("role", role),
            ],
        )
    };
    let page = portal.get(Some("ada"), &format!("/users/{tom}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("tom@plant.example"));
    assert_eq!(edit(tom, "", "tom@plant.example", "approver").status, 422);
    assert_eq!(
        edit(tom, "Tom", "tom@plant.example", "overlord").status,
        422
    );
    let taken = edit(tom, "Tom", EMAIL, "approver");
    assert_eq!(taken.status, 422);
    assert!(field_error(&taken.body, "email").contains("in use"));
    assert_eq!(
        edit(tom, "Tom Approver", "tom@plant.example", "approver").status,
        303
    );
    assert!(
        portal
            .get(Some("ada"), "/users")
            .body
            .contains("Tom Approver")
    );
    let own_role = edit(ada, "Ada Admin", EMAIL, "viewer");
    assert_eq!(own_role.status, 422);
    assert!(field_error(&own_role.body, "role").contains("own role"));
    assert_eq!(
        portal
            .post(
                Some("ada"),
                &format!("/users/{ada}/delete"),
                &[("csrf", &csrf)]
            )
            .status,
        422
    );
    let deleted = portal.post(
        Some("ada"),
        &format!("/users/{tom}/delete"),
        &[("csrf", &csrf)],
    );
    assert_eq!(deleted.status, 303);
    assert!(
        !portal
            .get(Some("ada"), "/users")
            .body
            .contains("tom@plant.example")
    );
    assert_eq!(
        portal.get(Some("ada"), &format!("/users/{tom}")).status,
        404
    );

    // A site is renamed, then deleted with its machine.
    let site = portal.post(
        Some("ada"),
        "/sites",
        &[("csrf", &csrf), ("name", "Hall 7"), ("location", "Nord")],
    );
    let site = site.header("location").unwrap().to_owned();
    let renamed = portal.post(
        Some("ada"),
        &format!("{site}/details"),
        &[
            ("csrf", &csrf),
            ("name", "Hall 7 East"),
            ("location", "Gate 2"),
        ],
    );
    assert_eq!(renamed.status, 303);
    let shown = portal.get(Some("ada"), &site).body;
    assert!(shown.contains("Hall 7 East") && shown.contains("Gate 2"));
    let nameless = portal.post(
        Some("ada"),
        &format!("{site}/details"),
        &[("csrf", &csrf), ("name", " "), ("location", "")],
    );
    assert_eq!(nameless.status, 422);
    assert_eq!(
        portal
            .post(Some("ada"), &format!("{site}/delete"), &[("csrf", &csrf)])
            .status,
        303
    );
    assert_eq!(portal.get(Some("ada"), &site).status, 404);

    // Ada changes her own address: both addresses are told; she signs in with the new one.
    let refused = portal.post(
        Some("ada"),
        "/account/email",
        &[("csrf", &csrf), ("email", "ada at home")],
    );
    assert_eq!(refused.status, 422);
    field_error(&refused.body, "email");
    let changed = portal.post(
        Some("ada"),
        "/account/email",
        &[("csrf", &csrf), ("email", "ada.lovelace@plant.example")],
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert!(changed.body.contains("ada.lovelace@plant.example"));
    mail.wait_for_message(EMAIL, &["Your email address was changed"]);
    mail.wait_for_message(
        "ada.lovelace@plant.example",
        &["This is now your account's email address"],
    );
    assert_ne!(
        portal.login("old", EMAIL, PASSWORD).header("location"),
        Some("/")
    );
    assert_eq!(
        portal
            .login("new", "ada.lovelace@plant.example", PASSWORD)
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
fn audit_length(portal: &Portal) -> usize {
    portal.actions().len()
}

#[test]
fn every_form_answers_garbage_with_a_4xx_and_never_shows_it_unescaped() {
    let portal = Portal::start("logins_per_minute = 1000");
    portal.setup_admin();
    portal.login("admin", EMAIL, PASSWORD);
    let csrf = portal.csrf("admin");
    let site = portal.post(
        Some("admin"),
        "/sites",
        &[("csrf", &csrf), ("name", "Hall 7"), ("location", "")],
    );
    let site = site.header("location").unwrap().to_owned();
    let add = portal.post(
        Some("admin"),
        "/users",
        &[
            ("csrf", &csrf),
            ("name", "Tom"),
            ("email", "tom@plant.example"),
            ("role", "technician"),
            ("password", "Schalt-Schrank-2026"),
        ],
    );
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
            let reply = portal.post(Some("admin"), path, &all);
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
        let reply = portal.post(Some("admin"), path, &all);
        assert_eq!(reply.status, 413, "{path} took a huge body: {}", reply.body);
        let body = format!("csrf={csrf}&{}=%FF%FE%FD", fields[0]);
        let reply = portal.curl(
            Some("admin"),
            &[
                "-H",
                &format!("Origin: {}", portal.origin()),
                "--data-binary",
                &body,
                &format!("{}{path}", portal.origin()),
            ],
        );
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
        let reply = portal.get(Some("admin"), page);
        assert!(reply.status < 500, "{page}: {}", reply.status);
        assert!(
            !reply.body.contains(script),
            "{page} shows the script unescaped"
        );
    }
}
