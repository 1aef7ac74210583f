//! The firewall against real nftables, in network namespaces, with real TCP.
//! Needs root; without it every test fails with a message saying so.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
#[ignore = "a TCP server/client process for the tests below, not a test of its own"]
fn net_helper() {
    net_helper_main();
}

#[test]
fn without_a_grant_nothing_crosses_in_either_direction() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102, 502, 22, 80]);
    t.listen(&t.uplink_ns.clone(), &[9000]);
    let (u, d) = (t.uplink_ns.clone(), t.device_ns.clone());
    // Before the firewall, the routes work: what blocks below is the firewall.
    assert_eq!(
        t.reachable(&[(&u, REQUESTER, DEVICE, 102), (&d, DEVICE, REQUESTER, 9000)]),
        [true, true]
    );

    t.start_daemon();
    let blocked = t.reachable(&[
        (&u, REQUESTER, DEVICE, 102),
        (&u, REQUESTER, DEVICE, 502),
        (&u, REQUESTER, DEVICE, 22),
        (&u, REQUESTER, DEVICE, 80),
        (&u, OTHER_REQUESTER, OTHER_DEVICE, 102),
        (&d, DEVICE, REQUESTER, 9000),
        (&d, OTHER_DEVICE, OTHER_REQUESTER, 9000),
    ]);
    assert_eq!(blocked, [false; 7]);
    // Every refused attempt is counted under its reason.
    let status = t.firewall_command(&["status"]).output().expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    let forward_drops: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("drop_forward")
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no drop_forward counter: {text}"));
    assert!(forward_drops >= 7, "{text}");
}

#[test]
fn the_portal_answers_only_on_uplink_and_the_ingest_only_on_device() {
    let mut t = Topology::new();
    // Stand-ins for plantgate-web and plantgate-ingest, listening on the appliance.
    t.listen(&t.appliance_ns.clone(), &[PORTAL_PORT, INGEST_PORT, 5555]);
    t.start_daemon();
    let (u, d) = (t.uplink_ns.clone(), t.device_ns.clone());
    let results = t.reachable(&[
        (&u, REQUESTER, APPLIANCE_UPLINK, PORTAL_PORT),
        (&d, DEVICE, APPLIANCE_DEVICE, PORTAL_PORT),
        (&d, DEVICE, APPLIANCE_UPLINK, PORTAL_PORT),
        (&d, DEVICE, APPLIANCE_DEVICE, INGEST_PORT),
        (&u, REQUESTER, APPLIANCE_UPLINK, INGEST_PORT),
        (&u, REQUESTER, APPLIANCE_DEVICE, INGEST_PORT),
        (&u, REQUESTER, APPLIANCE_UPLINK, 5555),
        (&d, DEVICE, APPLIANCE_DEVICE, 5555),
    ]);
    assert_eq!(
        results,
        [true, false, false, true, false, false, false, false]
    );
}

#[test]
fn a_grant_opens_exactly_its_port_from_its_requester_to_its_device() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102, 502]);
    t.start_daemon();
    t.open_grant(REQUESTER, DEVICE, "s7", 600).expect("grant");
    let (u, d) = (t.uplink_ns.clone(), t.device_ns.clone());
    let results = t.reachable(&[
        (&u, REQUESTER, DEVICE, 102),
        (&u, OTHER_REQUESTER, DEVICE, 102),
        (&u, REQUESTER, DEVICE, 502),
        (&u, REQUESTER, OTHER_DEVICE, 102),
        (&d, DEVICE, REQUESTER, 102),
    ]);
    assert_eq!(results, [true, false, false, false, false]);
    // Source NAT: the machine sees the appliance, so it needs no route back.
    assert_eq!(
        t.connect_from(&u, REQUESTER, DEVICE, 102).as_deref(),
        Some(APPLIANCE_DEVICE)
    );
    let opened = t
        .audit()
        .into_iter()
        .filter(|(action, _, _)| action == "firewall.grant.opened")
        .count();
    assert_eq!(opened, 1);
}

