//! The portal as a browser and an attacker meet it: the real `plantgate-web` binary over
//! real TLS, driven by `curl` and `openssl s_client`.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::*;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use appliance::Actor;

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

/// The typed `<script>alert(1)</script>` is on the page as text, never as markup.
fn is_escaped_script(body: &str) -> bool {
    let escaped =
        body.contains("&lt;script&gt;alert(1)") || body.contains("&#60;script&#62;alert(1)");
    escaped && !body.contains("<script>alert")
}

#[test]
fn first_run_setup_needs_the_enrolment_token_and_a_good_password() {
    let portal = Portal::start("");
    assert_eq!(portal.get(None, "/").header("location"), Some("/setup"));
    let attempt = |token: &str, password: &str| {
        portal.post(
            None,
            "/setup",
            &[
                ("token", token),
                ("organisation", "Plant"),
                ("name", "<script>alert(1)</script>"),
                ("email", EMAIL),
                ("password", password),
            ],
        )
    };
    let wrong_token = attempt("not-the-token", PASSWORD);
    assert_eq!(wrong_token.status, 422);
    assert!(
        wrong_token.body.contains("enrolment token is not valid"),
        "{}",
        wrong_token.body
    );
    let weak = attempt(&portal.token, "password1234");
    assert_eq!(weak.status, 422);
    assert!(weak.body.contains("common or breached"), "{}", weak.body);
    // What was typed comes back escaped, never as markup.
    assert!(is_escaped_script(&weak.body), "{}", weak.body);
    assert!(
        !weak.body.contains("password1234"),
        "the password was echoed back"
    );
    assert_eq!(
        portal.get(None, "/").header("location"),
        Some("/setup"),
        "a refused setup created someone"
    );

    assert_eq!(attempt(&portal.token, PASSWORD).status, 303);
    assert!(portal.get(None, "/setup").body.contains("Already set up"));
    assert_eq!(
        attempt(&portal.token, PASSWORD).status,
        200,
        "a second setup was accepted"
    );
    assert!(
        portal
            .actions()
            .contains(&"setup.first_admin.created".to_owned())
    );
    // The name is shown escaped once signed in.
    portal.login("admin", EMAIL, PASSWORD);
    let home = portal.get(Some("admin"), "/");
    assert!(is_escaped_script(&home.body), "{}", home.body);
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

#[test]
fn a_user_sees_and_ends_their_own_sessions() {
    let portal = Portal::start("");
    portal.setup_admin();
    portal.login("laptop", EMAIL, PASSWORD);
    portal.login("phone", EMAIL, PASSWORD);
    let page = portal.get(Some("laptop"), "/sessions");
    assert_eq!(page.body.matches("<tr>").count() - 1, 2, "{}", page.body);
    let other = page
        .body
        .split("/sessions/")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("an end button")
        .to_owned();
    let csrf = portal.csrf("laptop");
    assert_eq!(
        portal
            .post(
                Some("laptop"),
                &format!("/sessions/{other}/end"),
                &[("csrf", &csrf)]
            )
            .status,
        303
    );
    assert_eq!(
        portal.get(Some("phone"), "/").header("location"),
        Some("/login"),
        "the ended session still works"
    );
    assert_eq!(
        portal
            .post(Some("laptop"), "/sessions/999999/end", &[("csrf", &csrf)])
            .status,
        404
    );
}

#[test]
fn the_audit_viewer_filters_pages_exports_and_verifies() {
    let portal = Portal::start("");
    portal.setup_admin();
    for _ in 0..3 {
        portal.login("x", EMAIL, "Wrong-password-1");
    }
    portal.login("admin", EMAIL, PASSWORD);
    let failed = portal.get(Some("admin"), "/audit?action=auth.login.failed");
    assert_eq!(
        failed.body.matches("<td>auth.login.failed</td>").count(),
        3,
        "{}",
        failed.body
    );
    assert!(!failed.body.contains("<td>auth.login.succeeded</td>"));
    let auth = portal.get(Some("admin"), "/audit?action=auth.");
    assert!(auth.body.contains("<td>auth.login.succeeded</td>"));
    let bad_filter = portal.get(Some("admin"), "/audit?since=yesterday");
    assert!(
        bad_filter.body.contains("is not a time"),
        "{}",
        bad_filter.body
    );

    let verified = portal.get(Some("admin"), "/audit?verify=1");
    assert!(
        verified.body.contains("The chain is intact"),
        "{}",
        verified.body
    );
    let csv = portal.get(
        Some("admin"),
        "/audit/export?format=csv&action=auth.login.failed",
    );
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("seq,time,actor_kind"), "{}", csv.body);
    assert_eq!(csv.body.lines().count(), 4, "{}", csv.body);
    assert!(portal.actions().contains(&"audit.exported".to_owned()));

    // Paging: 60 more records make more than one page of 50.
    let events = (0..60)
        .map(|i| appliance::AuditEvent::new(Actor::System("test".into()), "test.paging").target(i))
        .collect();
    portal.app.audit.record_all(events).unwrap();
    let first = portal.get(Some("admin"), "/audit?action=test.paging");
    assert_eq!(first.body.matches("<td>test.paging</td>").count(), 50);
    let next = first
        .body
        .split("/audit?before=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("a next-page link")
        .to_owned();
    let second = portal.get(
        Some("admin"),
        &format!("/audit?before={next}&action=test.paging"),
    );
    assert_eq!(second.body.matches("<td>test.paging</td>").count(), 10);
}

#[test]
fn only_admins_and_auditors_read_the_audit_log() {
    let portal = Portal::start("");
    portal.setup_admin();
    let actor = Actor::System("test".into());
    let org = appliance::models::Organisation::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    for (email, role) in [
        ("tech@vendor.example", appliance::models::Role::Technician),
        ("audit@plant.example", appliance::models::Role::Auditor),
    ] {
        let user = appliance::models::User::create(
            &portal.app.audit,
            &actor,
            org.id,
            "Someone",
            email,
            role,
        )
        .unwrap();
        appliance::accounts::set_password(
            &portal.app.audit,
            &actor,
            &user,
            PASSWORD,
            appliance::accounts::PasswordPolicy { min_chars: 12 },
            0,
        )
        .unwrap();
    }
    portal.login("tech", "tech@vendor.example", PASSWORD);
    assert_eq!(portal.get(Some("tech"), "/audit").status, 403);
    assert_eq!(portal.get(Some("tech"), "/audit/export").status, 403);
    portal.login("auditor", "audit@plant.example", PASSWORD);
    assert_eq!(portal.get(Some("auditor"), "/audit").status, 200);
    assert_eq!(
        portal.get(None, "/audit").header("location"),
        Some("/login")
    );
}

/// The value of a hidden or text input in a page.
fn input_value(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    body[at..].split('"').next().unwrap_or_default().to_owned()
}

#[test]
fn an_admin_enrols_a_second_factor_at_first_login_and_needs_it_from_then_on() {
    let portal = Portal::start("second_factor_roles = [\"admin\"]");
    portal.setup_admin();
    let login = portal.login("a", EMAIL, PASSWORD);
    assert_eq!(login.header("location"), Some("/account/second-factor"));
    // A password alone reaches nothing else.
    assert_eq!(
        portal.get(Some("a"), "/sessions").header("location"),
        Some("/account/second-factor")
    );

    let enrol = portal.get(Some("a"), "/account/second-factor");
    assert!(enrol.body.contains("<svg"), "no QR code: {}", enrol.body);
    let secret = input_value(&enrol.body, "secret");
    let csrf = input_value(&enrol.body, "csrf");
    let wrong = portal.post(
        Some("a"),
        "/account/second-factor",
        &[("csrf", &csrf), ("secret", &secret), ("code", "000000")],
    );
    assert_eq!(wrong.status, 422);
    let now = appliance::time::now_us();
    let code = appliance::second_factor::code_at(&secret, now).unwrap();
    let done = portal.post(
        Some("a"),
        "/account/second-factor",
        &[("csrf", &csrf), ("secret", &secret), ("code", &code)],
    );
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
        portal.get(Some("a"), "/").body.contains("Welcome"),
        "enrolment did not complete the sign-in"
    );

    // The next login asks for the second factor before anything else.
    let login = portal.login("b", EMAIL, PASSWORD);
    assert_eq!(login.header("location"), Some("/login/second-factor"));
    assert_eq!(
        portal.get(Some("b"), "/").header("location"),
        Some("/login/second-factor")
    );
    let csrf = input_value(&portal.get(Some("b"), "/login/second-factor").body, "csrf");
    let submit = |code: &str| {
        portal.post(
            Some("b"),
            "/login/second-factor",
            &[("csrf", &csrf), ("code", code)],
        )
    };
    assert_eq!(submit(&code).status, 401, "a code was accepted twice");
    assert_eq!(submit("123456").status, 401);
    assert_eq!(
        submit(&recovery[0]).status,
        303,
        "a recovery code was refused"
    );
    assert!(portal.get(Some("b"), "/").body.contains("Welcome"));

    portal.login("c", EMAIL, PASSWORD);
    let csrf = input_value(&portal.get(Some("c"), "/login/second-factor").body, "csrf");
    let reused = portal.post(
        Some("c"),
        "/login/second-factor",
        &[("csrf", &csrf), ("code", &recovery[0])],
    );
    assert_eq!(reused.status, 401, "a recovery code worked twice");
    let next_step = appliance::second_factor::code_at(&secret, now + 30_000_000).unwrap();
    assert_eq!(
        portal
            .post(
                Some("c"),
                "/login/second-factor",
                &[("csrf", &csrf), ("code", &next_step)]
            )
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

#[test]
fn the_api_serves_a_scoped_token_and_refuses_a_revoked_or_expired_one() {
    let portal = Portal::start("");
    portal.setup_admin();
    let (token, id) = portal.token(&["audit:read", "users:read"], 30, 0);
    let (status, me) = portal.api(Some(&token), "/api/v1/me");
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], EMAIL);
    assert_eq!(
        me["scopes"],
        serde_json::json!(["audit:read", "users:read"])
    );
    let (status, page) = portal.api(Some(&token), "/api/v1/audit?action=setup.&limit=5");
    assert_eq!(status, 200);
    assert_eq!(page["records"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["records"][0]["action"], "setup.first_admin.created");

    assert_eq!(
        portal.api(None, "/api/v1/me"),
        (
            401,
            serde_json::json!({"error": "auth.missing_token", "message": "send Authorization: Bearer followed by an API token"})
        )
    );
    assert_eq!(
        portal.api(Some("pgt_made-up"), "/api/v1/me").1["error"],
        "auth.invalid_token"
    );
    let (narrow, _) = portal.token(&["users:read"], 30, 0);
    let (status, body) = portal.api(Some(&narrow), "/api/v1/audit");
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("auth.missing_scope"))
    );
    for bad in [
        "/api/v1/audit?limit=0",
        "/api/v1/audit?since=yesterday",
        "/api/v1/audit?outcome=maybe",
        "/api/v1/audit?before=x",
    ] {
        let (status, body) = portal.api(Some(&token), bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{bad}: {body}"
        );
    }
    assert_eq!(portal.api(Some(&token), "/api/v1/nothing-here").0, 404);

    appliance::tokens::revoke(
        &portal.app.audit,
        &Actor::System("test".into()),
        id,
        appliance::time::now_us(),
    )
    .unwrap();
    assert_eq!(
        portal.api(Some(&token), "/api/v1/me").0,
        401,
        "a revoked token still works"
    );
    let (expired, _) = portal.token(&["users:read"], 1, 2);
    assert_eq!(
        portal.api(Some(&expired), "/api/v1/me").0,
        401,
        "an expired token still works"
    );
    let actions = portal.actions();
    assert!(
        actions.contains(&"api.token.created".to_owned())
            && actions.contains(&"api.token.revoked".to_owned())
    );
}

