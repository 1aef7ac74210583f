//! Sign-in under attack, against the real `plantgate-web` binary driven by `curl`: guesses
//! that arrive at once, a lockout that a stranger cannot turn against the owner,
//! second-factor guessing, and forwarding headers from anyone but a trusted proxy.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use appliance::audit::chain::AuditRecord;
use common::*;
use testkit::on_both_backends;
use testkit::store::Backend;

fn details(record: &AuditRecord) -> serde_json::Value {
    serde_json::from_str(&record.details).unwrap_or(serde_json::Value::Null)
}

/// The records of `action` whose details say `key` = `value`.
fn count(records: &[AuditRecord], action: &str, key: &str, value: &str) -> usize {
    records
        .iter()
        .filter(|r| r.action == action && details(r)[key] == value)
        .count()
}

/// Refused sign-ins per reason: those recorded one by one (`auth.login.failed`,
/// `auth.login.throttled`) and those counted in summaries (`auth.login.refused.summary`).
fn refused_by_reason(records: &[AuditRecord]) -> std::collections::BTreeMap<String, usize> {
    let mut by_reason = std::collections::BTreeMap::new();
    for record in records {
        let details = details(record);
        match record.action.as_str() {
            "auth.login.failed" => {
                let reason = details["reason"].as_str().unwrap_or_default().to_owned();
                *by_reason.entry(reason).or_default() += 1;
            }
            "auth.login.throttled" => *by_reason.entry("throttled".to_owned()).or_default() += 1,
            appliance::refusals::SUMMARY_ACTION => {
                for (reason, n) in details["reasons"].as_object().unwrap() {
                    *by_reason.entry(reason.clone()).or_default() += n.as_u64().unwrap() as usize;
                }
            }
            _ => {}
        }
    }
    by_reason
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn jar_has_browser_cookie(portal: &Portal, jar: &str) -> bool {
    std::fs::read_to_string(portal.jar(jar))
        .unwrap_or_default()
        .contains(portal::BROWSER_COOKIE)
}

const GUESSES: usize = 50;

/// 50 wrong passwords sent at the same moment, each by its own `curl`: exactly the
/// configured 5 are checked, the account locks once, and the right password is refused.
fn concurrent_wrong_passwords_lock_after_exactly_the_configured_count(backend: Backend) {
    // Per-address throttling would refuse most of the 50 first; here the lockout is tested.
    let mut portal = Portal::start_on(backend, "logins_per_minute = 1000\nlockout_attempts = 5");
    portal.setup_admin();
    let start = Barrier::new(GUESSES);
    let statuses = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..GUESSES {
            let (portal, start, statuses) = (&portal, &start, &statuses);
            s.spawn(move || {
                start.wait();
                let reply =
                    portal.login(&format!("guess-{i}"), EMAIL, &format!("Wrong-guess-{i}x"));
                statuses.lock().unwrap().push(reply.status);
            });
        }
    });
    let statuses = statuses.into_inner().unwrap();
    assert_eq!(statuses, vec![401; GUESSES], "every guess is refused alike");

    let right = portal.login("owner", EMAIL, PASSWORD);
    assert_eq!(
        right.status, 401,
        "the right password opened a locked account"
    );
    assert!(right.body.contains(portal::pages::LOGIN_REFUSED));

    // Refusals after the first of a kind are summarised per address; stopping the portal
    // writes the summaries still open.
    assert!(portal.terminate(), "the portal did not stop cleanly");
    let records = portal.records();
    let refused = refused_by_reason(&records);
    let checked = refused.get("wrong password").copied().unwrap_or(0);
    let refused_unchecked = refused.get("account locked").copied().unwrap_or(0);
    assert_eq!(
        (checked, refused_unchecked),
        (5, GUESSES - 5 + 1),
        "exactly 5 passwords may be checked; the rest (and the right one) are refused unchecked"
    );
    let locks: Vec<_> = records
        .iter()
        .filter(|r| r.action == "auth.account.locked")
        .collect();
    assert_eq!(locks.len(), 1, "one lock, told once");
    assert_eq!(details(locks[0])["after_failures"], 5);
    assert_eq!(details(locks[0])["scope"], "new browsers");
    // The store's count is the configured number, not "old count + 1" of a lost race.
    let (failures, locked_until) = {
        use appliance::schema::users;
        use diesel::prelude::*;
        users::table
            .filter(users::email.eq(EMAIL))
            .select((users::failed_logins, users::locked_until_us))
            .first::<(i32, Option<i64>)>(&mut portal.app.store.conn().unwrap())
            .unwrap()
    };
    assert_eq!(failures, 5);
    assert!(locked_until.is_some_and(|until| until > appliance::time::now_us()));
}