#[test]
fn a_forwarded_uplink_port_reaches_the_device_for_its_requester_only() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102]);
    t.start_daemon();
    let u = t.uplink_ns.clone();
    // The requester may not have a route to the device network: it talks to the appliance.
    let grant = t
        .open_forwarded_grant(REQUESTER, DEVICE, "s7", 600, Some(10102))
        .expect("grant");
    assert_eq!(
        t.connect_from(&u, REQUESTER, APPLIANCE_UPLINK, 10102)
            .as_deref(),
        Some(APPLIANCE_DEVICE)
    );
    assert_eq!(
        t.reachable(&[
            (&u, OTHER_REQUESTER, APPLIANCE_UPLINK, 10102),
            (&u, REQUESTER, APPLIANCE_UPLINK, 10103)
        ]),
        [false, false]
    );
    let taken = t
        .open_forwarded_grant(OTHER_REQUESTER, DEVICE, "s7", 600, Some(10102))
        .expect_err("port reused");
    assert!(taken.to_string().contains("already forwards"), "{taken}");
    let reserved = t
        .open_forwarded_grant(REQUESTER, DEVICE, "s7", 600, Some(PORTAL_PORT))
        .expect_err("portal port");
    assert!(
        reserved.to_string().contains("appliance's own services"),
        "{reserved}"
    );
    let several = t
        .open_forwarded_grant(REQUESTER, DEVICE, "http", 600, Some(10180))
        .expect_err("two ports");
    assert!(several.to_string().contains("exactly one"), "{several}");
    t.revoke(grant.id);
    assert!(
        t.connect_from(&u, REQUESTER, APPLIANCE_UPLINK, 10102)
            .is_none(),
        "the forward outlived its grant"
    );
}

#[test]
fn a_grant_closes_by_itself_when_it_expires() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102]);
    t.start_daemon();
    t.open_grant(REQUESTER, DEVICE, "s7", 2).expect("grant");
    let u = t.uplink_ns.clone();
    assert!(
        t.connect_from(&u, REQUESTER, DEVICE, 102).is_some(),
        "the grant did not open"
    );
    // Stop the controller: the kernel closes the pinhole on its own.
    t.kill_daemon();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        t.connect_from(&u, REQUESTER, DEVICE, 102).is_none(),
        "the grant outlived its expiry"
    );
    t.start_daemon();
    assert!(
        t.audit()
            .iter()
            .any(|(action, _, _)| action == "firewall.grant.expired")
    );
}

#[test]
fn revoking_a_grant_cuts_an_established_connection_within_a_second() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102]);
    t.start_daemon();
    let grant = t.open_grant(REQUESTER, DEVICE, "s7", 600).expect("grant");
    let u = t.uplink_ns.clone();
    let mut stream = t.stream(&u, REQUESTER, DEVICE, 102);
    let mut lines = BufReader::new(stream.stdout.take().expect("stdout")).lines();
    let before = wait_for_bytes(&mut lines, 30);
    assert!(
        before.last().is_some_and(|(_, total)| *total >= 30),
        "the stream never flowed"
    );

    let revoked_at = now_us();
    t.revoke(grant.id);
    // Collect for 3 s more; a byte arriving after revoke + 1 s is a failure.
    let deadline = Instant::now() + Duration::from_secs(3);
    let reader = std::thread::spawn(move || {
        let mut after = Vec::new();
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("RECV ").nth(1) {
                after.push(
                    rest.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u128>().ok())
                        .unwrap_or(0),
                );
            }
        }
        after
    });
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = stream.kill();
    let _ = stream.wait();
    let arrivals = reader.join().expect("reader");
    let late: Vec<u128> = arrivals
        .iter()
        .filter(|at| **at > revoked_at + 1_000_000)
        .copied()
        .collect();
    assert!(
        late.is_empty(),
        "{} reads arrived more than 1 s after revoke",
        late.len()
    );
    assert!(
        t.connect_from(&u, REQUESTER, DEVICE, 102).is_none(),
        "a new connection still opens"
    );
    let cut = t
        .audit()
        .into_iter()
        .find(|(action, _, _)| action == "firewall.grant.cut")
        .expect("cut audited");
    assert_eq!(cut.1, format!("grant:{}", grant.id.0));
    assert!(
        cut.2["connections_cut"].as_u64().unwrap_or(0) >= 1,
        "{:?}",
        cut.2
    );
}

#[test]
fn ending_one_of_two_grants_for_the_same_port_keeps_the_session_of_the_other() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102]);
    t.start_daemon();
    let first = t.open_grant(REQUESTER, DEVICE, "s7", 600).expect("grant");
    let second = t
        .open_grant(REQUESTER, DEVICE, "s7", 600)
        .expect("overlapping grant");
    let u = t.uplink_ns.clone();
    let mut stream = t.stream(&u, REQUESTER, DEVICE, 102);
    let mut lines = BufReader::new(stream.stdout.take().expect("stdout")).lines();
    wait_for_bytes(&mut lines, 10);
    t.revoke(first.id);
    let before = wait_for_bytes(&mut lines, 0)
        .last()
        .map_or(0, |(_, total)| *total);
    let after = wait_for_bytes(&mut lines, before + 30);
    assert!(
        after.last().is_some_and(|(_, total)| *total >= before + 30),
        "the other grant's session was cut"
    );
    t.revoke(second.id);
    assert!(t.connect_from(&u, REQUESTER, DEVICE, 102).is_none());
    let _ = stream.kill();
    let _ = stream.wait();
}

