//! What refused sign-ins cost under a flood: audit records and CPU.
//!
//! # Summaries ([`Refusals`])
//!
//! One address can send tens of thousands of sign-in attempts a minute. Recording each
//! refusal would fill the data partition (about 6.5 GB a day from one address), so the
//! portal records, per source address and window ([`Refusals::new`]: `web.refusal_summary_seconds`,
//! 60 s by default, starting at the source's first refusal):
//!
//! - the first refusal of each kind (throttled, unknown account, account locked, account
//!   disabled, too busy, ...) in full, as before;
//! - every later one only in memory, and when the window ends one `auth.login.refused.summary`
//!   record: how many were refused, why (count per reason), which accounts were tried (the
//!   first [`MAX_LISTED`] with their counts, and how many distinct), and the first and last
//!   time. The portal writes due summaries every second even when the flood has stopped,
//!   and everything still open when it shuts down.
//!
//! So one source adds at most one record per kind of refusal and one summary per window.
//! What is not summarised: every successful sign-in, every wrong password (each is a real
//! guess at a real account, and the lockout already bounds them: `web.lockout_attempts` per
//! counter and lock period), every lock and unlock, and a refused sign-in whose password was
//! right (a disabled account's owner, or someone who has it).
//!
//! The table is bounded: at most [`MAX_SOURCES`] addresses have a window open at once. A
//! refusal from yet another address is counted in one "other sources" window, whose summary
//! also lists the addresses (the first [`MAX_LISTED`], and how many distinct) instead of
//! growing the table or being dropped.
//!
//! # Password checks ([`CheckGate`])
//!
//! Argon2id takes about 100 ms of one core and 64 MiB. `web::block` runs up to hundreds of
//! blocking tasks at once, so a flood of sign-ins with distinct accounts would run that many
//! checks side by side and starve every page. Checks pass through one gate per process: half
//! the cores (at least one) check at once, the rest of the machine serves pages, and at
//! most [`WAITING_PER_PERMIT`] checks per permit wait; the sign-in page refuses any more at
//! once (429 with `Retry-After`) instead of queueing without end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::error::Result;
use crate::time::format_us;

/// The action of a summary record.
pub const SUMMARY_ACTION: &str = "auth.login.refused.summary";
/// The source of the summary of refusals from addresses beyond [`MAX_SOURCES`].
pub const OTHER_SOURCES: &str = "other sources";
/// At most this many addresses have a window open at once.
pub const MAX_SOURCES: usize = 1024;
/// Accounts (and, for other sources, addresses) named one by one in a summary.
pub const MAX_LISTED: usize = 20;
/// Distinct accounts counted exactly per window; past this a summary says "at least".
const MAX_DISTINCT: usize = 256;
/// An attacker chooses the email; a summary keeps this much of it.
const MAX_NAME_CHARS: usize = 254;

/// What the caller does with a refusal it reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// The first of its kind from this source in the window: record it in full.
    InFull,
    /// Counted for the window's summary: record nothing now.
    Counted,
}

/// Names with counts: the first [`MAX_LISTED`] by name, the rest as a number, and the
/// distinct names (exact up to [`MAX_DISTINCT`]).
#[derive(Debug, Default)]
struct Listing {
    listed: BTreeMap<String, u64>,
    unlisted: u64,
    distinct: HashSet<u64>,
    more_than_counted: bool,
}

impl Listing {
    fn add(&mut self, name: &str, hasher: &RandomState) {
        let name: String = name.chars().take(MAX_NAME_CHARS).collect();
        if let Some(n) = self.listed.get_mut(&name) {
            *n += 1;
        } else if self.listed.len() < MAX_LISTED {
            self.listed.insert(name.clone(), 1);
        } else {
            self.unlisted += 1;
        }
        let hash = hasher.hash_one(&name);
        if self.distinct.len() < MAX_DISTINCT {
            self.distinct.insert(hash);
        } else if !self.distinct.contains(&hash) {
            self.more_than_counted = true;
        }
    }
}

/// One source's window: the kinds already recorded in full, and what was only counted.
#[derive(Debug)]
struct Window {
    started_us: i64,
    in_full: HashSet<&'static str>,
    refused: u64,
    first_us: i64,
    last_us: i64,
    reasons: BTreeMap<&'static str, u64>,
    accounts: Listing,
    /// Only in the "other sources" window.
    sources: Listing,
}

