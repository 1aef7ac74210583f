//! A flood of refused sign-ins from one address, against the real `plantgate-web` binary:
//! the audit log grows by a bounded number of records that still say how many attempts were
//! refused, why, for which accounts and from where; summaries are written when their window
//! ends even once the flood has stopped, and when the portal stops; a flood of password
//! checks is refused at once (429) rather than queued without end.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use appliance::audit::chain::AuditRecord;
use appliance::refusals::SUMMARY_ACTION;
use common::*;
use testkit::on_both_backends;
use testkit::store::Backend;

const UNKNOWN: &str = "nobody@plant.example";

fn details(record: &AuditRecord) -> serde_json::Value {
    serde_json::from_str(&record.details).unwrap_or(serde_json::Value::Null)
}

/// `count` sign-in attempts for `email` from 127.0.0.1, 50 at a time (one `curl`, which
/// waits for each answer as a browser does: the portal answers a throttled one after a
/// pause); returns the statuses.
fn flood(portal: &Portal, email: &str, count: usize) -> Vec<u16> {
    let url = format!("{}/login?attempt=[1-{count}]", portal.origin());
    let output = Command::new("curl")
        .args(["-sk", "--max-time", "120", "-o", "/dev/null"])
        .args(["--parallel", "--parallel-immediate", "--parallel-max", "50"])
        .args(["-w", "\\nSTATUS %{http_code}\\n"])
        .args(["-H", &format!("Origin: {}", portal.origin())])
        .args(["--data-urlencode", &format!("email={email}")])
        .args(["--data-urlencode", "password=Guessing-0000"])
        .arg(&url)
        .output()
        .expect("curl");
    let statuses: Vec<u16> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("STATUS "))
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert_eq!(statuses.len(), count, "curl did not send them all");
    statuses
}

/// Refused attempts the records account for: one each for those recorded in full, and
/// each summary's count.
fn refusals_accounted(records: &[AuditRecord]) -> u64 {
    records
        .iter()
        .map(|r| match r.action.as_str() {
            "auth.login.failed" | "auth.login.throttled" => 1,
            SUMMARY_ACTION => details(r)["refused"].as_u64().unwrap(),
            _ => 0,
        })
        .sum()
}

fn summaries(records: &[AuditRecord]) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r.action == SUMMARY_ACTION)
        .map(|r| {
            assert_eq!(r.source, "127.0.0.1", "a summary names its source");
            details(r)
        })
        .collect()
}

