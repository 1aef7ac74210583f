//! Firewall cost, measured in network namespaces (needs root).
//!
//! `cargo bench -p plantgate-firewall --bench firewall` prints the time to replace the whole
//! table with 10, 1,000 and 10,000 live grants, the time to add one grant to each, and TCP
//! throughput across the appliance (iperf3) with 10 and with 10,000 grants. Then, with the
//! controller running on a store holding 10, 1,000 and 10,000 live grants, the time to open
//! and to revoke one grant as `plantgate grant open/revoke` does it (store, then the
//! controller's confirmation), beside a full reconcile. Under `cargo test` it runs on small
//! numbers, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::config::Config;
use appliance::grants::control::{self, Enforcement, GrantState};
use appliance::grants::{Grant, GrantRequest, Pinhole, Protocol};
use common::{DEVICE, REQUESTER, Topology, test_actor};
use firewall::ruleset::{self, Policy, TimedPinhole};

/// `n` pinholes: the iperf3 one, and fillers from other requesters to other ports.
fn pinholes(n: u32) -> Vec<TimedPinhole> {
    let device: Ipv4Addr = DEVICE.parse().unwrap();
    let mut all = vec![TimedPinhole {
        pinhole: Pinhole {
            requester: REQUESTER.parse().unwrap(),
            device,
            protocol: Protocol::Tcp,
            port: 5201,
        },
        timeout_seconds: 3600,
    }];
    for i in 1..n {
        let requester = Ipv4Addr::new(10, 98, (i / 250) as u8, (i % 250 + 1) as u8);
        all.push(TimedPinhole {
            pinhole: Pinhole {
                requester,
                device,
                protocol: Protocol::Tcp,
                port: (1000 + i % 50_000) as u16,
            },
            timeout_seconds: 3600,
        });
    }
    all
}

/// Runs `nft -j -f FILE` in the appliance namespace and returns how long it took.
fn apply_in(t: &Topology, batch: &nftables::schema::Nftables) -> Duration {
    let file = t.dir.path().join("batch.json");
    std::fs::write(&file, serde_json::to_vec(batch).unwrap()).unwrap();
    let started = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", &t.appliance_ns, "nft", "-j", "-f"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success(), "nft failed");
    started.elapsed()
}

