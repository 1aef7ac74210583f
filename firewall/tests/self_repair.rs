//! The controller supervises itself: it tells systemd when it is ready and that it is alive,
//! and it repairs changes others make to its table as they happen, not at the next timer.
//! Real nftables in network namespaces; needs root.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
#[ignore = "a TCP server/client process for the tests below, not a test of its own"]
fn net_helper() {
    net_helper_main();
}

/// Long enough that the timer cannot be what repairs drift in these tests.
const NO_TIMER: (&str, &str) = ("PLANTGATE_FIREWALL__RECONCILE_SECONDS", "3600");
/// Generous: the repair is expected well within a second; this only keeps a broken build
/// from hanging. The measured time is printed.
const REPAIR_DEADLINE: Duration = Duration::from_secs(5);

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_controller_says_ready_after_applying_and_then_feeds_the_watchdog() {
    let t = Topology::new();
    let path = t.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut daemon = t
        .firewall_command(&["run"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .spawn()
        .expect("start plantgate-firewall");

    let first = receive(&socket);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message: {first:?}"
    );
    // Ready means the firewall is in place: services ordered after it start behind it.
    assert!(
        t.table_listing().contains("chain forward"),
        "READY=1 came before the table was applied"
    );
    assert!(first.contains("STATUS=applied"), "{first:?}");
    let started = Instant::now();
    let second = receive(&socket);
    println!(
        "READY=1 then {:?} after {:?}",
        second.trim(),
        started.elapsed()
    );
    assert_eq!(second, "WATCHDOG=1\n");
    // And it keeps coming while the loop turns.
    assert_eq!(receive(&socket), "WATCHDOG=1\n");

    daemon.kill().expect("kill");
    daemon.wait().expect("reap");
}

#[test]
fn the_unit_has_systemd_restart_and_watch_the_controller() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../image/meta-plantgate/recipes-plantgate/plantgate/files/plantgate-firewall.service"
    ))
    .expect("the unit file");
    let settings: Vec<&str> = unit.lines().map(str::trim).collect();
    for wanted in ["Type=notify", "Restart=always"] {
        assert!(settings.contains(&wanted), "{wanted} missing from the unit");
    }
    let watchdog = settings
        .iter()
        .find_map(|l| l.strip_prefix("WatchdogSec="))
        .expect("WatchdogSec= in the unit");
    let seconds: u64 = watchdog.trim_end_matches('s').parse().expect("seconds");
    // The controller feeds it every second; systemd needs at least two chances.
    assert!(seconds >= 2, "WatchdogSec={watchdog}");
}

/// Polls until `repaired()` holds, and returns how long that took from `since`.
fn wait_for(since: Instant, what: &str, repaired: impl Fn() -> bool) -> Duration {
    while !repaired() {
        assert!(
            since.elapsed() < REPAIR_DEADLINE,
            "{what}: not repaired within {REPAIR_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    since.elapsed()
}

fn drift_repairs(t: &Topology) -> Vec<String> {
    t.audit()
        .into_iter()
        .filter(|(action, _, _)| action == "firewall.drift.repaired")
        .map(|(_, _, details)| details["why"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn forward_chain(listing: &str) -> String {
    listing
        .split("chain forward {")
        .nth(1)
        .and_then(|rest| rest.split("\n\t}").next())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn hand_made_holes_are_closed_within_a_second_and_audited() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[502]);
    t.start_daemon_with(&[NO_TIMER]);
    let u = t.uplink_ns.clone();
    let applied = forward_chain(&t.table_listing());
    assert!(applied.contains("policy drop"), "{applied}");

    let tampering = [
        (
            "insert rule inet plantgate forward accept",
            "rules changed by hand",
        ),
        (
            "chain inet plantgate forward { policy accept; }",
            "rules changed by hand",
        ),
        ("delete table inet plantgate", "table deleted by hand"),
    ];
    let mut expected = Vec::new();
    for (script, why) in tampering {
        let audited_before = drift_repairs(&t).len();
        let at = Instant::now();
        t.nft(script);
        let restored = wait_for(at, script, || forward_chain(&t.table_listing()) == applied);
        let audited = wait_for(at, script, || drift_repairs(&t).len() > audited_before);
        println!("{script:?}: ruleset restored after {restored:?}, audited after {audited:?}");
        expected.push(why);
        assert_eq!(drift_repairs(&t), expected, "after {script:?}");
        // Nothing crosses once it is repaired.
        assert!(
            t.connect_from(&u, REQUESTER, DEVICE, 502).is_none(),
            "{script:?}: a connection crossed after the repair"
        );
    }

    // The controller's own changes are not drift: a grant opens without a repair.
    t.listen(&t.device_ns.clone(), &[102]);
    t.open_grant(REQUESTER, DEVICE, "s7", 600).expect("grant");
    assert!(t.connect_from(&u, REQUESTER, DEVICE, 102).is_some());
    let answer = t.poke().expect("poke");
    assert!(answer.contains("replaced=no"), "{answer}");
    assert_eq!(drift_repairs(&t), expected);
}

/// The PIDs of the `nft monitor` processes in namespace `ns`.
fn monitors(ns: &str) -> Vec<String> {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with(b"nft\0monitor\0"))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_killed_monitor_is_started_again_and_drift_is_still_repaired_at_once() {
    let mut t = Topology::new();
    t.start_daemon_with(&[NO_TIMER]);
    let ns = t.appliance_ns.clone();
    let applied = forward_chain(&t.table_listing());
    let at = Instant::now();
    let first = loop {
        let found = monitors(&ns);
        if let [pid] = found.as_slice() {
            break pid.clone();
        }
        assert!(at.elapsed() < REPAIR_DEADLINE, "monitors: {found:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let killed = Command::new("kill")
        .args(["-9", &first])
        .status()
        .expect("kill");
    assert!(killed.success());
    let at = Instant::now();
    // Once it listens (has joined the nftables netlink group), no change escapes it.
    wait_for(at, "the monitor", || {
        matches!(monitors(&ns).as_slice(), [pid] if *pid != first
            && pid.parse().is_ok_and(firewall::monitor::is_subscribed))
    });
    println!("nft monitor running again after {:?}", at.elapsed());

    let audited_before = drift_repairs(&t).len();
    let at = Instant::now();
    t.nft("insert rule inet plantgate forward accept");
    let restored = wait_for(at, "accept-all after the restart", || {
        forward_chain(&t.table_listing()) == applied
    });
    wait_for(at, "the audit record", || {
        drift_repairs(&t).len() > audited_before
    });
    println!("accept-all rule removed after {restored:?}");
    assert_eq!(drift_repairs(&t), ["rules changed by hand"]);
}