on_both_backends!(concurrent_wrong_passwords_lock_after_exactly_the_configured_count);

/// Someone who knows the owner's email keeps guessing from another address. The account
/// locks for browsers it has never signed in with, the attacker's included, but the owner's
/// browser, which signed in before, still signs in; and that browser's cookie alone buys
/// no more than its own 5 guesses.
#[test]
fn the_owner_signs_in_from_a_known_browser_while_an_attacker_keeps_failing() {
    let portal = Portal::start("logins_per_minute = 1000");
    portal.setup_admin();
    let first = portal.login("owner", EMAIL, PASSWORD);
    assert_eq!(first.status, 303, "{}", first.body);
    assert!(
        jar_has_browser_cookie(&portal, "owner"),
        "a complete sign-in marks the browser"
    );
    let csrf = portal.csrf("owner");
    portal.post(Some("owner"), "/logout", &[("csrf", &csrf)]);
    assert!(
        jar_has_browser_cookie(&portal, "owner"),
        "logging out does not forget the browser"
    );

    let stop = AtomicBool::new(false);
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let attacker_statuses = std::thread::scope(|s| {
        let attacker = s.spawn(|| {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = portal.post_with(
                    Some("attacker"),
                    "/login",
                    &[("email", EMAIL), ("password", "Guessing-1234")],
                    &["--interface", "127.0.0.2"],
                );
                statuses.push(reply.status);
                attempts.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
            statuses
        });
        wait_until("the attacker to lock the account", || {
            portal.actions().iter().any(|a| a == "auth.account.locked")
        });

        // A browser that never signed in meets the lock, even with the right password.
        let stranger = portal.login("new-browser", EMAIL, PASSWORD);
        assert_eq!(stranger.status, 401);
        assert!(!jar_has_browser_cookie(&portal, "new-browser"));

        // The owner's own browser signs in while the attacker goes on failing.
        let before_owner = attempts.load(Ordering::SeqCst);
        let owner = portal.login("owner", EMAIL, PASSWORD);
        assert_eq!(
            (owner.status, owner.header("location")),
            (303, Some("/")),
            "the owner was locked out by a stranger: {}",
            owner.body
        );
        assert!(portal.get(Some("owner"), "/").body.contains("Welcome"));
        let csrf = portal.csrf("owner");
        portal.post(Some("owner"), "/logout", &[("csrf", &csrf)]);
        // The attacker has gone on failing past the owner's sign-in (which it did not stop).
        wait_until("the attacker's next attempts", || {
            attempts.load(Ordering::SeqCst) >= (before_owner + 2).max(6)
        });
        stop.store(true, Ordering::Relaxed);
        attacker.join().unwrap()
    });
    assert!(
        attacker_statuses.iter().filter(|s| **s == 401).count() >= 6
            && attacker_statuses.iter().all(|s| matches!(s, 401 | 429)),
        "the attacker is refused every time: {attacker_statuses:?}"
    );
    assert!(
        !jar_has_browser_cookie(&portal, "attacker"),
        "a refused browser is not remembered"
    );

    // A stolen browser cookie gives its own 5 guesses, no more: then that browser is
    // locked too, even for the right password.
    for _ in 0..5 {
        assert_eq!(portal.login("owner", EMAIL, "Wrong-again-42").status, 401);
    }
    assert_eq!(portal.login("owner", EMAIL, PASSWORD).status, 401);

    let records = portal.records();
    assert_eq!(
        count(&records, "auth.login.succeeded", "browser", "known"),
        1,
        "the owner's second sign-in counted on the known browser"
    );
    assert_eq!(
        count(&records, "auth.account.locked", "scope", "new browsers"),
        1
    );
    assert_eq!(
        count(&records, "auth.account.locked", "scope", "known browser"),
        1
    );
    assert!(
        records
            .iter()
            .any(|r| r.action == "auth.account.locked" && r.source == "127.0.0.2"),
        "the lock names the attacker's address"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == "auth.browser.remembered")
            .count(),
        1,
        "the owner's browser was remembered once and then recognised"
    );
}

/// A six-digit string that is no TOTP code of `secret` for the next few minutes.
fn wrong_code(secret: &str) -> String {
    let now = appliance::time::now_us();
    let valid: Vec<String> = (-2..=8)
        .map(|step| appliance::second_factor::code_at(secret, now + step * 30_000_000).unwrap())
        .collect();
    (0..10)
        .map(|d| d.to_string().repeat(6))
        .find(|candidate| !valid.contains(candidate))
        .unwrap()
}