#[test]
fn restarting_or_killing_the_controller_opens_nothing_and_closes_no_grant() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102, 502]);
    t.start_daemon();
    t.open_grant(REQUESTER, DEVICE, "s7", 600).expect("grant");
    let u = t.uplink_ns.clone();
    let mut stream = t.stream(&u, REQUESTER, DEVICE, 102);
    let mut lines = BufReader::new(stream.stdout.take().expect("stdout")).lines();
    wait_for_bytes(&mut lines, 10);

    t.kill_daemon();
    assert_eq!(
        t.reachable(&[(&u, REQUESTER, DEVICE, 102), (&u, REQUESTER, DEVICE, 502)]),
        [true, false]
    );
    t.start_daemon();
    assert_eq!(
        t.reachable(&[(&u, REQUESTER, DEVICE, 102), (&u, REQUESTER, DEVICE, 502)]),
        [true, false]
    );
    // The established stream lived through the kill and the restart.
    let before = wait_for_bytes(&mut lines, 0)
        .last()
        .map_or(0, |(_, total)| *total);
    let after = wait_for_bytes(&mut lines, before + 20);
    assert!(
        after.last().is_some_and(|(_, total)| *total >= before + 20),
        "the stream stopped"
    );
    let _ = stream.kill();
    let _ = stream.wait();
    let adopted = t.audit().into_iter().any(|(action, _, details)| {
        action == "firewall.ruleset.applied" && details["why"] == "adopted"
    });
    assert!(adopted, "the restart did not adopt the live table");
}

#[test]
fn hand_made_changes_to_the_table_are_repaired_and_audited() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[502]);
    t.start_daemon();
    let u = t.uplink_ns.clone();

    // What an intruder or a hurried admin would do: accept everything, first. The
    // controller sees it and repairs it at once (tests/self_repair.rs times that), so the
    // hole may be gone before any connection could try it; the poke makes sure it is.
    t.nft("insert rule inet plantgate forward accept");
    t.poke().expect("poke");
    assert!(
        t.connect_from(&u, REQUESTER, DEVICE, 502).is_none(),
        "the hand-made rule survived"
    );

    t.nft("add element inet plantgate grants { 10.99.1.2 . 10.99.2.2 . tcp . 502 }");
    t.poke().expect("poke");
    assert!(
        t.connect_from(&u, REQUESTER, DEVICE, 502).is_none(),
        "the hand-made element survived"
    );

    t.nft("delete table inet plantgate");
    t.poke().expect("poke");
    assert!(
        t.table_listing().contains("chain forward"),
        "the deleted table was not restored"
    );

    let repairs: Vec<String> = t
        .audit()
        .into_iter()
        .filter(|(action, _, _)| action == "firewall.drift.repaired")
        .map(|(_, _, details)| details["why"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        repairs,
        [
            "rules changed by hand",
            "grant elements added by hand",
            "table deleted by hand"
        ]
    );
}