#[test]
fn api_callers_see_only_their_own_organisation() {
    let portal = Portal::start("");
    portal.setup_admin();
    let actor = Actor::System("test".into());
    let other =
        appliance::models::Organisation::create(&portal.app.audit, &actor, "Other Plant").unwrap();
    appliance::models::User::create(
        &portal.app.audit,
        &actor,
        other.id,
        "Eve",
        "eve@other.example",
        appliance::models::Role::Admin,
    )
    .unwrap();
    let (token, _) = portal.token(&["users:read"], 30, 0);
    let (status, users) = portal.api(Some(&token), "/api/v1/users");
    assert_eq!(status, 200);
    let emails: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(emails, [EMAIL], "another organisation's users leaked");
}

#[test]
fn the_api_is_rate_limited_with_retry_after() {
    let portal = Portal::start("api_requests_per_minute = 5");
    portal.setup_admin();
    let (token, _) = portal.token(&["users:read"], 30, 0);
    let statuses: Vec<u16> = (0..5)
        .map(|_| portal.api(Some(&token), "/api/v1/me").0)
        .collect();
    assert_eq!(statuses, [200; 5]);
    let limited = portal.curl(
        None,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/api/v1/me", portal.origin()),
        ],
    );
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| (1..=60).contains(&s))
    );
    assert!(limited.body.contains("rate.limited"));
}

