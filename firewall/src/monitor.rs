//! Watching nftables for changes to our table made by anyone else, so drift is repaired at
//! once instead of at the next timer tick.
//!
//! A child `nft monitor` reads the kernel's nftables notifications (the netlink multicast
//! group every ruleset change is announced on) and prints one line per object changed, then
//! `# new generation N by process PID (COMM)` when the transaction commits. A transaction
//! that touched `inet plantgate` and was not committed by one of our own `nft` children
//! (their PIDs are noted by [`note_own_transaction`] before they run) is drift: the watcher
//! asks for a reconcile. Our own transactions are skipped, so a repair does not trigger
//! another; and a reconcile that finds nothing to change applies nothing, so even a missed
//! PID cannot make the controller loop on its own changes.
//!
//! If `nft monitor` dies it is started again after a second (longer if it keeps dying), and
//! a reconcile is asked for once it listens, as changes made in between went unseen. The periodic reconcile stays as the
//! backstop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ruleset::TABLE;

/// How long a noted PID of ours stays noted: our transactions are announced within
/// milliseconds of the commit; forgetting old ones keeps a reused PID from hiding drift.
const OWN_PID_TTL: Duration = Duration::from_secs(10);

/// The PIDs of `nft` processes this controller started to apply a transaction.
static OWN: Mutex<Vec<(u32, Instant)>> = Mutex::new(Vec::new());

/// Notes that `pid`, one of our own `nft` children, is about to commit a transaction. Call
/// it right after spawning, before the transaction can be announced.
pub fn note_own_transaction(pid: u32) {
    let mut own = OWN.lock().unwrap_or_else(PoisonError::into_inner);
    own.retain(|(_, at)| at.elapsed() < OWN_PID_TTL);
    own.push((pid, Instant::now()));
}

/// Whether `pid` committed a transaction of ours; it is forgotten once matched.
fn is_own_transaction(pid: u32) -> bool {
    let mut own = OWN.lock().unwrap_or_else(PoisonError::into_inner);
    own.retain(|(_, at)| at.elapsed() < OWN_PID_TTL);
    match own.iter().position(|(noted, _)| *noted == pid) {
        Some(index) => {
            own.remove(index);
            true
        }
        None => false,
    }
}

/// `NETLINK_NETFILTER`, and the bit of its multicast group `NFNLGRP_NFTABLES` (7).
const NETLINK_NETFILTER: &str = "12";
const NFTABLES_GROUP_BIT: u32 = 1 << (7 - 1);

/// Whether process `pid` has joined the netlink group that announces nftables changes:
/// from then on no change escapes it. Read from `/proc/PID/net/netlink` (the sockets of its
/// network namespace) and matched by inode against the process's own sockets.
pub fn is_subscribed(pid: u32) -> bool {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")) else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, NETLINK_NETFILTER, _, groups, .., inode]
            if inodes.contains(*inode)
                && u32::from_str_radix(groups, 16).is_ok_and(|g| g & NFTABLES_GROUP_BIT != 0))
    })
}

/// How long to wait for a new `nft monitor` to subscribe before going on without knowing.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