/// Per account and per reason, summed over summaries.
fn summed(summaries: &[serde_json::Value], key: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for summary in summaries {
        for (name, n) in summary[key].as_object().unwrap() {
            *sums.entry(name.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    sums
}

const FLOOD: usize = 200;

/// Two floods at once from one address, one at the owner's account, one at an account
/// that does not exist: 400 refusals add a few dozen records at most, which account for every
/// one of them; the summaries come by themselves after the flood stopped, and the owner's
/// sign-in from elsewhere is its own record.
fn a_flood_from_one_address_adds_a_bounded_number_of_records_that_account_for_it(backend: Backend) {
    let portal = Portal::start_on(
        backend,
        "logins_per_minute = 3\nrefusal_summary_seconds = 2",
    );
    portal.setup_admin();
    let before = portal.records().len();

    let statuses: Vec<u16> = std::thread::scope(|s| {
        let owner = s.spawn(|| flood(&portal, EMAIL, FLOOD));
        let unknown = s.spawn(|| flood(&portal, UNKNOWN, FLOOD));
        [owner.join().unwrap(), unknown.join().unwrap()].concat()
    });
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 429)),
        "{statuses:?}"
    );
    assert!(statuses.iter().filter(|s| **s == 429).count() > FLOOD);

    // Nothing more arrives: the summaries of the last windows are written by the portal's
    // own timer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let added = loop {
        let added: Vec<AuditRecord> = portal.records().split_off(before);
        if refusals_accounted(&added) == 2 * FLOOD as u64 {
            break added;
        }
        assert!(
            Instant::now() < deadline,
            "the summaries account for {} of {} refusals",
            refusals_accounted(&added),
            2 * FLOOD
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        added.len() < 50,
        "{} records for {} refusals",
        added.len(),
        2 * FLOOD
    );
    let summaries = summaries(&added);
    assert!(!summaries.is_empty());
    let accounts = summed(&summaries, "accounts");
    assert!(
        accounts.get(EMAIL).is_some_and(|n| *n > 0)
            && accounts.get(UNKNOWN).is_some_and(|n| *n > 0),
        "the summaries name the accounts tried: {accounts:?}"
    );
    let reasons = summed(&summaries, "reasons");
    assert!(
        reasons.get("throttled").is_some_and(|n| *n > 0),
        "{reasons:?}"
    );
    for summary in &summaries {
        assert!(summary["first"].as_str().unwrap() <= summary["last"].as_str().unwrap());
        assert!(summary["accounts_distinct"].as_u64().unwrap() >= 1);
    }
    // The first refusal of each kind is there in full, with the address.
    assert!(
        added
            .iter()
            .any(|r| r.action == "auth.login.throttled" && r.source == "127.0.0.1")
    );

    // The owner signs in from another address: one record of its own, as always.
    let signed_in = portal.post_with(
        Some("owner"),
        "/login",
        &[("email", EMAIL), ("password", PASSWORD)],
        &["--interface", "127.0.0.2"],
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let succeeded: Vec<AuditRecord> = portal
        .records()
        .into_iter()
        .filter(|r| r.action == "auth.login.succeeded")
        .collect();
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0].source, "127.0.0.2");
}

/// With a window longer than the test, the summary exists only in memory until the
/// portal stops: a graceful stop writes it.
fn the_summaries_still_open_are_written_when_the_portal_stops(backend: Backend) {
    let mut portal = Portal::start_on(
        backend,
        "logins_per_minute = 1\nrefusal_summary_seconds = 3600",
    );
    portal.setup_admin();
    let before = portal.records().len();
    let statuses = flood(&portal, UNKNOWN, 50);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 49);
    assert!(
        summaries(&portal.records().split_off(before)).is_empty(),
        "the window is still open"
    );

    assert!(portal.terminate(), "the portal did not stop cleanly");
    let added = portal.records().split_off(before);
    assert_eq!(refusals_accounted(&added), 50);
    let summaries = summaries(&added);
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        summaries[0]["refused"], 48,
        "all but the first of each kind"
    );
    assert_eq!(summaries[0]["reasons"]["throttled"], 48);
    assert_eq!(summaries[0]["accounts"][UNKNOWN], 48);
}

on_both_backends!(
    a_flood_from_one_address_adds_a_bounded_number_of_records_that_account_for_it,
    the_summaries_still_open_are_written_when_the_portal_stops,
);

/// Sixty sign-ins at once for accounts that do not exist, each from its own `curl`: the
/// portal checks a few passwords at a time (decoys, here) and refuses the rest at once with
/// 429 and `Retry-After` instead of queueing every Argon2 check; a page still answers.
#[test]
fn password_checks_past_the_queue_are_refused_at_once() {
    const AT_ONCE: usize = 60;
    let portal = Portal::start("logins_per_minute = 10000");
    portal.setup_admin();
    let start = Barrier::new(AT_ONCE);
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let (portal, start) = (&portal, &start);
                s.spawn(move || {
                    start.wait();
                    portal.login(
                        &format!("c{i}"),
                        &format!("nobody-{i}@plant.example"),
                        "Guess-12345",
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(
        replies.iter().all(|r| matches!(r.status, 401 | 429)),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(!busy.is_empty(), "every check was queued");
    assert!(busy.iter().all(|r| r.header("retry-after") == Some("2")));
    assert!(
        replies.iter().any(|r| r.status == 401),
        "none was checked at all"
    );
    assert_eq!(portal.get(None, "/login").status, 200);
}
