//! Test support: a fresh appliance per test on SQLite or PostgreSQL, the real
//! `plantgate-ingest` binary as a child process, and the real clients (curl, mosquitto_pub).
//!
//! PostgreSQL is the server at `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test gets its own database. An
//! unreachable server fails the test: the PostgreSQL half never passes by skipping.
//!
//! The service listens on port 0: the kernel gives it free ports while it binds them, and
//! it reports them with its readiness (`sd_notify`'s `READY=1` and `STATUS=`, sent once both
//! listeners are bound with their TLS set up) on a socket the test listens on. Nothing here
//! picks a port by binding and releasing it (another process could take it meanwhile, and a
//! TCP connect would then find that process's listener and call the service ready), and
//! nothing waits a fixed time for the service. The mail relay is a port held closed, or a
//! real SMTP server that binds its own port ([`TestIngest::mail_catcher`]).
#![allow(dead_code)] // each test binary uses part of this

pub mod client;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use appliance::config::Config;
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::models::{Organisation, Site};
use appliance::{Actor, Appliance};
use diesel::{Connection, PgConnection, RunQueryDsl};
pub use testkit::store::Backend;

pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn admin() -> PgConnection {
    PgConnection::establish(&admin_url()).unwrap_or_else(|err| {
        panic!("\n*** PostgreSQL is not reachable at {} ({err}); run scripts/test or set TEST_POSTGRES_URL\n", admin_url())
    })
}

fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

pub fn actor() -> Actor {
    Actor::System("test".into())
}

/// A registered device and its secret.
pub struct TestDevice {
    pub device: Device,
    pub secret: String,
}

pub struct TestIngest {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub app: Appliance,
    pub site: Site,
    /// The service's ports, as it reported them at its last [`TestIngest::start`].
    pub https_port: u16,
    pub mqtt_port: u16,
    /// The mail relay's port: one where nothing listens (held by [`testkit::ClosedPort`], so
    /// nobody else can take it) until [`TestIngest::mail_catcher`] starts a real one.
    pub smtp_port: u16,
    smtp_closed: Option<testkit::ClosedPort>,
    child: Option<Child>,
    /// The portal, when a test needs what it does beside the ingest (sending the outbox's
    /// emails): [`TestIngest::start_portal`].
    portal: Option<Child>,
    database: Option<String>,
    /// `RLIMIT_NOFILE` for the service, as a unit's `LimitNOFILE=`.
    nofile: Option<u64>,
}