fn input_value(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    body[at..].split('"').next().unwrap_or_default().to_owned()
}

/// Someone with the password guesses TOTP codes from three addresses. Five wrong codes
/// are answered as wrong; the sixth ends the sign-in (every sign-in still waiting for a
/// code, in fact), the owner is told by email through a real SMTP server, and even the
/// right code is refused for a while.
#[test]
fn the_sixth_wrong_second_factor_code_ends_the_pending_sign_in_and_tells_the_owner() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = Portal::start(&format!(
        "second_factor_roles = [\"admin\"]\nlogins_per_minute = 100\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
    ));
    portal.setup_admin();
    // The owner enrols an authenticator app at the first sign-in.
    assert_eq!(
        portal.login("owner", EMAIL, PASSWORD).header("location"),
        Some("/account/second-factor")
    );
    let enrol = portal.get(Some("owner"), "/account/second-factor");
    let secret = input_value(&enrol.body, "secret");
    let code = appliance::second_factor::code_at(&secret, appliance::time::now_us()).unwrap();
    let enrolled = portal.post(
        Some("owner"),
        "/account/second-factor",
        &[
            ("csrf", &input_value(&enrol.body, "csrf")),
            ("secret", &secret),
            ("code", &code),
        ],
    );
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);

    // The attacker has the password and signs in from three addresses.
    let wrong = wrong_code(&secret);
    let addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let mut forms = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let jar = format!("attacker-{i}");
        let login = portal.post_with(
            Some(&jar),
            "/login",
            &[("email", EMAIL), ("password", PASSWORD)],
            &["--interface", address],
        );
        assert_eq!(login.header("location"), Some("/login/second-factor"));
        let page = portal.get(Some(&jar), "/login/second-factor");
        forms.push((jar, input_value(&page.body, "csrf"), *address));
    }
    let guess = |n: usize, code: &str| {
        let (jar, csrf, address) = &forms[n % forms.len()];
        portal.post_with(
            Some(jar),
            "/login/second-factor",
            &[("csrf", csrf), ("code", code)],
            &["--interface", address],
        )
    };
    for n in 0..5 {
        let reply = guess(n, &wrong);
        assert_eq!(reply.status, 401, "wrong code #{}: {}", n + 1, reply.body);
        assert!(reply.body.contains("That code is wrong"));
    }
    for (jar, _, _) in &forms {
        assert_eq!(
            portal.get(Some(jar), "/login/second-factor").status,
            200,
            "five wrong codes are allowed; the sign-ins still wait for a code"
        );
    }

    let sixth = guess(5, &wrong);
    assert_eq!(sixth.status, 429, "{}", sixth.body);
    assert!(
        sixth.body.contains("this sign-in has ended"),
        "{}",
        sixth.body
    );
    for (jar, _, _) in &forms {
        assert_eq!(
            portal
                .get(Some(jar), "/login/second-factor")
                .header("location"),
            Some("/login"),
            "a sign-in waiting for a code survived the lock-out"
        );
    }
    let message = mail.wait_for_message(
        EMAIL,
        &["Subject: [Plantgate] Too many wrong sign-in codes"],
    );
    assert!(message.contains("gave 5 wrong"), "{message}");
    assert!(message.contains("the last from 127.0.0."), "{message}");

    // A new sign-in with the password now meets the lock, even with the right code.
    portal.login("later", EMAIL, PASSWORD);
    let page = portal.get(Some("later"), "/login/second-factor");
    let right =
        appliance::second_factor::code_at(&secret, appliance::time::now_us() + 30_000_000).unwrap();
    let refused = portal.post(
        Some("later"),
        "/login/second-factor",
        &[("csrf", &input_value(&page.body, "csrf")), ("code", &right)],
    );
    assert_eq!(
        refused.status, 429,
        "the right code worked during the lock-out"
    );
    // The owner's complete session is untouched.
    assert!(portal.get(Some("owner"), "/").body.contains("Welcome"));

    let records = portal.records();
    assert_eq!(
        count(
            &records,
            "auth.second_factor.failed",
            "reason",
            "wrong code"
        ),
        5
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == "auth.second_factor.locked")
            .count(),
        1
    );
    assert!(
        count(
            &records,
            "auth.second_factor.failed",
            "reason",
            "too many wrong codes"
        ) >= 2
    );

    // An administrator's unlock lifts it (the owner is one, still signed in).
    let owner =
        appliance::models::User::find_by_email(&mut portal.app.store.conn().unwrap(), EMAIL)
            .unwrap()
            .unwrap();
    let csrf = portal.csrf("owner");
    let unlocked = portal.post(
        Some("owner"),
        &format!("/users/{}/unlock", owner.id.0),
        &[("csrf", &csrf)],
    );
    assert_eq!(unlocked.status, 303, "{}", unlocked.body);
    portal.login("after-unlock", EMAIL, PASSWORD);
    let page = portal.get(Some("after-unlock"), "/login/second-factor");
    let next =
        appliance::second_factor::code_at(&secret, appliance::time::now_us() + 30_000_000).unwrap();
    let passed = portal.post(
        Some("after-unlock"),
        "/login/second-factor",
        &[("csrf", &input_value(&page.body, "csrf")), ("code", &next)],
    );
    assert_eq!(passed.header("location"), Some("/"), "{}", passed.body);
    assert!(
        portal
            .actions()
            .iter()
            .any(|a| a == "auth.account.unlocked")
    );
}

