//! Portal throughput under load, with wrk from Debian: a signed-in page and a
//! token-authenticated API list. `cargo bench -p plantgate-web --bench load` prints
//! requests/s and p99 latency; under `cargo test` it runs for a moment, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{EMAIL, PASSWORD, Portal};

/// Runs wrk and returns (requests per second, p99 latency as wrk prints it).
fn wrk(url: &str, header: &str, seconds: u32) -> (f64, String) {
    let output = Command::new("wrk")
        .args([
            "-t2",
            "-c16",
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            header,
            url,
        ])
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(str::to_owned);
    assert!(non_2xx.is_none(), "wrk saw errors: {non_2xx:?}\n{text}");
    (rate, p99)
}

fn main() {
    let seconds = if std::env::args().any(|arg| arg == "--bench") {
        10
    } else {
        1
    };
    let portal = Portal::start("logins_per_minute = 1000\napi_requests_per_minute = 1000000");
    portal.setup_admin();
    assert_eq!(portal.login("bench", EMAIL, PASSWORD).status, 303);
    let jar = std::fs::read_to_string(portal.jar("bench")).unwrap();
    let cookie = jar
        .lines()
        .find(|l| l.contains("__Host-plantgate"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap()
        .to_owned();
    let (token, _) = portal.token(&["users:read"], 1, 0);

    println!("portal load (wrk, 2 threads, 16 connections, {seconds} s each, over TLS)");
    println!("{:<44} {:>12} {:>12}", "", "requests/s", "p99");
    let (rate, p99) = wrk(
        &format!("{}/sessions", portal.origin()),
        &format!("Cookie: __Host-plantgate={cookie}"),
        seconds,
    );
    println!(
        "{:<44} {rate:>12.0} {p99:>12}",
        "signed-in page /sessions (session cookie)"
    );
    let (rate, p99) = wrk(
        &format!("{}/api/v1/users", portal.origin()),
        &format!("Authorization: Bearer {token}"),
        seconds,
    );
    println!(
        "{:<44} {rate:>12.0} {p99:>12}",
        "API list /api/v1/users (bearer token)"
    );
}