impl TestIngest {
    pub fn new(backend: Backend) -> TestIngest {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = (backend == Backend::Postgres).then(|| {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "plantgate_ingest_test_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin())
                .expect("create database");
            name
        });
        // A relay that refuses, until a test asks for a real one.
        let smtp_closed = testkit::ClosedPort::new();
        let smtp_port = smtp_closed.port();
        let mut toml = format!(
            "data_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        );
        if let Some(db) = &database {
            toml.push_str(&format!("[store]\nurl = {:?}\n", database_url(db)));
        }
        toml.push_str(&format!(
            "[log]\nlevel = \"warn\"\n[ingest]\nhttps_listen = \"127.0.0.1:0\"\n\
             mqtt_listen = \"127.0.0.1:0\"\nmax_body_bytes = 65536\nmax_decoded_bytes = 262144\n\
             silent_check_seconds = 1\n[web]\nhttps_listen = \"127.0.0.1:0\"\n\
             http_listen = \"127.0.0.1:0\"\nhost_name = \"localhost\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\n\
             security = \"none\"\nfrom = \"plantgate@plant.example\"\n"
        ));
        let config_path = dir.path().join("plantgate.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let config = Config::load(Some(&config_path)).expect("valid config");
        config.prepare_data_dir().expect("data dir");
        appliance::provision::keys(&config).expect("keys");
        let app = Appliance::create(config, &actor()).expect("create appliance");
        let org = Organisation::create(
            &app.audit,
            &actor(),
            "Moulding Nord",
            appliance::time::now_us(),
        )
        .expect("org");
        let site = Site::create(
            &app.audit,
            &actor(),
            org.id,
            "Hall 3",
            "",
            appliance::time::now_us(),
        )
        .expect("site");
        TestIngest {
            backend,
            dir,
            config_path,
            app,
            site,
            https_port: 0,
            mqtt_port: 0,
            smtp_port,
            smtp_closed: Some(smtp_closed),
            child: None,
            portal: None,
            database,
            nofile: None,
        }
    }

    /// Starts a real SMTP server and makes it the service's mail relay; call before
    /// [`TestIngest::start`].
    pub fn mail_catcher(&mut self) -> testkit::MailCatcher {
        let catcher = testkit::MailCatcher::start();
        let toml = std::fs::read_to_string(&self.config_path).expect("read config");
        let toml = toml.replacen(
            &format!("port = {}\n", self.smtp_port),
            &format!("port = {}\n", catcher.port()),
            1,
        );
        std::fs::write(&self.config_path, toml).expect("write config");
        self.smtp_port = catcher.port();
        self.smtp_closed = None;
        catcher
    }

    /// Adds `settings` (TOML lines) to the `[ingest]` table of the service's configuration;
    /// call before [`TestIngest::start`].
    pub fn ingest_settings(&self, settings: &str) {
        let toml = std::fs::read_to_string(&self.config_path).expect("read config");
        let toml = toml.replacen("[ingest]\n", &format!("[ingest]\n{settings}\n"), 1);
        std::fs::write(&self.config_path, toml).expect("write config");
    }

    /// Publishes a file with mosquitto_pub over MQTT 5 at QoS 1 over TLS, with `properties`
    /// such as `["-D", "publish", "content-type", "application/cbor"]`.
    pub fn mosquitto_pub_v5(
        &self,
        username: &str,
        secret: &str,
        topic: &str,
        payload: &[u8],
        properties: &[&str],
    ) -> Output {
        static PAYLOADS: AtomicU32 = AtomicU32::new(0);
        let file = self.dir.path().join(format!(
            "payload-{}",
            PAYLOADS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, payload).expect("payload file");
        Command::new("mosquitto_pub")
            .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p"])
            .arg(self.mqtt_port.to_string())
            .args(["-q", "1", "--cafile"])
            .arg(self.cert())
            .args(["-u", username, "-P", secret, "-t", topic, "-i", username])
            .args(properties)
            .arg("-f")
            .arg(&file)
            .output()
            .expect("mosquitto_pub")
    }

    pub fn register(&self, serial: &str, kind: DeviceKind, gateway: Option<&str>) -> TestDevice {
        self.register_model(serial, kind, gateway, None)
    }

    /// Registers a device of a model (for firmware).
    pub fn register_model(
        &self,
        serial: &str,
        kind: DeviceKind,
        gateway: Option<&str>,
        model: Option<&str>,
    ) -> TestDevice {
        let (device, secret) = Device::register(
            &self.app.audit,
            &actor(),
            &DeviceRequest {
                serial: serial.into(),
                kind,
                site: self.site.id,
                gateway: gateway.map(str::to_owned),
                model: model.map(str::to_owned),
            },
            appliance::time::now_us(),
        )
        .expect("register device");
        TestDevice {
            device,
            secret: secret.reveal().to_owned(),
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.app.config.ingest_certificate().cert
    }

    /// Runs the service with at most `n` open files (`prlimit --nofile=n:n`), as a unit's
    /// `LimitNOFILE=n` would; call before [`TestIngest::start`].
    pub fn limit_files(&mut self, n: u64) {
        self.nofile = Some(n);
    }

    /// Starts `plantgate-ingest` and waits until it says it is ready; then `https_port` and
    /// `mqtt_port` are the ports it listens on.
    pub fn start(&mut self) {
        let binary = env!("CARGO_BIN_EXE_plantgate-ingest");
        let mut command = match self.nofile {
            Some(n) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let (child, status) = self.spawn_until_ready("plantgate-ingest", &mut command);
        self.child = Some(child);
        let port = |name: &str| -> u16 {
            appliance::sd_notify::status_port(&status, name)
                .unwrap_or_else(|| panic!("no {name} address in {status:?}"))
        };
        self.https_port = port("https");
        self.mqtt_port = port("mqtt");
    }

    /// Starts the portal (`plantgate-web`, built beside this crate's binary) on the same
    /// configuration and store: its worker is the one sender of the mail outbox.
    pub fn start_portal(&mut self) {
        let binary =
            PathBuf::from(env!("CARGO_BIN_EXE_plantgate-ingest")).with_file_name("plantgate-web");
        assert!(
            binary.exists(),
            "\n\n*** {} is missing: build the workspace's binaries first (`cargo build --bins`; scripts/test does).\n",
            binary.display()
        );
        let (child, _) = self.spawn_until_ready("plantgate-web", &mut Command::new(binary));
        self.portal = Some(child);
    }

    /// Spawns `command` on this test's configuration and waits until it tells its notify
    /// socket it is ready; returns the child and the status it sent.
    fn spawn_until_ready(&self, name: &str, command: &mut Command) -> (Child, String) {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let socket_path = self.dir.path().join(format!(
            "notify-{}.sock",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("notify socket timeout");
        let mut child = command
            .env("PLANTGATE_CONFIG", &self.config_path)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {name}: {err}"));
        // Generous: a cold PostgreSQL database on a busy machine takes its time to migrate.
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut message = [0u8; 4096];
        let status = loop {
            match socket.recv(&mut message) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&message[..n]).into_owned();
                    if text.lines().any(|line| line == "READY=1") {
                        break text;
                    }
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("notify socket: {err}"),
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "{name} did not say it was ready");
        };
        let _ = std::fs::remove_file(&socket_path);
        (child, status)
    }

    /// The service's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Posts `body` with curl; returns (HTTP status, response body).
    pub fn curl(&self, secret: &str, body: &[u8], extra: &[&str]) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(self.cert())
        .args(["-H", &format!("Authorization: Bearer {secret}")])
        .args(extra);
        if !extra.iter().any(|arg| arg.starts_with("Content-Type")) {
            cmd.args(["-H", "Content-Type: application/json"]);
        }
        cmd.args(["--data-binary", "@-"])
            .arg(format!("https://127.0.0.1:{}/v1/readings", self.https_port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("curl");
        let mut stdin = child.stdin.take().expect("stdin");
        let body = body.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let output = child.wait_with_output().expect("curl output");
        let _ = writer.join();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Publishes with mosquitto_pub at QoS 1 over TLS.
    pub fn mosquitto_pub(
        &self,
        username: &str,
        secret: &str,
        topic: &str,
        message: &str,
    ) -> Output {
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.mqtt_port.to_string(),
                "-q",
                "1",
            ])
            .arg("--cafile")
            .arg(self.cert())
            .args([
                "-u", username, "-P", secret, "-t", topic, "-m", message, "-i", username,
            ])
            .output()
            .expect("mosquitto_pub")
    }

    pub fn stored_seqs(&self, device: &Device) -> Vec<i64> {
        let mut conn = self.app.store.conn().expect("conn");
        appliance::readings::seqs_for(&mut conn, device.id).expect("seqs")
    }

    pub fn stored_count(&self, device: &Device) -> i64 {
        let mut conn = self.app.store.conn().expect("conn");
        appliance::readings::count_for(&mut conn, device.id).expect("count")
    }
}

impl Drop for TestIngest {
    fn drop(&mut self) {
        self.kill9();
        if let Some(mut portal) = self.portal.take() {
            let _ = portal.kill();
            let _ = portal.wait();
        }
        if let Some(db) = &self.database {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut admin());
        }
    }
}

/// A batch of `n` readings of `metric` with seqs from `first`.
pub fn batch(device: Option<&str>, metric: &str, first: i64, n: i64, value: f64) -> String {
    let readings: Vec<_> = (first..first + n)
        .map(|seq| {
            let mut r = serde_json::json!({ "metric": metric, "value": value, "ts": 1_767_225_600_000_i64 + seq, "seq": seq });
            if let Some(device) = device {
                r["device"] = device.into();
            }
            r
        })
        .collect();
    serde_json::json!({ "readings": readings }).to_string()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// curl against a port, for threads that do not hold the [`TestIngest`].
pub struct Curl {
    pub port: u16,
    pub cert: PathBuf,
}

impl Curl {
    pub fn post(&self, secret: &str, body: &[u8]) -> (u16, String) {
        let mut child = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&self.cert)
            .args([
                "-H",
                &format!("Authorization: Bearer {secret}"),
                "-H",
                "Content-Type: application/json",
            ])
            .args(["--data-binary", "@-"])
            .arg(format!("https://127.0.0.1:{}/v1/readings", self.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(body);
        }
        let output = child.wait_with_output().expect("curl output");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}