fn iperf(t: &Topology, seconds: u32) -> f64 {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.uplink_ns,
            "iperf3",
            "-J",
            "-c",
            DEVICE,
            "-B",
            REQUESTER,
            "-t",
            &seconds.to_string(),
        ])
        .output()
        .expect("iperf3 client");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no result: {report}"))
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (sizes, seconds): (&[u32], u32) = if full {
        (&[10, 1_000, 10_000], 5)
    } else {
        (&[10, 100], 1)
    };
    let t = Topology::new();
    let config = Config::load(Some(&t.config_path)).unwrap();
    let policy = Policy::from_config(&config).unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.device_ns,
            "iperf3",
            "-s",
            "--forceflush",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server (apt-get install iperf3)");
    // It says "Server listening on 5201" once it listens; the rest of its output is drained.
    let mut output = std::io::BufReader::new(server.stdout.take().expect("stdout")).lines();
    assert!(
        output.any(|l| l.is_ok_and(|l| l.contains("Server listening"))),
        "iperf3 did not start"
    );
    std::thread::spawn(move || output.for_each(drop));

    println!(
        "firewall benchmark (nftables {}; namespaces and veth on this machine)",
        nft_version()
    );
    println!("{:<52} {:>14}", "", "result");
    for &n in sizes {
        let all = pinholes(n);
        let replace = apply_in(&t, &ruleset::replace_table(&policy, &all, &[]));
        println!(
            "{:<52} {:>11.1} ms",
            format!("replace the whole table, {n} grants"),
            replace.as_secs_f64() * 1e3
        );
        let extra = TimedPinhole {
            pinhole: Pinhole {
                requester: "10.97.0.1".parse().unwrap(),
                device: DEVICE.parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 102,
            },
            timeout_seconds: 60,
        };
        let add = apply_in(&t, &ruleset::change_elements(&[extra], &[], &[], &[]));
        println!(
            "{:<52} {:>11.1} ms",
            format!("add one grant to {n}"),
            add.as_secs_f64() * 1e3
        );
        if n == sizes[0] || n == *sizes.last().unwrap() {
            let bps = iperf(&t, seconds);
            println!(
                "{:<52} {:>9.2} Gbit/s",
                format!("TCP throughput across the appliance, {n} grants"),
                bps / 1e9
            );
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    drop(t);
    grant_changes(sizes, if full { 9 } else { 3 });
}

/// `n` live grants straight into the store (already applied), from 10.98.x.y to the
/// device's s7 port: what a busy appliance holds.
fn fill_store(t: &Topology, n: u32) {
    use appliance::schema::firewall_grants as g;
    use diesel::prelude::*;
    let now = appliance::time::now_us();
    let rows: Vec<_> = (0..n)
        .map(|i| {
            (
                g::requester_addr.eq(format!("10.98.{}.{}", i / 250, i % 250 + 1)),
                g::device_addr.eq(DEVICE),
                g::agent.eq("s7"),
                g::ports.eq("tcp/102"),
                g::reason.eq("benchmark"),
                g::created_by.eq("system:bench"),
                g::created_at_us.eq(now),
                g::expires_at_us.eq(now + 3_600_000_000),
                g::applied_at_us.eq(Some(now)),
            )
        })
        .collect();
    let mut conn = t.app.store.conn().unwrap();
    for chunk in rows.chunks(1000) {
        appliance::on_backend!(&mut *conn, c => diesel::insert_into(g::table)
            .values(chunk)
            .execute(c))
        .unwrap();
    }
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

/// Opening and revoking one grant against `n` live ones, end to end: the median of `rounds`.
fn grant_changes(sizes: &[u32], rounds: usize) {
    println!("{:<52} {:>14}", "", "median");
    for &n in sizes {
        let mut t = Topology::new();
        fill_store(&t, n);
        // The timer's full reconcile stays out of the way of what is measured.
        t.start_daemon_with(&[("PLANTGATE_FIREWALL__RECONCILE_SECONDS", "3600")]);
        let config = &t.app.config;
        let (mut open, mut revoke, mut full) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let started = Instant::now();
            let request = GrantRequest {
                requester: "10.97.0.1".into(),
                device: DEVICE.into(),
                agent: "s7".into(),
                duration_seconds: 600,
                reason: "benchmark".into(),
                dnat_port: None,
            };
            let grant = Grant::open(
                &t.app.audit,
                &test_actor(),
                config,
                &request,
                appliance::time::now_us(),
            )
            .unwrap();
            let state = control::apply_grant(config, grant.id).unwrap();
            open.push(started.elapsed());
            assert_eq!(state, GrantState::Open { pinholes: 1 });

            let started = Instant::now();
            Grant::revoke(
                &t.app.audit,
                &test_actor(),
                grant.id,
                "benchmark",
                appliance::time::now_us(),
            )
            .unwrap();
            let enforced = control::enforce_revoke(
                &t.app.audit,
                &test_actor(),
                config,
                grant.id,
                appliance::time::now_us(),
            );
            revoke.push(started.elapsed());
            assert!(
                matches!(enforced, Enforcement::Confirmed { removed: 1, .. }),
                "{enforced}"
            );

            let started = Instant::now();
            t.poke().unwrap();
            full.push(started.elapsed());
        }
        for (what, times) in [
            (format!("open one grant, {n} live"), open),
            (format!("revoke one grant, {n} live"), revoke),
            (format!("full reconcile (start, timer), {n} live"), full),
        ] {
            println!("{what:<52} {:>11.1} ms", median(times));
        }
    }
}

fn nft_version() -> String {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
