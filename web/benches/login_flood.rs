//! Sign-in under a flood, with wrk from Debian: one address sends `POST /login` as fast as
//! 200 connections allow (a wrong password for a real account; the per-address throttle
//! refuses nearly all of it) while two other clients, one connection each, measure
//! `GET /login` and a signed-in page (`/sessions`). Prints p50/p99 of both without and with
//! the flood, and the audit records the flood added (after a graceful stop, which writes
//! the summaries still open).
//!
//! `cargo bench -p plantgate-web --bench login_flood` floods for 60 s and measures 20 s of
//! each; under `cargo test` it runs for a few seconds, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{EMAIL, PASSWORD, Portal};

/// A wrk run measuring one page over one connection, started now.
fn measure(url: &str, header: Option<&str>, seconds: u32) -> Child {
    let mut command = Command::new("wrk");
    command.args(["-t1", "-c1", &format!("-d{seconds}s"), "--latency"]);
    if let Some(header) = header {
        command.args(["-H", header]);
    }
    command
        .arg(url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("wrk (apt-get install wrk)")
}

/// (requests, p50, p99) as wrk printed them.
fn latency(output: &Output) -> (String, String, String) {
    let text = String::from_utf8_lossy(&output.stdout);
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {prefix} in wrk output:\n{text}"))
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        !text.contains("Non-2xx"),
        "the measured page answered with errors:\n{text}"
    );
    (requests, line("50%"), line("99%"))
}

/// Measures both pages at once for `seconds`; prints a row each.
fn measure_both(portal: &Portal, cookie: &str, seconds: u32, label: &str) {
    let login = measure(&format!("{}/login", portal.origin()), None, seconds);
    let signed_in = measure(
        &format!("{}/sessions", portal.origin()),
        Some(&format!("Cookie: __Host-plantgate={cookie}")),
        seconds,
    );
    for (page, child) in [
        ("GET /login", login),
        ("GET /sessions (signed in)", signed_in),
    ] {
        let (requests, p50, p99) = latency(&child.wait_with_output().unwrap());
        println!("{label:<16} {page:<28} {requests:>10} {p50:>10} {p99:>10}");
    }
}

fn main() {
    let bench = std::env::args().any(|arg| arg == "--bench");
    let (measure_seconds, flood_seconds) = if bench { (20, 60) } else { (1, 3) };
    // The shipped limits: 10 sign-ins a minute per address, 5 wrong passwords lock.
    let mut portal = Portal::start("");
    portal.setup_admin();
    assert_eq!(portal.login("bench", EMAIL, PASSWORD).status, 303);
    let jar = std::fs::read_to_string(portal.jar("bench")).unwrap();
    let cookie = jar
        .lines()
        .find(|l| l.contains("__Host-plantgate\t"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap()
        .to_owned();

    println!(
        "sign-in flood: wrk, 2 threads, 200 connections, POST /login from one address for {flood_seconds} s;"
    );
    println!("measured by wrk, 1 connection per page, {measure_seconds} s each, over TLS");
    println!(
        "{:<16} {:<28} {:>10} {:>10} {:>10}",
        "", "page", "requests", "p50", "p99"
    );
    measure_both(&portal, &cookie, measure_seconds, "without flood");

    let script = portal.dir.path().join("login-flood.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\n\
             wrk.body = \"email=ada%40plant.example&password=Wrong-guess-1234\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Origin\"] = \"{}\"\n",
            portal.origin()
        ),
    )
    .unwrap();
    let before = portal.records().len();
    let flood = Command::new("wrk")
        .args(["-t2", "-c200", &format!("-d{flood_seconds}s"), "-s"])
        .arg(&script)
        .arg(format!("{}/login", portal.origin()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("wrk (apt-get install wrk)");
    // The flood's 200 TLS handshakes come first; measure the steady flood after them.
    std::thread::sleep(Duration::from_secs(1));
    measure_both(&portal, &cookie, measure_seconds, "under flood");
    let flood = flood.wait_with_output().unwrap();
    let flood_text = String::from_utf8_lossy(&flood.stdout);
    let sent = flood_text
        .lines()
        .find(|l| l.contains("requests in"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let refused = flood_text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!("flood: {sent}; {refused}");

    // A graceful stop writes the summaries still open; then count what the flood added.
    assert!(portal.terminate(), "the portal did not stop cleanly");
    let records = portal.records();
    let added = records.len() - before;
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records[before..] {
        *by_action.entry(record.action.clone()).or_default() += 1;
    }
    println!("audit records the flood added: {added} {by_action:?}");
    for record in &records[before..] {
        if record.action == appliance::refusals::SUMMARY_ACTION {
            println!(
                "  {} from {}: {}",
                record.action, record.source, record.details
            );
        }
    }
    assert!(added < 100, "the flood added {added} audit records");
}