/// `X-Forwarded-Host` and `Forwarded: host=` decide the portal's origin only when they
/// come from a configured trusted proxy; from anyone else a foreign `Origin` is refused.
#[test]
fn a_foreign_origin_with_a_matching_forwarded_host_passes_only_from_a_trusted_proxy() {
    let portal = Portal::start("trusted_proxies = [\"127.0.0.2\"]\nlogins_per_minute = 100");
    portal.setup_admin();
    let url = format!("{}/login", portal.origin());
    let post = |origin: &str, extra: &[&str]| {
        let origin = format!("Origin: {origin}");
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([
            "-H",
            &origin,
            &url,
            "--data-urlencode",
            "email=ada@plant.example",
            "--data-urlencode",
            "password=Not-the-password-1",
        ]);
        portal.curl(None, &args).status
    };
    let evil = "https://evil.example";
    let forwarded_headers: [&[&str]; 3] = [
        &["-H", "X-Forwarded-Host: evil.example"],
        &["-H", "Forwarded: host=evil.example;proto=https"],
        &[
            "-H",
            "X-Forwarded-Host: evil.example",
            "-H",
            "X-Forwarded-Proto: https",
        ],
    ];
    for headers in forwarded_headers {
        assert_eq!(
            post(evil, headers),
            403,
            "a client's own forwarding headers {headers:?} passed the origin check"
        );
        let mut via_proxy = vec!["--interface", "127.0.0.2"];
        via_proxy.extend_from_slice(headers);
        assert_eq!(
            post(evil, &via_proxy),
            401,
            "the trusted proxy's forwarded host {headers:?} was not believed"
        );
    }
    // From the proxy too, an Origin must match what it forwarded (host and scheme).
    let proxy = ["--interface", "127.0.0.2"];
    assert_eq!(
        post(
            evil,
            &[
                &proxy[..],
                &["-H", "X-Forwarded-Host: portal.plant.example"]
            ]
            .concat()
        ),
        403
    );
    assert_eq!(
        post(
            evil,
            &[
                &proxy[..],
                &[
                    "-H",
                    "X-Forwarded-Host: evil.example",
                    "-H",
                    "X-Forwarded-Proto: http"
                ]
            ]
            .concat()
        ),
        403
    );
    assert_eq!(post(evil, &[]), 403);
    // The portal's own origin still works directly.
    assert_eq!(post(&portal.origin(), &[]), 401);
    assert_eq!(
        post("https://localhost", &[]),
        401,
        "the configured host name"
    );

    // The client's address behind the trusted proxy is the one it forwards; anyone else's
    // X-Forwarded-For is ignored.
    let forwarded_for = |extra: &[&str]| {
        let mut args: Vec<&str> = vec!["-H", "X-Forwarded-For: 198.51.100.7"];
        args.extend_from_slice(extra);
        portal.post_with(
            None,
            "/login",
            &[
                ("email", "nobody@plant.example"),
                ("password", "Guess-12345"),
            ],
            &args,
        );
    };
    forwarded_for(&proxy);
    forwarded_for(&[]);
    let sources: Vec<String> = portal
        .records()
        .iter()
        .filter(|r| {
            r.action == "auth.login.failed" && details(r)["email"] == "nobody@plant.example"
        })
        .map(|r| r.source.clone())
        .collect();
    assert_eq!(sources, ["198.51.100.7", "127.0.0.1"]);
}