impl Window {
    fn new(now: i64) -> Window {
        Window {
            started_us: now,
            in_full: HashSet::new(),
            refused: 0,
            first_us: now,
            last_us: now,
            reasons: BTreeMap::new(),
            accounts: Listing::default(),
            sources: Listing::default(),
        }
    }

    fn count(
        &mut self,
        reason: &'static str,
        account: Option<&str>,
        now: i64,
        hasher: &RandomState,
    ) {
        if self.refused == 0 {
            self.first_us = now;
        }
        self.refused += 1;
        self.last_us = self.last_us.max(now);
        *self.reasons.entry(reason).or_default() += 1;
        if let Some(account) = account {
            self.accounts.add(account, hasher);
        }
    }

    /// The summary record, unless nothing was only counted.
    fn summary(&self, source: &str, window_us: i64) -> Option<AuditEvent> {
        if self.refused == 0 {
            return None;
        }
        let mut details = serde_json::json!({
            "refused": self.refused,
            "reasons": self.reasons,
            "first": format_us(self.first_us),
            "last": format_us(self.last_us),
            "window_started": format_us(self.started_us),
            "window_seconds": window_us / 1_000_000,
            "accounts": self.accounts.listed,
            "accounts_distinct": self.accounts.distinct.len(),
            "accounts_distinct_at_least": self.accounts.more_than_counted,
            "attempts_at_unlisted_accounts": self.accounts.unlisted,
            "note": "refused sign-ins after the first of each kind, which is recorded in full",
        });
        if source == OTHER_SOURCES {
            details["note"] =
                "refused sign-ins from addresses beyond the summary table's limit".into();
            details["sources"] = serde_json::json!(self.sources.listed);
            details["sources_distinct"] = self.sources.distinct.len().into();
            details["sources_distinct_at_least"] = self.sources.more_than_counted.into();
            details["attempts_from_unlisted_sources"] = self.sources.unlisted.into();
        }
        Some(
            AuditEvent::new(Actor::System("web".into()), SUMMARY_ACTION)
                .source(source)
                .outcome(Outcome::Denied)
                .details(details),
        )
    }
}

#[derive(Debug, Default)]
struct Table {
    windows: HashMap<String, Window>,
    other: Option<Window>,
    /// Summaries of windows that ended when their source refused again, until the next flush.
    ready: Vec<AuditEvent>,
}

/// The portal's summariser of refused sign-ins; see the module's documentation.
#[derive(Debug)]
pub struct Refusals {
    window_us: i64,
    hasher: RandomState,
    table: Mutex<Table>,
}