// The OpenAPI document and schemathesis have their own file: tests/openapi.rs.

/// Where screenshots of the browser test go, for a person to look at.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_real_browser_walks_setup_login_second_factor_logout_login_and_creates_a_user() {
    use fantoccini::{ClientBuilder, Locator};
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "\n*** {tool} is missing: scripts/deps test installs chromium and chromium-driver\n"
        );
    }
    let portal = Portal::start("second_factor_roles = [\"admin\"]");
    let driver = ChromeDriver::start();
    let driver_port = driver.port;
    let profile = portal.dir.path().join("chromium-profile");
    let shots = screenshot_dir();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({
            "binary": "/usr/bin/chromium",
            // The flags keep Chromium off the network, which this machine does not have anyway.
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--ignore-certificate-errors", "--window-size=1200,900", format!("--user-data-dir={}", profile.display())],
        }));
        caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
        let browser = ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{driver_port}")).await.expect("a WebDriver session");
        let shot = |name: &'static str| {
            let browser = browser.clone();
            let shots = shots.clone();
            async move { std::fs::write(shots.join(format!("{name}.png")), browser.screenshot().await.unwrap()).unwrap() }
        };
        let fill = |field: &'static str, value: String| {
            let browser = browser.clone();
            async move { browser.find(Locator::Css(&format!("input[name={field}]"))).await.unwrap().send_keys(&value).await.unwrap() }
        };
        // Clicking does not wait for the next page; waiting for an element only it has does.
        let submit_then = |next: &'static str| {
            let browser = browser.clone();
            async move {
                browser.find(Locator::Css("main button[type=submit]")).await.unwrap().click().await.unwrap();
                browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(next)).await.unwrap_or_else(|_| panic!("no {next} after submit"));
            }
        };
        let welcome = "main h1.welcome";
        let login_form = "form[action='/login']";
        browser.goto(&format!("{}/", portal.origin())).await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("form[action='/setup']")).await.unwrap();
        shot("1-setup").await;
        fill("token", portal.token.clone()).await;
        fill("organisation", "Moulding Plant Nord".into()).await;
        fill("name", "Ada Admin".into()).await;
        fill("email", EMAIL.into()).await;
        fill("password", PASSWORD.into()).await;
        submit_then(login_form).await;
        shot("2-login").await;
        assert_eq!(browser.current_url().await.unwrap().path(), "/login");
        fill("email", EMAIL.into()).await;
        fill("password", PASSWORD.into()).await;
        submit_then("div.qr svg").await;
        assert_eq!(browser.current_url().await.unwrap().path(), "/account/second-factor");
        shot("3-enrol-totp").await;
        let secret = browser.find(Locator::Css("input[name=secret]")).await.unwrap().attr("value").await.unwrap().unwrap();
        let now = appliance::time::now_us();
        fill("code", appliance::second_factor::code_at(&secret, now).unwrap()).await;
        submit_then("ul.codes").await;
        let codes = browser.find_all(Locator::Css("ul.codes li")).await.unwrap();
        assert_eq!(codes.len(), 10, "ten recovery codes are shown: {}", browser.source().await.unwrap());
        shot("4-recovery-codes").await;
        browser.find(Locator::LinkText("Continue to the portal")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(welcome)).await.unwrap();
        assert!(browser.source().await.unwrap().contains("Welcome, Ada Admin"));
        shot("5-home").await;

        browser.find(Locator::Css("header button")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(login_form)).await.unwrap();
        assert!(browser.source().await.unwrap().contains("You are logged out"));
        fill("email", EMAIL.into()).await;
        fill("password", PASSWORD.into()).await;
        submit_then("form[action='/login/second-factor']").await;
        assert_eq!(browser.current_url().await.unwrap().path(), "/login/second-factor");
        shot("6-second-factor").await;
        // The code of the next 30-second step: the one used at enrolment may not come back.
        fill("code", appliance::second_factor::code_at(&secret, now + 30_000_000).unwrap()).await;
        submit_then(welcome).await;
        assert!(browser.source().await.unwrap().contains("Welcome, Ada Admin"), "login with the second factor failed");
        shot("7-signed-in-with-totp").await;

        browser.find(Locator::LinkText("Users")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("form[action='/users']")).await.unwrap();
        fill("name", "Tom Tech".into()).await;
        fill("email", "tom@vendor.example".into()).await;
        browser.find(Locator::Css("select[name=role] option[value=technician]")).await.unwrap().click().await.unwrap();
        fill("password", "Schalt-Schrank-2026".into()).await;
        browser.find(Locator::Css("form[action='/users'] button[type=submit]")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::XPath("//td[text()='tom@vendor.example']")).await.expect("the new user is listed");
        shot("8-user-created").await;
        // The appliance's own pages, for the operator's administrator.
        browser.find(Locator::LinkText("Organisations")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("form[action='/organisations']")).await.unwrap();
        for (id, value) in [("name", "Werkzeugbau Süd"), ("admin_name", "Bea Boss"), ("admin_email", "bea@werkzeug.example")] {
            browser.find(Locator::Id(id)).await.unwrap().send_keys(value).await.unwrap();
        }
        browser.find(Locator::Css("form[action='/organisations'] button[type=submit]")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::XPath("//div[@role='status'][contains(., 'bea@werkzeug.example was sent a link')]")).await.expect("the organisation is created");
        shot("9-organisation-created").await;
        browser.find(Locator::LinkText("Settings")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("dl#certificate")).await.expect("the certificate is shown");
        shot("10-settings").await;
        browser.close().await.unwrap();
    });
}

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
fn changing_the_password_needs_the_current_one_and_ends_every_session() {
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    portal.login("laptop", EMAIL, PASSWORD);
    portal.login("phone", EMAIL, PASSWORD);
    let csrf = portal.csrf("laptop");
    let change = |current: &str, new: &str| {
        portal.post(
            Some("laptop"),
            "/account/password",
            &[("csrf", &csrf), ("current", current), ("new", new)],
        )
    };
    assert_eq!(change("Wrong-password-1", "Neue-Schraube-88").status, 422);
    let weak = change(PASSWORD, "password1234");
    assert_eq!(weak.status, 422);
    assert!(weak.body.contains("common"), "{}", weak.body);
    assert!(
        portal.get(Some("phone"), "/").body.contains("Welcome"),
        "a refused change ended sessions"
    );

    let done = change(PASSWORD, "Neue-Schraube-88");
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Your password is changed"));
    assert_eq!(
        portal.get(Some("phone"), "/").header("location"),
        Some("/login"),
        "another session survived the change"
    );
    assert!(
        portal.get(Some("laptop"), "/").body.contains("Welcome"),
        "the changing session was not renewed"
    );
    assert_eq!(portal.login("old", EMAIL, PASSWORD).status, 401);
    assert_eq!(portal.login("new", EMAIL, "Neue-Schraube-88").status, 303);
    assert!(
        portal
            .actions()
            .contains(&"auth.password.changed".to_owned())
    );
}

