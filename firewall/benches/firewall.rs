//! Firewall cost, measured in network namespaces (needs root).
//!
//! `cargo bench -p plantgate-firewall --bench firewall` prints the time to replace the whole
//! table with 10, 1,000 and 10,000 live grants, the time to add one grant to each, and TCP
//! throughput across the appliance (iperf3) with 10 and with 10,000 grants. Under
//! `cargo test` it runs on small numbers, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::config::Config;
use appliance::grants::{Pinhole, Protocol};
use common::{DEVICE, REQUESTER, Topology};
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
        .args(["netns", "exec", &t.device_ns, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(300));

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
}

fn nft_version() -> String {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