impl Refusals {
    /// Summaries per `window_seconds` (at least one).
    pub fn new(window_seconds: u32) -> Refusals {
        Refusals {
            window_us: i64::from(window_seconds.max(1)) * 1_000_000,
            hasher: RandomState::new(),
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere leaves counts, never a broken invariant worth refusing over.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reports a refused sign-in from `source` (an address) for `reason`, at `account` if
    /// one was named; says whether the caller records it in full.
    pub fn note(
        &self,
        source: &str,
        reason: &'static str,
        account: Option<&str>,
        now: i64,
    ) -> Noted {
        let window_us = self.window_us;
        let mut table = self.table();
        let table = &mut *table;
        if let Some(window) = table.windows.get(source)
            && window.started_us + window_us <= now
        {
            let summary = window.summary(source, window_us);
            table.windows.remove(source);
            table.ready.extend(summary);
        }
        if !table.windows.contains_key(source) && table.windows.len() >= MAX_SOURCES {
            if let Some(other) = &table.other
                && other.started_us + window_us <= now
            {
                table.ready.extend(other.summary(OTHER_SOURCES, window_us));
                table.other = None;
            }
            let other = table.other.get_or_insert_with(|| Window::new(now));
            other.count(reason, account, now, &self.hasher);
            other.sources.add(source, &self.hasher);
            return Noted::Counted;
        }
        let window = table
            .windows
            .entry(source.to_owned())
            .or_insert_with(|| Window::new(now));
        if window.in_full.insert(reason) {
            Noted::InFull
        } else {
            window.count(reason, account, now, &self.hasher);
            Noted::Counted
        }
    }

    /// Takes the summaries of every window ended by `now` (all of them with `everything`,
    /// at shutdown); the windows are closed.
    pub fn take(&self, now: i64, everything: bool) -> Vec<AuditEvent> {
        let window_us = self.window_us;
        let ended = |window: &Window| everything || window.started_us + window_us <= now;
        let mut table = self.table();
        let table = &mut *table;
        let mut events = std::mem::take(&mut table.ready);
        table.windows.retain(|source, window| {
            if !ended(window) {
                return true;
            }
            events.extend(window.summary(source, window_us));
            false
        });
        if table.other.as_ref().is_some_and(ended) {
            events.extend(
                table
                    .other
                    .take()
                    .and_then(|other| other.summary(OTHER_SOURCES, window_us)),
            );
        }
        events
    }

    /// Records the summaries [`Refusals::take`] gives. Should the store refuse them, they
    /// are logged instead (they are gone from memory either way) and the error returned.
    pub fn flush(&self, audit: &Audit, now: i64, everything: bool) -> Result<usize> {
        let events = self.take(now, everything);
        if events.is_empty() {
            return Ok(0);
        }
        let written = events.len();
        if let Err(err) = audit.record_all(events.clone()) {
            for event in &events {
                tracing::error!(source = %event.source, details = %event.details,
                    "could not record a summary of refused sign-ins");
            }
            return Err(err);
        }
        Ok(written)
    }

    /// How many sources have a window open, for tests of the bound.
    pub fn open_windows(&self) -> usize {
        let table = self.table();
        table.windows.len() + usize::from(table.other.is_some())
    }
}

/// Checks that may wait per permit of the [`CheckGate`] before more are refused.
pub const WAITING_PER_PERMIT: usize = 8;
/// No check waits longer than this for a permit; a sign-in is refused as too busy then.
const MAX_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct GateState {
    running: usize,
    waiting: usize,
}

/// Bounds how many password checks run at once, and how many wait; see the module's
/// documentation.
#[derive(Debug)]
pub struct CheckGate {
    permits: usize,
    max_waiting: usize,
    state: Mutex<GateState>,
    freed: Condvar,
}

/// Held while one check runs.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a CheckGate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.state();
        state.running = state.running.saturating_sub(1);
        drop(state);
        self.gate.freed.notify_one();
    }
}

impl CheckGate {
    pub fn new(permits: usize, max_waiting: usize) -> CheckGate {
        CheckGate {
            permits: permits.max(1),
            max_waiting,
            state: Mutex::new(GateState::default()),
            freed: Condvar::new(),
        }
    }