#[test]
fn sensitive_pages_ask_for_the_password_again_once_it_is_stale() {
    // Long enough that a login and the next page fit inside it on a loaded machine.
    let portal = Portal::start("reauthenticate_seconds = 5\nlogins_per_minute = 100");
    portal.setup_admin();
    portal.login("admin", EMAIL, PASSWORD);
    assert_eq!(
        portal.get(Some("admin"), "/users").status,
        200,
        "a fresh login had to confirm"
    );
    let csrf = portal.csrf("admin");
    // Once the window has passed (however long the machine takes to notice), the page asks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while portal.get(Some("admin"), "/users").header("location")
        != Some("/account/confirm?next=users")
    {
        assert!(
            Instant::now() < deadline,
            "a stale password was never asked for again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let add = portal.post(
        Some("admin"),
        "/users",
        &[
            ("csrf", &csrf),
            ("name", "Tom"),
            ("email", "tom@vendor.example"),
            ("role", "viewer"),
            ("password", PASSWORD),
        ],
    );
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

    let confirm = |password: &str| {
        portal.post(
            Some("admin"),
            "/account/confirm",
            &[("csrf", &csrf), ("next", "users"), ("password", password)],
        )
    };
    assert_eq!(confirm("Wrong-password-1").status, 401);
    let ok = confirm(PASSWORD);
    assert_eq!((ok.status, ok.header("location")), (303, Some("/users")));
    assert_eq!(portal.get(Some("admin"), "/users").status, 200);
    // `next` names a page from a fixed list; anything else goes home.
    let elsewhere = portal.post(
        Some("admin"),
        "/account/confirm",
        &[
            ("csrf", &csrf),
            ("next", "https://evil.example/"),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(elsewhere.header("location"), Some("/"));
    assert!(
        portal
            .actions()
            .contains(&"auth.reauthenticated".to_owned())
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

#[test]
fn readings_are_paged_through_the_api_for_the_callers_own_devices() {
    use appliance::devices::{Device, DeviceKind, DeviceRequest};
    use appliance::models::{Organisation, Site};
    use appliance::readings::{NewReading, insert_new};
    let portal = Portal::start("");
    portal.setup_admin();
    let actor = Actor::System("test".into());
    let own = Organisation::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let other = Organisation::create(&portal.app.audit, &actor, "Other Plant").unwrap();
    let t0 = 1_795_334_400_000_000;
    for (org, serial) in [(own.id, "MM-1"), (other.id, "MM-9")] {
        let site = Site::create(&portal.app.audit, &actor, org, "Hall 3", "").unwrap();
        let request = DeviceRequest {
            serial: serial.into(),
            kind: DeviceKind::Monitor,
            site: site.id,
            gateway: None,
            model: None,
        };
        let (device, _) = Device::register(&portal.app.audit, &actor, &request).unwrap();
        let rows: Vec<NewReading> = (1..=1200)
            .map(|i| NewReading {
                device_id: device.id,
                seq: i,
                metric: if i % 2 == 0 {
                    "temperature_c".into()
                } else {
                    "cycle_count".into()
                },
                value: i as f64,
                measured_at_us: t0 + i * 1_000_000,
                received_at_us: t0 + i * 1_000_000,
            })
            .collect();
        insert_new(&mut portal.app.store.conn().unwrap(), &rows).unwrap();
    }
    let (token, _) = portal.token(&["readings:read"], 30, 0);

    let mut seqs = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = portal.api(
            Some(&token),
            &format!("/api/v1/readings?device=MM-1&limit=500{after}"),
        );
        assert_eq!(status, 200, "{page}");
        seqs.extend(
            page["readings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_i64().unwrap()),
        );
        match page["next_after"].as_i64() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        seqs,
        (1..=1200).collect::<Vec<_>>(),
        "pages skipped or repeated readings"
    );

    let (_, temps) = portal.api(
        Some(&token),
        "/api/v1/readings?device=MM-1&metric=temperature_c&limit=5000",
    );
    assert_eq!(temps["readings"].as_array().unwrap().len(), 600);
    // t0 is 2026-11-22T08:00:00Z; measured in [t0 + 100 s, t0 + 200 s) are seq 100 to 199.
    let (_, window) = portal.api(Some(&token), "/api/v1/readings?device=MM-1&since=2026-11-22T08:01:40Z&until=2026-11-22T08:03:20Z&limit=5000");
    assert_eq!(
        window["readings"].as_array().unwrap().len(),
        100,
        "{window}"
    );

    assert_eq!(
        portal.api(Some(&token), "/api/v1/readings?device=MM-9").0,
        404,
        "another organisation's device was readable"
    );
    assert_eq!(
        portal.api(Some(&token), "/api/v1/readings?device=NOPE").0,
        404
    );
    assert_eq!(
        portal
            .api(Some(&token), "/api/v1/readings?device=MM-1&limit=0")
            .0,
        400
    );
    assert_eq!(
        portal.api(Some(&token), "/api/v1/readings").0,
        400,
        "a missing device was accepted"
    );
    let (no_scope, _) = portal.token(&["users:read"], 30, 0);
    assert_eq!(
        portal
            .api(Some(&no_scope), "/api/v1/readings?device=MM-1")
            .0,
        403
    );
}

#[test]
fn security_notices_reach_the_user_by_email() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = Portal::start(&format!(
        "second_factor_roles = []\nlogins_per_minute = 100\nlockout_attempts = 3\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
    ));
    portal.setup_admin();
    portal.login("admin", EMAIL, PASSWORD);
    let csrf = portal.csrf("admin");
    let changed = portal.post(
        Some("admin"),
        "/account/password",
        &[
            ("csrf", &csrf),
            ("current", PASSWORD),
            ("new", "Zahnrad-Getriebe-2027"),
        ],
    );
    assert!(matches!(changed.status, 200 | 303), "{}", changed.body);
    mail.wait_for("Subject: [Plantgate] Your password was set");
    // Three wrong passwords lock the account, and its owner is told from where.
    for _ in 0..3 {
        portal.login("guess", EMAIL, "Wrong-password-123");
    }
    mail.wait_for("Subject: [Plantgate] Your account was locked");
    mail.wait_for("the last from 127.0.0.1");
    assert!(portal.actions().iter().any(|a| a == "mail.sent"));
}

#[test]
fn the_email_one_time_code_is_a_second_factor_end_to_end() {
    let mail = testkit::MailCatcher::start();
    let smtp_port = mail.port();
    let portal = Portal::start(&format!(
        "second_factor_roles = [\"admin\"]\nlogins_per_minute = 100\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
    ));
    portal.setup_admin();
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
    let first = portal.login("a", EMAIL, PASSWORD);
    assert_eq!(first.header("location"), Some("/account/second-factor"));
    let enrol = portal.get(Some("a"), "/account/second-factor");
    assert!(
        enrol.body.contains("No authenticator app?"),
        "{}",
        enrol.body
    );
    let csrf = portal.csrf_from(&enrol.body);
    let sent = portal.post(
        Some("a"),
        "/account/second-factor/email-code",
        &[("csrf", &csrf)],
    );
    assert_eq!(sent.status, 303, "{}", sent.body);
    let code = code_in(&mail, 0);
    let wrong = portal.post(
        Some("a"),
        "/account/second-factor/email",
        &[("csrf", &csrf), ("code", "00000000")],
    );
    assert_eq!(wrong.status, 422);
    let done = portal.post(
        Some("a"),
        "/account/second-factor/email",
        &[("csrf", &csrf), ("code", &code)],
    );
    assert_eq!(
        (done.status, done.header("location")),
        (303, Some("/")),
        "{}",
        done.body
    );
    assert!(portal.get(Some("a"), "/").body.contains("Welcome"));

    // Later logins ask for a code from the email; a used code does not work twice.
    let again = portal.login("b", EMAIL, PASSWORD);
    assert_eq!(again.header("location"), Some("/login/second-factor"));
    let page = portal.get(Some("b"), "/login/second-factor");
    assert!(page.body.contains("Code from your email"), "{}", page.body);
    let csrf = portal.csrf_from(&page.body);
    let replay = portal.post(
        Some("b"),
        "/login/second-factor",
        &[("csrf", &csrf), ("code", &code)],
    );
    assert_eq!(replay.status, 401, "a spent code was accepted");
    assert_eq!(
        portal
            .post(Some("b"), "/login/second-factor/email", &[("csrf", &csrf)])
            .status,
        303
    );
    let second = code_in(&mail, 1);
    let signed_in = portal.post(
        Some("b"),
        "/login/second-factor",
        &[("csrf", &csrf), ("code", &second)],
    );
    assert_eq!(
        (signed_in.status, signed_in.header("location")),
        (303, Some("/"))
    );
    assert!(portal.get(Some("b"), "/").body.contains("Welcome"));
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
