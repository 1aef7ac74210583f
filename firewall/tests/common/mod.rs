//! A real network for the firewall: three namespaces joined by veth pairs.
//!
//! ```text
//!  uplink host              appliance                      device host
//!  eth0 10.99.1.2, .3 ── uplink0 10.99.1.1 │ device0 10.99.2.1 ── eth0 10.99.2.2, .3
//! ```
//!
//! Both hosts have a route to the other side through the appliance, so only the firewall
//! stands between them. TCP servers and clients are this test binary re-executed inside a
//! namespace (`net_helper`), so every check is a real TCP connection.
#![allow(dead_code)]

pub mod portal;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appliance::Actor;
use appliance::grants::{Grant, GrantRequest};
use appliance::ids::GrantId;

pub fn test_actor() -> Actor {
    Actor::System("test".to_owned())
}

pub const REQUESTER: &str = "10.99.1.2";
pub const OTHER_REQUESTER: &str = "10.99.1.3";
pub const APPLIANCE_UPLINK: &str = "10.99.1.1";
pub const APPLIANCE_DEVICE: &str = "10.99.2.1";
pub const DEVICE: &str = "10.99.2.2";
pub const OTHER_DEVICE: &str = "10.99.2.3";
/// Stand-ins for the portal and ingest listeners, which are other services' work.
pub const PORTAL_PORT: u16 = 8443;
pub const INGEST_PORT: u16 = 8883;

pub fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn run(cmd: &mut Command) {
    let output = cmd.output().unwrap_or_else(|err| panic!("{cmd:?}: {err}"));
    assert!(
        output.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sh(line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    run(Command::new(words[0]).args(&words[1..]));
}

pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        });
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "\n\n*** The firewall tests need root (network namespaces and nftables). Run scripts/test as root.\n"
    );
    for tool in ["ip", "nft", "conntrack"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "\n\n*** {tool} is missing: run scripts/deps test (installs iproute2, nftables, conntrack).\n"
        );
    }
}

pub struct Topology {
    /// The appliance's core, opened from the host: what the portal will use to write grants.
    pub app: appliance::Appliance,
    pub uplink_ns: String,
    pub appliance_ns: String,
    pub device_ns: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    daemon: Option<Child>,
    helpers: Vec<Child>,
}

impl Topology {
    pub fn new() -> Topology {
        Topology::with_config("")
    }