    /// The process's gate: half the cores check at once (at least one).
    pub fn shared() -> &'static CheckGate {
        static GATE: OnceLock<CheckGate> = OnceLock::new();
        GATE.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let permits = cores.div_ceil(2);
            CheckGate::new(permits, permits * WAITING_PER_PERMIT)
        })
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A permit to run one check. `bounded`: `None` at once when the queue is full, or
    /// after [`MAX_WAIT`]; otherwise it waits as long as it takes (an administrator's own
    /// password, say, which only a signed-in user can send).
    pub fn enter(&self, bounded: bool) -> Option<Pass<'_>> {
        let mut state = self.state();
        if state.running < self.permits && state.waiting == 0 {
            state.running += 1;
            return Some(Pass { gate: self });
        }
        if bounded && state.waiting >= self.max_waiting {
            return None;
        }
        state.waiting += 1;
        let deadline = Instant::now() + MAX_WAIT;
        while state.running >= self.permits {
            let left = deadline.saturating_duration_since(Instant::now());
            if bounded && left.is_zero() {
                state.waiting -= 1;
                return None;
            }
            let wait = if bounded { left } else { MAX_WAIT };
            state = self
                .freed
                .wait_timeout(state, wait)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(state, _)| state);
        }
        state.waiting -= 1;
        state.running += 1;
        Some(Pass { gate: self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn the_first_of_each_kind_in_full_the_rest_in_one_summary_per_window() {
        let refusals = Refusals::new(60);
        let t0 = 1_000 * S;
        assert_eq!(
            refusals.note("192.0.2.1", "throttled", Some("ada@plant.example"), t0),
            Noted::InFull
        );
        for i in 0..1000 {
            let account = if i % 2 == 0 {
                "ada@plant.example"
            } else {
                "bob@plant.example"
            };
            assert_eq!(
                refusals.note("192.0.2.1", "throttled", Some(account), t0 + i),
                Noted::Counted
            );
        }
        assert_eq!(
            refusals.note("192.0.2.1", "unknown account", Some("x@y.z"), t0 + 5 * S),
            Noted::InFull,
            "a new kind is shown once in full"
        );
        assert!(
            refusals.take(t0 + 59 * S, false).is_empty(),
            "the window is still open"
        );
        let summaries = refusals.take(t0 + 60 * S, false);
        assert_eq!(summaries.len(), 1);
        let summary = &summaries[0];
        assert_eq!(
            (summary.action.as_str(), summary.source.as_str()),
            (SUMMARY_ACTION, "192.0.2.1")
        );
        assert_eq!(summary.details["refused"], 1000);
        assert_eq!(summary.details["reasons"]["throttled"], 1000);
        assert_eq!(summary.details["accounts"]["ada@plant.example"], 500);
        assert_eq!(summary.details["accounts_distinct"], 2);
        assert_eq!(refusals.open_windows(), 0);
        // The next window starts afresh, with its own first refusal in full.
        assert_eq!(
            refusals.note("192.0.2.1", "throttled", None, t0 + 61 * S),
            Noted::InFull
        );
    }

    #[test]
    fn a_window_that_ended_is_summarised_when_its_source_comes_back_before_a_flush() {
        let refusals = Refusals::new(10);
        refusals.note("192.0.2.1", "throttled", None, 0);
        refusals.note("192.0.2.1", "throttled", None, S);
        assert_eq!(
            refusals.note("192.0.2.1", "throttled", None, 11 * S),
            Noted::InFull
        );
        refusals.note("192.0.2.1", "throttled", None, 12 * S);
        let summaries = refusals.take(12 * S, true);
        let counts: Vec<_> = summaries
            .iter()
            .map(|s| s.details["refused"].clone())
            .collect();
        assert_eq!(counts, [1, 1], "one summary per window");
    }

    #[test]
    fn sources_beyond_the_limit_fold_into_one_summary_and_the_table_stays_bounded() {
        let refusals = Refusals::new(60);
        for i in 0..MAX_SOURCES + 500 {
            let source = format!("10.0.{}.{}", i / 256, i % 256);
            refusals.note(&source, "throttled", Some("ada@plant.example"), 0);
            refusals.note(&source, "throttled", Some("ada@plant.example"), 1);
        }
        assert_eq!(refusals.open_windows(), MAX_SOURCES + 1);
        let summaries = refusals.take(60 * S, false);
        assert_eq!(summaries.len(), MAX_SOURCES + 1);
        let other = summaries
            .iter()
            .find(|s| s.source == OTHER_SOURCES)
            .unwrap();
        assert_eq!(
            other.details["refused"], 1000,
            "every refusal of the 500 is counted"
        );
        assert_eq!(other.details["sources_distinct"], 256);
        assert_eq!(other.details["sources_distinct_at_least"], true);
        assert_eq!(
            other.details["sources"].as_object().unwrap().len(),
            MAX_LISTED
        );
    }

    #[test]
    fn accounts_listed_are_bounded_and_long_names_cut() {
        let refusals = Refusals::new(60);
        refusals.note("192.0.2.1", "unknown account", None, 0);
        for i in 0..1000 {
            let account = format!("{i}{}@x.example", "a".repeat(1000));
            refusals.note("192.0.2.1", "unknown account", Some(&account), 1);
        }
        let summary = refusals.take(0, true).pop().unwrap();
        let listed = summary.details["accounts"].as_object().unwrap();
        assert_eq!(listed.len(), MAX_LISTED);
        assert!(listed.keys().all(|k| k.chars().count() <= MAX_NAME_CHARS));
        assert_eq!(
            summary.details["attempts_at_unlisted_accounts"],
            1000 - MAX_LISTED
        );
        assert!(summary.details.to_string().len() < 16 * 1024);
    }

    #[test]
    fn the_gate_refuses_past_its_queue_and_lets_waiters_in_as_permits_free() {
        let gate = CheckGate::new(1, 1);
        let first = gate.enter(true);
        assert!(first.is_some());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| gate.enter(true).is_some());
            // The waiter is queued once the queue is full: a third is refused at once.
            while gate.state().waiting == 0 {
                std::thread::yield_now();
            }
            assert!(gate.enter(true).is_none(), "the queue is full");
            drop(first);
            assert!(waiter.join().unwrap(), "the waiter got the freed permit");
        });
        assert_eq!(gate.state().running, 0);
    }
}
