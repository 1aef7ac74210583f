//! The portal as a browser and an attacker meet it: the real `plantgate-web` binary over
//! real TLS, driven by `curl` and `openssl s_client`. The transport, first setup, signing in
//! and the checks every request passes; the other topics have files of their own.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn only_tls_1_2_and_1_3_are_spoken() {
    let portal = Portal::start("");
    // SECLEVEL=0 lets the client offer old protocols, so the refusal is the server's.
    for old in ["-tls1", "-tls1_1"] {
        let out = portal.s_client(&[old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(out.contains("alert protocol version"), "{old}: {out}");
    }
    assert!(
        portal
            .s_client(&["-tls1_2"])
            .contains("New, TLSv1.2, Cipher is")
    );
    assert!(
        portal
            .s_client(&["-tls1_3"])
            .contains("New, TLSv1.3, Cipher is")
    );
}

#[test]
fn no_cipher_outside_mozillas_intermediate_list_is_negotiated() {
    let portal = Portal::start("");
    let intermediate = [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ];
    let all = Command::new("openssl")
        .args(["ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"])
        .output()
        .unwrap();
    let ciphers: Vec<String> = String::from_utf8_lossy(&all.stdout)
        .trim()
        .split(':')
        .map(str::to_owned)
        .collect();
    assert!(
        ciphers.len() > 50,
        "the client knows too few ciphers to test: {ciphers:?}"
    );
    let accepted: Vec<String> = std::thread::scope(|scope| {
        let checks: Vec<_> = ciphers
            .chunks(ciphers.len().div_ceil(8))
            .map(|chunk| {
                let portal = &portal;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .filter(|c| {
                            portal
                                .s_client(&["-tls1_2", "-cipher", &format!("{c}@SECLEVEL=0")])
                                .contains(&format!("Cipher is {c}"))
                        })
                        .cloned()
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        checks.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(!accepted.is_empty(), "no cipher worked at all");
    for cipher in &accepted {
        assert!(
            intermediate.contains(&cipher.as_str()),
            "{cipher} was negotiated"
        );
    }
}

#[test]
fn renegotiation_is_refused() {
    use std::io::{Read, Write};
    let portal = Portal::start("");
    // `R` asks s_client to renegotiate. Its input stays open until the answer is in (at the
    // end of input s_client would hang up before the server could answer).
    let mut client = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -tls1_2 2>&1",
            portal.https
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = client.stdin.take().unwrap();
    input.write_all(b"R\n").unwrap();
    let mut output = client.stdout.take().unwrap();
    let (tell, told) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = output.read(&mut chunk) {
            let _ = tell.send(String::from_utf8_lossy(&chunk[..n]).into_owned());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    while !text.contains("no renegotiation") {
        match told.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(more) => text.push_str(&more),
            Err(_) => break, // the connection ended, or no answer in time: the asserts say
        }
    }
    drop(input);
    let _ = client.kill();
    let _ = client.wait();
    assert!(text.contains("RENEGOTIATING"), "{text}");
    assert!(
        text.contains("no renegotiation"),
        "the server allowed renegotiation: {text}"
    );
}

#[test]
fn plain_http_only_redirects_to_https() {
    let portal = Portal::start("");
    for method in ["GET", "POST"] {
        let reply = portal.curl(
            None,
            &[
                "-X",
                method,
                &format!("http://127.0.0.1:{}/audit?since=2026-11-22", portal.http),
            ],
        );
        assert_eq!(reply.status, 308, "{method}");
        assert_eq!(
            reply.header("location"),
            Some(format!("https://localhost:{}/audit?since=2026-11-22", portal.https).as_str())
        );
        assert!(reply.body.is_empty(), "{method} got a body over plain HTTP");
    }
}

#[test]
fn every_response_carries_the_security_headers() {
    let portal = Portal::start("");
    portal.setup_admin();
    portal.login("admin", EMAIL, PASSWORD);
    let replies = vec![
        portal.get(None, "/"),
        portal.get(None, "/setup"),
        portal.get(None, "/login"),
        portal.get(None, "/static/style.css"),
        portal.get(None, "/no/such/page"),
        portal.get(Some("admin"), "/"),
        portal.get(Some("admin"), "/sessions"),
        portal.get(Some("admin"), "/audit"),
        portal.curl(
            None,
            &[&format!("{}/login", portal.origin()), "-d", "email=x"],
        ),
        portal.post(None, "/login", &[("email", "x"), ("password", "y")]),
    ];
    for reply in replies {
        assert!(
            reply
                .header("strict-transport-security")
                .is_some_and(|v| v.contains("max-age=")),
            "{reply:?}"
        );
        let csp = reply.header("content-security-policy").unwrap_or("");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{reply:?}"
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert!(reply.header("referrer-policy").is_some(), "{reply:?}");
    }
}

#[test]
fn login_sets_a_host_only_secure_cookie_and_logout_ends_the_session() {
    let portal = Portal::start("");
    portal.setup_admin();
    let reply = portal.login("a", EMAIL, PASSWORD);
    assert_eq!(reply.status, 303);
    let cookie = reply.header("set-cookie").unwrap_or("");
    for part in [
        "__Host-plantgate=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    let home = portal.get(Some("a"), "/");
    assert!(home.body.contains("Welcome, Ada Admin"), "{}", home.body);

    // A second login gets a different session id.
    let again = portal.login("b", EMAIL, PASSWORD);
    assert_ne!(again.header("set-cookie"), reply.header("set-cookie"));

    let csrf = portal.csrf("a");
    assert_eq!(
        portal.post(Some("a"), "/logout", &[("csrf", &csrf)]).status,
        303
    );
    assert_eq!(
        portal.get(Some("a"), "/").header("location"),
        Some("/login"),
        "the session outlived logout"
    );
    assert!(
        portal.get(Some("b"), "/").body.contains("Welcome"),
        "logout ended the other session too"
    );
}

#[test]
fn the_sixth_wrong_password_locks_the_account_even_for_the_right_one() {
    let portal = Portal::start("");
    portal.setup_admin();
    for _ in 0..5 {
        let reply = portal.login("x", EMAIL, "Wrong-password-1");
        assert_eq!(reply.status, 401);
        assert!(reply.body.contains(portal::pages::LOGIN_REFUSED));
    }
    let locked = portal.login("x", EMAIL, PASSWORD);
    assert_eq!(
        locked.status, 401,
        "the right password opened a locked account"
    );
    assert!(locked.body.contains(portal::pages::LOGIN_REFUSED));
    // An unknown account gets the very same answer.
    let unknown = portal.login("y", "nobody@plant.example", PASSWORD);
    assert_eq!(
        (
            unknown.status,
            unknown.body.contains(portal::pages::LOGIN_REFUSED)
        ),
        (401, true)
    );
    let actions = portal.actions();
    assert!(actions.contains(&"auth.account.locked".to_owned()));
    assert_eq!(
        actions.iter().filter(|a| *a == "auth.login.failed").count(),
        7
    );
}

#[test]
fn logins_are_throttled_per_source_address() {
    let portal = Portal::start("logins_per_minute = 3");
    portal.setup_admin();
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            portal
                .login("x", "someone@plant.example", "Guess-1234567")
                .status
        })
        .collect();
    assert_eq!(&statuses[..3], [401, 401, 401]);
    let throttled = portal.login("x", EMAIL, PASSWORD);
    assert_eq!(throttled.status, 429);
    assert!(
        throttled
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| (1..=60).contains(&s))
    );
    assert!(
        portal
            .actions()
            .contains(&"auth.login.throttled".to_owned())
    );
}

#[test]
fn posts_without_the_portals_origin_or_csrf_token_are_refused() {
    let portal = Portal::start("");
    portal.setup_admin();
    portal.login("a", EMAIL, PASSWORD);
    let csrf = portal.csrf("a");
    let url = format!("{}/logout", portal.origin());
    let body = format!("csrf={csrf}");
    let no_origin = portal.curl(Some("a"), &[&url, "-d", &body]);
    assert_eq!(no_origin.status, 403);
    let foreign = portal.curl(
        Some("a"),
        &["-H", "Origin: https://evil.example", &url, "-d", &body],
    );
    assert_eq!(foreign.status, 403);
    let wrong_token = portal.post(Some("a"), "/logout", &[("csrf", &"0".repeat(64))]);
    assert_eq!(wrong_token.status, 403);
    assert!(
        portal.get(Some("a"), "/").body.contains("Welcome"),
        "a refused post logged the user out"
    );
}

/// Only `plantgate init` creates the store: the portal refuses to start on a missing one
/// (SQLite) or an empty database (PostgreSQL), and creates nothing.
#[test]
fn the_portal_refuses_to_start_without_its_store() {
    for backend in [
        testkit::store::Backend::Sqlite,
        testkit::store::Backend::Postgres,
    ] {
        let w = testkit::store::WithoutStore::new(backend, "");
        w.assert_refused(
            std::process::Command::new(env!("CARGO_BIN_EXE_plantgate-web"))
                .env("PLANTGATE_CONFIG", &w.config_path),
        );
    }
}