fn wait_until_subscribed(child: &mut std::process::Child) -> bool {
    let since = Instant::now();
    while since.elapsed() < SUBSCRIBE_WAIT {
        if is_subscribed(child.id()) {
            return true;
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// One line of `nft monitor`, as far as the watcher cares.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// An object of `inet plantgate` was added, changed or deleted.
    OurTable,
    /// A transaction committed, by this process if the kernel said so.
    Generation {
        pid: Option<u32>,
        comm: &'a str,
    },
    Other,
}

fn parse(line: &str) -> Line<'_> {
    if let Some(rest) = line.strip_prefix("# new generation ") {
        // "# new generation 7 by process 15918 (nft)"
        let mut words = rest.split_whitespace().skip(1);
        let pid = match (words.next(), words.next(), words.next()) {
            (Some("by"), Some("process"), Some(pid)) => pid.parse().ok(),
            _ => None,
        };
        let comm = words.next().map_or("", |comm| {
            comm.trim_start_matches('(').trim_end_matches(')')
        });
        return Line::Generation { pid, comm };
    }
    // "<add|delete|insert|replace|flush|...> <object> inet plantgate ..."
    let mut words = line.split_whitespace().skip(2);
    if words.next() == Some("inet") && words.next() == Some(TABLE) {
        Line::OurTable
    } else {
        Line::Other
    }
}

/// The running watcher. Drop does not stop it: it lives as long as the controller.
#[derive(Debug, Clone)]
pub struct Watch {
    /// A reconcile has been asked for and not started yet: further changes ask for none.
    queued: Arc<AtomicBool>,
}

impl Watch {
    /// Starts watching in a thread of its own, and returns once `nft monitor` listens (or
    /// after a short wait if that cannot be told), so a change made after this returns is
    /// seen. `ask` is called to request a reconcile; when it returns false (the controller's
    /// loop is gone) the watcher stops.
    pub fn start(ask: impl Fn() -> bool + Send + 'static) -> Watch {
        let queued = Arc::new(AtomicBool::new(false));
        let watch = Watch {
            queued: queued.clone(),
        };
        let ask_once = move || queued.swap(true, Ordering::SeqCst) || ask();
        let (listening, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || watch_forever(&ask_once, &listening));
        let _ = started.recv_timeout(SUBSCRIBE_WAIT + Duration::from_millis(500));
        watch
    }

    /// Call right before every reconcile: a change seen from now on asks for another.
    pub fn reconciling(&self) {
        self.queued.store(false, Ordering::SeqCst);
    }
}

/// The pause before starting `nft monitor` again doubles after each quick death, up to this,
/// so a monitor that cannot run does not turn into a full reconcile every second.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A monitor that ran this long is taken to have worked: the next pause starts short again.
const RAN_WELL: Duration = Duration::from_secs(60);

fn watch_forever(ask: &dyn Fn() -> bool, listening: &std::sync::mpsc::Sender<()>) {
    let mut restarted = false;
    let mut delay = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match Command::new("nft")
            .arg("monitor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(mut child) => {
                if !wait_until_subscribed(&mut child) {
                    tracing::warn!(
                        pid = child.id(),
                        "cannot tell whether nft monitor listens yet; going on"
                    );
                }
                tracing::debug!(pid = child.id(), "watching nftables for changes");
                let _ = listening.send(());
                // Changes made while no monitor ran went unseen: check now.
                if restarted && !ask() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                let keep_going = match child.stdout.take() {
                    Some(stdout) => read_events(BufReader::new(stdout), ask),
                    None => true,
                };
                let _ = child.kill();
                let status = child.wait();
                if !keep_going {
                    return;
                }
                tracing::error!(
                    status = ?status.map(|s| s.to_string()),
                    "nft monitor stopped; starting it again (drift is caught by the timer meanwhile)"
                );
            }
            Err(err) => {
                let _ = listening.send(());
                tracing::error!(error = %err, "cannot start nft monitor; drift is caught by the timer only");
            }
        }
        restarted = true;
        if started.elapsed() >= RAN_WELL {
            delay = Duration::from_secs(1);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// Reads `nft monitor` output until it ends; false when the controller's loop is gone.
fn read_events(reader: impl BufRead, ask: &dyn Fn() -> bool) -> bool {
    let mut touched = false;
    for line in reader.lines() {
        let Ok(line) = line else {
            return true;
        };
        match parse(&line) {
            Line::OurTable => touched = true,
            Line::Generation { pid, comm } => {
                if std::mem::take(&mut touched) && !pid.is_some_and(is_own_transaction) {
                    tracing::warn!(
                        pid,
                        process = comm,
                        "table inet {TABLE} changed by another process; repairing now"
                    );
                    if !ask() {
                        return false;
                    }
                }
            }
            Line::Other => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_apart() {
        assert_eq!(
            parse("insert rule inet plantgate forward accept"),
            Line::OurTable
        );
        assert_eq!(parse("delete table inet plantgate"), Line::OurTable);
        assert_eq!(
            parse("add element inet plantgate grants { 10.0.0.1 . 10.0.0.2 . tcp . 502 }"),
            Line::OurTable
        );
        assert_eq!(parse("add table ip plantgate"), Line::Other);
        assert_eq!(parse("add table inet plantgate2"), Line::Other);
        assert_eq!(
            parse("# new generation 7 by process 15918 (nft)"),
            Line::Generation {
                pid: Some(15918),
                comm: "nft"
            }
        );
        assert_eq!(
            parse("# new generation 7"),
            Line::Generation {
                pid: None,
                comm: ""
            }
        );
    }

    #[test]
    fn only_foreign_transactions_on_our_table_ask_for_a_reconcile() {
        let asked = std::cell::Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            true
        };
        note_own_transaction(4_000_001);
        let events = "add element inet plantgate grants { 1 }\n\
             # new generation 2 by process 4000001 (nft)\n\
             add table ip other\n\
             # new generation 3 by process 4000002 (nft)\n\
             insert rule inet plantgate forward accept\n\
             # new generation 4 by process 4000003 (nft)\n\
             add element inet plantgate grants { 2 }\n\
             # new generation 5 by process 4000001 (nft)\n";
        assert!(read_events(events.as_bytes(), &ask));
        // Generation 4 was someone else's; generation 5 reuses a PID already matched once.
        assert_eq!(asked.get(), 2);
    }
}
