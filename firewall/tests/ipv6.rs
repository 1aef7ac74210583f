//! The appliance over IPv6: neighbour discovery passes, so its own services answer on
//! both sides as the policy says, while forwarding between the sides stays closed.
//! Real nftables and TCP over IPv6 in network namespaces; needs root.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const REQUESTER6: &str = "fd00:99:1::2";
const APPLIANCE_UPLINK6: &str = "fd00:99:1::1";
const APPLIANCE_DEVICE6: &str = "fd00:99:2::1";
const DEVICE6: &str = "fd00:99:2::2";

#[test]
#[ignore = "an IPv6 TCP server/client process for the tests below, not a test of its own"]
fn net6_helper() {
    let Ok(role) = std::env::var("NET6_HELPER") else {
        return;
    };
    let mut out = std::io::stdout().lock();
    match role.as_str() {
        "listen" => {
            for port in std::env::var("NET6_PORTS").expect("ports").split(',') {
                let listener = TcpListener::bind(format!("[::]:{port}")).expect("bind");
                std::thread::spawn(move || {
                    for mut conn in listener.incoming().flatten() {
                        let _ = conn.write_all(b"hello\n");
                    }
                });
            }
            let _ = writeln!(out, "\nREADY");
            let _ = out.flush();
            std::thread::sleep(Duration::from_secs(600));
        }
        "connect" => {
            let from: std::net::IpAddr = std::env::var("NET6_FROM").unwrap().parse().unwrap();
            let to: SocketAddr = std::env::var("NET6_TO").unwrap().parse().unwrap();
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                .expect("socket");
            socket.bind(&SocketAddr::new(from, 0).into()).expect("bind");
            // Address resolution (three solicitations, a second apart) must finish in time.
            if socket
                .connect_timeout(&to.into(), Duration::from_secs(4))
                .is_err()
            {
                let _ = writeln!(out, "\nCLOSED");
                return;
            }
            let stream: TcpStream = socket.into();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut greeting = String::new();
            let _ = BufReader::new(stream).read_line(&mut greeting);
            if greeting.starts_with("hello") {
                let _ = writeln!(out, "\nOPEN");
            }
        }
        other => panic!("unknown helper role {other}"),
    }
}

fn helper(ns: &str, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "net6_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

fn listen6(ns: &str, ports: &[u16]) -> Child {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut child = helper(
        ns,
        &[
            ("NET6_HELPER", "listen".into()),
            ("NET6_PORTS", ports.join(",")),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("listener");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("READY"))),
        "listener did not start"
    );
    child
}

/// Whether a TCP connection from `from` in `ns` to `[to]:port` opens and is greeted.
fn connects(ns: &str, from: &str, to: &str, port: u16) -> bool {
    let output = helper(
        ns,
        &[
            ("NET6_HELPER", "connect".into()),
            ("NET6_FROM", from.into()),
            ("NET6_TO", format!("[{to}]:{port}")),
        ],
    )
    .output()
    .expect("connect helper");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l == "OPEN")
}

fn reachable(checks: &[(&str, &str, &str, u16)]) -> Vec<bool> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = checks
            .iter()
            .map(|(ns, from, to, port)| scope.spawn(move || connects(ns, from, to, *port)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn ip(args: &str) {
    let words: Vec<&str> = args.split_whitespace().collect();
    let status = Command::new("ip").args(&words).status().expect("ip");
    assert!(status.success(), "ip {args}");
}

#[test]
fn the_appliance_answers_over_ipv6_on_both_sides_and_forwards_no_ipv6() {
    let mut t = Topology::new();
    let (u, a, d) = (
        t.uplink_ns.clone(),
        t.appliance_ns.clone(),
        t.device_ns.clone(),
    );
    // `nodad`: usable at once; link-local addresses come up on their own meanwhile.
    for (ns, dev, addr) in [
        (&u, "eth0", REQUESTER6),
        (&a, "uplink0", APPLIANCE_UPLINK6),
        (&a, "device0", APPLIANCE_DEVICE6),
        (&d, "eth0", DEVICE6),
    ] {
        ip(&format!("-n {ns} -6 addr add {addr}/64 dev {dev} nodad"));
    }
    ip(&format!(
        "-n {u} -6 route add fd00:99:2::/64 via {APPLIANCE_UPLINK6}"
    ));
    ip(&format!(
        "-n {d} -6 route add fd00:99:1::/64 via {APPLIANCE_DEVICE6}"
    ));
    ip(&format!(
        "netns exec {a} sysctl -qw net.ipv6.conf.all.forwarding=1"
    ));
    let mut listeners = vec![
        listen6(&a, &[PORTAL_PORT, INGEST_PORT]),
        listen6(&d, &[502]),
        listen6(&u, &[9000]),
    ];

    // Before the firewall, IPv6 is routed through the appliance: what refuses below is it.
    assert_eq!(
        reachable(&[
            (&u, REQUESTER6, DEVICE6, 502),
            (&d, DEVICE6, REQUESTER6, 9000)
        ]),
        [true, true]
    );
    // Forget the neighbours learnt so far, so every check below needs neighbour discovery
    // through the firewall.
    for ns in [&u, &a, &d] {
        ip(&format!("-n {ns} -6 neigh flush all"));
    }

    t.start_daemon();
    let results = reachable(&[
        (&u, REQUESTER6, APPLIANCE_UPLINK6, PORTAL_PORT),
        (&d, DEVICE6, APPLIANCE_DEVICE6, INGEST_PORT),
        (&u, REQUESTER6, APPLIANCE_UPLINK6, INGEST_PORT),
        (&d, DEVICE6, APPLIANCE_DEVICE6, PORTAL_PORT),
        (&u, REQUESTER6, DEVICE6, 502),
        (&d, DEVICE6, REQUESTER6, 9000),
    ]);
    assert_eq!(
        results,
        [true, true, false, false, false, false],
        "portal from uplink, ingest from device, nothing else, nothing forwarded"
    );
    // Even with a grant for the same port: grants are IPv4, IPv6 never crosses.
    t.open_grant(REQUESTER, DEVICE, "modbus", 600)
        .expect("grant");
    assert!(
        !connects(&u, REQUESTER6, DEVICE6, 502),
        "IPv6 was forwarded"
    );

    // Neighbour discovery is accepted only with hop limit 255 (RFC 4861): never routed.
    let listing = t.table_listing();
    let nd_rules: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("nd-neighbor-solicit"))
        .collect();
    assert_eq!(nd_rules.len(), 4, "{listing}");
    assert!(
        nd_rules.iter().all(|l| l.contains("ip6 hoplimit 255")),
        "{nd_rules:?}"
    );
    // The appliance learnt its neighbours on both sides by solicitation.
    for (ns, neighbour) in [(&a, REQUESTER6), (&a, DEVICE6)] {
        let neigh = Command::new("ip")
            .args(["-n", ns, "-6", "neigh", "show", neighbour])
            .output()
            .expect("ip neigh");
        let text = String::from_utf8_lossy(&neigh.stdout);
        assert!(text.contains("lladdr"), "{neighbour}: {text}");
    }
    for listener in &mut listeners {
        let _ = listener.kill();
        let _ = listener.wait();
    }
}