#[test]
fn an_unconfirmed_change_to_the_portal_port_rolls_back_and_a_confirmed_one_stays() {
    let mut t = Topology::new();
    t.listen(&t.appliance_ns.clone(), &[PORTAL_PORT, 9443]);
    t.start_daemon();
    t.kill_daemon();
    let u = t.uplink_ns.clone();
    let moved = [
        ("PLANTGATE_FIREWALL__PORTAL_PORTS", "[9443]"),
        ("PLANTGATE_FIREWALL__CONFIRM_SECONDS", "2"),
    ];
    let portal = |t: &Topology| {
        t.reachable(&[
            (&u, REQUESTER, APPLIANCE_UPLINK, PORTAL_PORT),
            (&u, REQUESTER, APPLIANCE_UPLINK, 9443),
        ])
    };

    // Nobody confirms: the old portal port comes back by itself.
    t.start_daemon_with(&moved);
    assert_eq!(portal(&t), [false, true], "the new port was not applied");
    // The controller rolls back once the 2 s pass; a busy machine may take longer to do it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while portal(&t) != [true, false] {
        assert!(
            Instant::now() < deadline,
            "the unconfirmed change was not rolled back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    t.kill_daemon();

    // Confirmed in time: the change stays, and is not asked about again after a restart.
    t.start_daemon_with(&moved);
    let confirm = t.firewall_command(&["confirm"]).output().expect("confirm");
    assert_eq!(
        String::from_utf8_lossy(&confirm.stdout).trim(),
        "confirmed",
        "{}",
        String::from_utf8_lossy(&confirm.stderr)
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        portal(&t),
        [false, true],
        "the confirmed change was rolled back"
    );
    t.kill_daemon();
    t.start_daemon_with(&moved);
    let actions: Vec<String> = t
        .audit()
        .into_iter()
        .map(|(action, _, _)| action)
        .filter(|a| a.starts_with("firewall.change."))
        .collect();
    assert_eq!(
        actions,
        [
            "firewall.change.pending",
            "firewall.change.rolled_back",
            "firewall.change.pending",
            "firewall.change.confirmed"
        ]
    );
}

#[test]
fn bad_input_is_refused_before_anything_is_applied() {
    let mut t = Topology::new();
    t.start_daemon();
    let before = t.table_listing();
    let refused = [
        ("10.99.1.300", DEVICE, "s7", 60, "not an IPv4 address"),
        (
            REQUESTER,
            "10.99.3.2",
            "s7",
            60,
            "not a host in the device network",
        ),
        (
            REQUESTER,
            "10.99.2.255",
            "s7",
            60,
            "not a host in the device network",
        ),
        (REQUESTER, DEVICE, "telnet", 60, "no device agent"),
        (REQUESTER, DEVICE, "s7", 0, "duration"),
        (DEVICE, DEVICE, "s7", 60, "inside the device network"),
    ];
    for (from, to, agent, seconds, expected) in refused {
        let err = t
            .open_grant(from, to, agent, seconds)
            .expect_err("accepted bad input");
        assert!(
            err.to_string().contains(expected),
            "{from} {to} {agent}: {err}"
        );
    }
    // A port range over the limit is refused when the agent is defined.
    let err = appliance::grants::Agent::create(
        &t.app.audit,
        &test_actor(),
        &t.app.config,
        "vendor",
        "",
        "tcp/10000-10100",
        appliance::time::now_us(),
    )
    .expect_err("range over limit");
    assert!(err.to_string().contains("the limit is 16"), "{err}");
    let bad_port = appliance::grants::Agent::create(
        &t.app.audit,
        &test_actor(),
        &t.app.config,
        "vendor",
        "",
        "tcp/70000",
        appliance::time::now_us(),
    )
    .expect_err("bad port");
    assert!(bad_port.to_string().contains("not a port"), "{bad_port}");
    t.poke().expect("poke");
    assert_eq!(t.table_listing(), before, "refused input changed the table");
    let grants = appliance::grants::Grant::recent(&mut t.app.store.conn().expect("conn"), 10)
        .expect("grants");
    assert!(grants.is_empty(), "refused input was stored: {grants:?}");

    // An interface that does not exist stops the controller before it applies anything.
    t.kill_daemon();
    let output = t
        .firewall_command(&["reconcile"])
        .env("PLANTGATE_NETWORK__DEVICE_INTERFACE", "nosuch0")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("interface \"nosuch0\""),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(t.table_listing(), before);
}

#[test]
fn the_dry_run_text_and_the_applied_json_are_the_same_ruleset() {
    let t = Topology::new();
    t.open_grant(REQUESTER, DEVICE, "ethernet-ip", 600)
        .expect("grant");
    t.open_forwarded_grant(OTHER_REQUESTER, DEVICE, "s7", 600, Some(10102))
        .expect("forwarded grant");
    let text = t.firewall_command(&["dry-run"]).output().expect("dry run");
    assert!(text.status.success());
    let script = t.dir.path().join("rules.nft");
    std::fs::write(&script, &text.stdout).expect("write");
    let load = std::process::Command::new("ip")
        .args(["netns", "exec", &t.appliance_ns, "nft", "-f"])
        .arg(&script)
        .output()
        .expect("nft -f");
    assert!(
        load.status.success(),
        "nft rejected the dry-run text: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    let from_text = t.table_listing();
    t.nft("delete table inet plantgate");
    let applied = t
        .firewall_command(&["reconcile"])
        .output()
        .expect("reconcile");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let from_json = t.table_listing();
    // Element timeouts tick down between the two loads; compare everything else.
    // Element timeouts tick down and counters count between the two loads; compare the rest.
    let strip = |listing: &str| -> String {
        listing
            .lines()
            .filter(|l| !l.trim_start().starts_with("packets "))
            .map(|l| {
                l.split(" timeout ")
                    .next()
                    .unwrap_or(l)
                    .split(" expires ")
                    .next()
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&from_text), strip(&from_json));
    assert!(
        from_json.contains("10.99.1.2 . 10.99.2.2 . udp . 2222"),
        "{from_json}"
    );
    // The port forward is in both maps, so the text and JSON agree on DNAT too.
    assert!(from_json.contains("10.99.1.3 . tcp . 10102"), "{from_json}");
}

#[test]
fn an_extended_grant_outlives_its_first_expiry_without_dropping_the_stream() {
    let mut t = Topology::new();
    t.listen(&t.device_ns.clone(), &[102]);
    t.start_daemon();
    let grant = t.open_grant(REQUESTER, DEVICE, "s7", 4).expect("grant");
    let u = t.uplink_ns.clone();
    let mut stream = t.stream(&u, REQUESTER, DEVICE, 102);
    let mut lines = BufReader::new(stream.stdout.take().expect("stdout")).lines();
    let flowing = wait_for_bytes(&mut lines, 30);
    assert!(
        flowing.last().is_some_and(|(_, total)| *total >= 30),
        "the stream never flowed"
    );

    // What the portal's "Extend" does: a later expiry in the store, then a poke.
    t.app
        .audit
        .record_with(|conn| {
            let (_, event) = appliance::grants::Grant::extend_in(
                conn,
                &test_actor(),
                grant.id,
                grant.expires_at_us + 60_000_000,
                appliance::time::now_us(),
            )?;
            Ok(((), vec![event]))
        })
        .expect("extend");
    t.poke().expect("poke");
    // The kernel's element now runs as long as the grant does.
    let listing = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.appliance_ns,
            "nft",
            "-j",
            "list",
            "table",
            "inet",
            "plantgate",
        ])
        .output()
        .expect("nft");
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).expect("nft json");
    let (pinholes, _) = firewall::nft::elements(&listing);
    let left: Vec<Option<u64>> = pinholes.values().copied().collect();
    assert!(
        matches!(left.as_slice(), [Some(seconds)] if *seconds > 50),
        "the pinhole's timeout was not renewed: {left:?}"
    );
    // Past the first expiry, the stream still flows and new connections still open.
    let reader = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter_map(|l| {
                l.split("RECV ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next()?.parse::<u128>().ok())
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(7));
    let _ = stream.kill();
    let _ = stream.wait();
    let first_expiry = u128::try_from(grant.expires_at_us).unwrap();
    let after = reader
        .join()
        .unwrap()
        .into_iter()
        .filter(|at| *at > first_expiry + 2_000_000)
        .count();
    assert!(
        after > 10,
        "the established stream stopped at the first expiry ({after} reads after it)"
    );
    assert!(
        t.connect_from(&u, REQUESTER, DEVICE, 102).is_some(),
        "the extended grant is closed"
    );
    assert!(
        t.audit()
            .iter()
            .any(|(action, _, _)| action == "grant.extended")
    );
}

/// Only `plantgate init` creates the store: with the SQLite file moved away, the controller
/// refuses to start or reconcile, names the missing store, and creates nothing.
#[test]
fn the_controller_refuses_to_start_without_its_store() {
    require_root();
    let topology = Topology::new();
    let data = topology.dir.path().join("data");
    let moved = topology.dir.path().join("moved-away");
    std::fs::create_dir(&moved).expect("mkdir");
    for suffix in ["", "-wal", "-shm"] {
        let from = data.join(format!("plantgate.db{suffix}"));
        if from.exists() {
            std::fs::rename(&from, moved.join(format!("plantgate.db{suffix}"))).expect("move");
        }
    }
    let head = std::fs::read(data.join("audit-head.json")).expect("head");
    for args in [&["run"][..], &["reconcile"]] {
        let mut child = topology
            .firewall_command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "{args:?} still runs without its store"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("the store")
                && stderr.contains("is missing")
                && stderr.contains("restore it from backup"),
            "{args:?}: {stderr}"
        );
        assert!(
            !data.join("plantgate.db").exists(),
            "{args:?} created the store"
        );
        assert_eq!(
            std::fs::read(data.join("audit-head.json")).expect("head"),
            head,
            "{args:?} rewrote the signed audit head"
        );
    }
}

/// `plantgate-firewall status | head -1`: a reader that closes the pipe early ends the
/// command quietly with success, not with a panic.
#[test]
fn status_ends_quietly_on_a_closed_pipe() {
    require_root();
    let mut topology = Topology::new();
    topology.start_daemon();
    for args in [&["status"][..], &["dry-run"]] {
        let mut child = topology
            .firewall_command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args:?}: {:?} {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