    /// `extra` is appended to the `[firewall]` section of the generated config.
    pub fn with_config(extra: &str) -> Topology {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (u, a, d) = (format!("pgu{id}"), format!("pga{id}"), format!("pgd{id}"));
        for ns in [&u, &a, &d] {
            sh(&format!("ip netns add {ns}"));
            sh(&format!("ip -n {ns} link set lo up"));
        }
        sh(&format!(
            "ip link add vu{id} netns {u} type veth peer name vua{id} netns {a}"
        ));
        sh(&format!(
            "ip link add vd{id} netns {d} type veth peer name vda{id} netns {a}"
        ));
        sh(&format!("ip -n {u} link set vu{id} name eth0"));
        sh(&format!("ip -n {a} link set vua{id} name uplink0"));
        sh(&format!("ip -n {a} link set vda{id} name device0"));
        sh(&format!("ip -n {d} link set vd{id} name eth0"));
        for (ns, ifname, addrs) in [
            (&u, "eth0", vec![REQUESTER, OTHER_REQUESTER]),
            (&a, "uplink0", vec![APPLIANCE_UPLINK]),
            (&a, "device0", vec![APPLIANCE_DEVICE]),
            (&d, "eth0", vec![DEVICE, OTHER_DEVICE]),
        ] {
            for addr in addrs {
                sh(&format!("ip -n {ns} addr add {addr}/24 dev {ifname}"));
            }
            sh(&format!("ip -n {ns} link set {ifname} up"));
        }
        sh(&format!(
            "ip -n {u} route add 10.99.2.0/24 via {APPLIANCE_UPLINK}"
        ));
        sh(&format!(
            "ip -n {d} route add 10.99.1.0/24 via {APPLIANCE_DEVICE}"
        ));
        sh(&format!(
            "ip netns exec {a} sysctl -qw net.ipv4.ip_forward=1"
        ));

        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("plantgate.toml");
        std::fs::write(
            &config_path,
            format!(
                "data_dir = {:?}\n[log]\nlevel = \"warn\"\n[network]\nuplink_interface = \"uplink0\"\n\
                 device_interface = \"device0\"\ndevice_network = \"10.99.2.0/24\"\n[firewall]\n\
                 portal_ports = [{PORTAL_PORT}]\ningest_ports = [{INGEST_PORT}]\nreconcile_seconds = 2\n{extra}\n",
                dir.path().join("data").display().to_string()
            ),
        )
        .expect("config");
        let config = appliance::config::Config::load(Some(&config_path)).expect("config");
        config.prepare_data_dir().expect("data dir");
        appliance::provision::keys(&config).expect("keys");
        let app =
            appliance::Appliance::create(config.clone(), &test_actor()).expect("create appliance");
        // As first boot does after opening the store: its files go to the services' group
        // when the config names service accounts (tests/service_accounts.rs).
        appliance::provision::keys(&config).expect("share the store");
        // Other accounts than root must be able to reach the data directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        Topology {
            app,
            uplink_ns: u,
            appliance_ns: a,
            device_ns: d,
            dir,
            config_path,
            daemon: None,
            helpers: Vec::new(),
        }
    }

    /// Opens a grant the way the portal will: through the core library, then a poke.
    pub fn open_grant(
        &self,
        from: &str,
        to: &str,
        agent: &str,
        seconds: u64,
    ) -> appliance::error::Result<Grant> {
        self.open_forwarded_grant(from, to, agent, seconds, None)
    }

    /// Opens a grant the way the portal will: through the core library, then a poke.
    pub fn open_forwarded_grant(
        &self,
        from: &str,
        to: &str,
        agent: &str,
        seconds: u64,
        dnat_port: Option<u16>,
    ) -> appliance::error::Result<Grant> {
        let request = GrantRequest {
            requester: from.to_owned(),
            device: to.to_owned(),
            agent: agent.to_owned(),
            duration_seconds: seconds,
            reason: "test".to_owned(),
            dnat_port,
        };
        let grant = Grant::open(
            &self.app.audit,
            &test_actor(),
            &self.app.config,
            &request,
            appliance::time::now_us(),
        )?;
        let _ = self.poke();
        Ok(grant)
    }

    pub fn revoke(&self, id: GrantId) {
        Grant::revoke(
            &self.app.audit,
            &test_actor(),
            id,
            "test revoke",
            appliance::time::now_us(),
        )
        .expect("revoke");
        self.poke().expect("poke after revoke");
    }

    pub fn firewall_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.appliance_ns,
            env!("CARGO_BIN_EXE_plantgate-firewall"),
        ])
        .args(args)
        .env("PLANTGATE_CONFIG", &self.config_path);
        cmd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("data/firewall.sock")
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// Starts the controller with extra `PLANTGATE_*` settings, as an admin editing the
    /// config and restarting it would.
    pub fn start_daemon_with(&mut self, env: &[(&str, &str)]) {
        let command = self.firewall_command(&["run"]);
        self.start_daemon_command(command, env);
    }

    /// Starts `command` (the controller, however wrapped) and waits until it answers.
    pub fn start_daemon_command(&mut self, mut command: Command, env: &[(&str, &str)]) {
        let _ = std::fs::remove_file(self.socket());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("start plantgate-firewall");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.poke().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("plantgate-firewall did not come up");
    }

    /// SIGKILL: the harshest stop there is.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Asks the controller to reconcile now and returns its answer.
    pub fn poke(&self) -> Result<String, String> {
        let stream =
            std::os::unix::net::UnixStream::connect(self.socket()).map_err(|e| e.to_string())?;
        (&stream)
            .write_all(b"reconcile\n")
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        if answer.starts_with("ok") {
            Ok(answer)
        } else {
            Err(answer)
        }
    }

    pub fn nft(&self, script: &str) {
        run(Command::new("ip").args(["netns", "exec", &self.appliance_ns, "nft", script]));
    }

    /// The live table's rules and sets, for before/after comparisons. Stateless (`-s`):
    /// counters count whatever the kernel itself sends meanwhile (a router solicitation on a
    /// fresh veth), which is no change of ours.
    pub fn table_listing(&self) -> String {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.appliance_ns,
                "nft",
                "-s",
                "list",
                "table",
                "inet",
                "plantgate",
            ])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn helper(&self, ns: &str, role: &str, env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "net_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NET_HELPER", role);
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Starts TCP servers on `ports` in namespace `ns`; each greets with the peer's address,
    /// then sends a byte every 10 ms.
    pub fn listen(&mut self, ns: &str, ports: &[u16]) {
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut child = self
            .helper(ns, "listen", &[("NET_PORTS", ports)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("listener");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.contains("READY"))),
            "listener did not start"
        );
        self.helpers.push(child);
    }

    /// Connects from `ns` (source address `from`) to `to:port` and returns what the server
    /// said: `Some(peer address the server saw)`, or `None` when no connection was made.
    pub fn connect_from(&self, ns: &str, from: &str, to: &str, port: u16) -> Option<String> {
        let output = self
            .helper(
                ns,
                "connect",
                &[
                    ("NET_FROM", from.to_owned()),
                    ("NET_TO", format!("{to}:{port}")),
                ],
            )
            .output()
            .expect("connect helper");
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|l| l.split("OPEN ").nth(1))
            .map(str::to_owned)
    }

    /// Checks many connections at once; returns whether each opened.
    pub fn reachable(&self, checks: &[(&str, &str, &str, u16)]) -> Vec<bool> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = checks
                .iter()
                .map(|(ns, from, to, port)| {
                    scope.spawn(move || self.connect_from(ns, from, to, *port).is_some())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("check"))
                .collect()
        })
    }

    /// Opens a long-lived stream from `ns` and returns the child printing `RECV <unix_us> <total>`.
    pub fn stream(&mut self, ns: &str, from: &str, to: &str, port: u16) -> Child {
        self.helper(
            ns,
            "stream",
            &[
                ("NET_FROM", from.to_owned()),
                ("NET_TO", format!("{to}:{port}")),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stream helper")
    }

    /// Every audit record so far, as (action, target, details).
    pub fn audit(&self) -> Vec<(String, String, serde_json::Value)> {
        let mut records = Vec::new();
        let mut conn = self.app.store.conn().expect("conn");
        appliance::audit::export::for_each_record(&mut conn, &Default::default(), |r| {
            records.push((
                r.action,
                r.target,
                serde_json::from_str(&r.details).unwrap_or_default(),
            ));
            Ok(true)
        })
        .expect("read audit");
        records
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.kill_daemon();
        for helper in &mut self.helpers {
            let _ = helper.kill();
            let _ = helper.wait();
        }
        for ns in [&self.uplink_ns, &self.appliance_ns, &self.device_ns] {
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Reads a stream child's output until it has seen at least `bytes`.
pub fn wait_for_bytes(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    bytes: u64,
) -> Vec<(u128, u64)> {
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.split("RECV ").nth(1) {
            let mut parts = rest
                .split_whitespace()
                .filter_map(|p| p.parse::<u128>().ok());
            if let (Some(at), Some(total)) = (parts.next(), parts.next()) {
                seen.push((at, total as u64));
                if total as u64 >= bytes {
                    break;
                }
            }
        }
    }
    seen
}

/// The body of the `net_helper` test: a TCP server, client or stream reader.
pub fn net_helper_main() {
    let Ok(role) = std::env::var("NET_HELPER") else {
        return;
    };
    let mut out = std::io::stdout().lock();
    match role.as_str() {
        "listen" => {
            let ports = std::env::var("NET_PORTS").expect("ports");
            for port in ports.split(',') {
                let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
                std::thread::spawn(move || {
                    for mut conn in listener.incoming().flatten() {
                        std::thread::spawn(move || {
                            let peer = conn
                                .peer_addr()
                                .map(|a| a.ip().to_string())
                                .unwrap_or_default();
                            let _ = conn.write_all(format!("hello {peer}\n").as_bytes());
                            while conn.write_all(b".").is_ok() {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        });
                    }
                });
            }
            let _ = writeln!(out, "\nREADY");
            let _ = out.flush();
            std::thread::sleep(Duration::from_secs(600));
        }
        "connect" | "stream" => {
            let from: std::net::IpAddr = std::env::var("NET_FROM")
                .expect("from")
                .parse()
                .expect("from address");
            let to: SocketAddr = std::env::var("NET_TO")
                .expect("to")
                .parse()
                .expect("to address");
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket
                .bind(&SocketAddr::new(from, 0).into())
                .expect("bind source");
            let connected = socket.connect_timeout(&to.into(), Duration::from_millis(800));
            let Ok(()) = connected else {
                let _ = writeln!(out, "\nCLOSED {connected:?}");
                return;
            };
            let stream: TcpStream = socket.into();
            stream
                .set_read_timeout(Some(Duration::from_millis(800)))
                .expect("timeout");
            let mut reader = BufReader::new(stream);
            let mut greeting = String::new();
            if reader.read_line(&mut greeting).is_err() || !greeting.starts_with("hello") {
                let _ = writeln!(out, "\nCLOSED no greeting");
                return;
            }
            let _ = writeln!(
                out,
                "\nOPEN {}",
                greeting.trim_start_matches("hello ").trim()
            );
            let _ = out.flush();
            if role == "stream" {
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_secs(30)));
                let mut total = 0u64;
                let mut buf = [0u8; 256];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    let _ = writeln!(out, "RECV {} {total}", now_us());
                    let _ = out.flush();
                }
                let _ = writeln!(out, "ENDED");
            }
        }
        other => panic!("unknown helper role {other}"),
    }
}
