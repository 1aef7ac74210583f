//! A full data partition: the ingest and the portal keep running on a small loop-mounted
//! ext4 file system filled to 100 % while they are in use, refuse what they cannot store
//! (HTTP 503 with `storage.full` and `Retry-After`; MQTT 5 PUBACK and DISCONNECT 0x97,
//! "quota exceeded"), never panic, lose nothing they acknowledged, leave an audit chain
//! that `plantgate audit verify` accepts, and work again once space is freed, without a
//! restart.
//!
//! The data directory (signed audit head, error logs, TLS files, keys and, on SQLite, the
//! store with its WAL) is on the small file system. On PostgreSQL the store is the
//! server's, whose disk is the machine's own and cannot be filled here: that case fills
//! everything else (the audit head above all), so readings, which need no audit record,
//! are still stored, and every audited change is refused.
//!
//! The test needs root and loop devices (`mount -o loop`); without them it fails and says
//! why, it never passes by skipping. The portal and the `plantgate` CLI are the workspace's
//! sibling binaries: `cargo build --bins` first (`scripts/test` builds everything).
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance::config::Config;
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::enrolment::{self, FIRST_ADMIN};
use appliance::models::{Organisation, Site};
use appliance::{Actor, Appliance};
use common::Backend;
use common::client::{Event, MqttClient, Version};
use diesel::RunQueryDsl;
use ingest::mqtt::readings_topic;
use testkit::on_both_backends;

on_both_backends!(a_full_data_partition_refuses_clearly_and_recovers_without_a_restart);

const SIZE_MIB: u64 = 16;
const PASSWORD: &str = "Vierkant-Schraube-77";
const EMAIL: &str = "ada@plant.example";
/// MQTT 5's reason code "quota exceeded", in PUBACK and DISCONNECT.
const QUOTA_EXCEEDED: u8 = 0x97;
/// Attempts to write while full before concluding the service never refuses.
const MAX_ATTEMPTS: usize = 200;
const ANSWER: Duration = Duration::from_secs(60);

/// A small ext4 file system on a loop device, unmounted when dropped (after the services
/// and store handles that use it, which the test declares later, so they drop first).
struct LoopMount {
    /// Holds the image; removed after the unmount.
    _dir: tempfile::TempDir,
    mountpoint: PathBuf,
}

impl LoopMount {
    fn new(mib: u64) -> LoopMount {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("data.img");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).expect("mountpoint");
        run("truncate", &["-s", &format!("{mib}M")], &image);
        // No blocks reserved for root: the services run as root here, and 100 % must be
        // 100 % for them too.
        run("mkfs.ext4", &["-q", "-F", "-m", "0"], &image);
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mountpoint)
            .output()
            .expect("mount");
        assert!(
            mounted.status.success(),
            "\n\n*** cannot loop-mount a {mib} MiB ext4 image ({}): this test needs root and \
             loop devices (/dev/loop-control). It fails rather than pass without them.\n",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        LoopMount {
            _dir: dir,
            mountpoint,
        }
    }

    fn filler(&self) -> PathBuf {
        self.mountpoint.join("filler")
    }

    /// Appends to the filler until the file system refuses another byte; callable again
    /// to take whatever was freed meanwhile. Returns the blocks still available (0).
    fn fill(&self) -> u64 {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("filler");
        // Large writes first, then smaller ones for the last partly free blocks.
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let bytes = vec![0x5a_u8; chunk];
            loop {
                match file.write(&bytes) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err) if err.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(err) => panic!("filling the file system: {err}"),
                }
            }
        }
        // ext4 allocates at write time (delayed allocation reserves the blocks), so the
        // count below is already final; the sync only makes sure.
        let _ = file.sync_all();
        self.available_blocks()
    }

    fn available_blocks(&self) -> u64 {
        let output = Command::new("stat")
            .args(["-f", "-c", "%a"])
            .arg(&self.mountpoint)
            .output()
            .expect("stat -f");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("available blocks")
    }

    fn free(&self) {
        fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // A process of the test may still hold a file open after a panic: then detach it
        // lazily, so the mount never outlives the test.
        if !umount(false) {
            let _ = umount(true);
        }
        // `dir`, with the image, is removed after this.
    }
}

fn run(program: &str, args: &[&str], path: &Path) {
    let output = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A service started as its unit would, with its stderr kept in a file off the small file
/// system; killed when dropped.
struct Service {
    name: &'static str,
    child: Child,
    stderr: PathBuf,
    /// The `STATUS=` fields it reported with `READY=1`.
    status: String,
}

impl Service {
    fn start(name: &'static str, binary: &Path, config: &Path, dir: &Path) -> Service {
        let socket_path = dir.join(format!("{name}.notify"));
        let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("notify timeout");
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(binary)
            .env("PLANTGATE_CONFIG", config)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", binary.display()));
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
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(err) => panic!("notify socket: {err}"),
            }
            if let Ok(Some(exit)) = child.try_wait() {
                panic!(
                    "{name} exited at start ({exit}): {}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{name} did not say it was ready");
        };
        Service {
            name,
            child,
            stderr,
            status,
        }
    }

    fn port(&self, field: &str) -> u16 {
        self.status
            .lines()
            .filter_map(|line| line.strip_prefix("STATUS="))
            .flat_map(str::split_whitespace)
            .filter_map(|f| f.strip_prefix(field)?.strip_prefix('='))
            .find_map(|address| address.parse::<std::net::SocketAddr>().ok())
            .map(|address| address.port())
            .unwrap_or_else(|| panic!("no {field} address in {:?}", self.status))
    }

    /// Still the process the test started: alive, never restarted.
    fn assert_running(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "{} is no longer running: {}",
            self.name,
            fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    fn assert_no_panic(&self) {
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(
            !stderr.contains("panicked"),
            "{} panicked:\n{stderr}",
            self.name
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sibling binary of the workspace, built beside this crate's `plantgate-ingest`.
fn sibling(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_plantgate-ingest")).with_file_name(name);
    assert!(
        path.exists(),
        "\n\n*** {} is missing: build the workspace's binaries first (`cargo build --bins`; scripts/test does).\n",
        path.display()
    );
    path
}

/// An HTTP answer as curl saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn curl(args: &[&str]) -> Reply {
    let output = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "60"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The device's side: readings over HTTPS, and what it was told.
struct DeviceClient {
    port: u16,
    cert: PathBuf,
    secret: String,
    body_file: PathBuf,
}

impl DeviceClient {
    fn post(&self, first: i64, n: i64) -> Reply {
        fs::write(
            &self.body_file,
            common::batch(None, "temperature_c", first, n, 21.5),
        )
        .expect("body file");
        curl(&[
            "--cacert",
            &self.cert.display().to_string(),
            "-H",
            &format!("Authorization: Bearer {}", self.secret),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", self.body_file.display()),
            &format!("https://127.0.0.1:{}/v1/readings", self.port),
        ])
    }
}

/// The portal's side: a browser with a cookie jar per name.
struct Browser {
    port: u16,
    dir: PathBuf,
}

impl Browser {
    fn origin(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn get(&self, jar: &str, path: &str) -> Reply {
        let jar = self
            .dir
            .join(format!("{jar}.cookies"))
            .display()
            .to_string();
        curl(&[
            "-k",
            "-b",
            &jar,
            "-c",
            &jar,
            &format!("{}{path}", self.origin()),
        ])
    }

    fn post(&self, jar: &str, path: &str, fields: &[(&str, &str)]) -> Reply {
        let jar = self
            .dir
            .join(format!("{jar}.cookies"))
            .display()
            .to_string();
        let mut args = vec![
            "-k".to_owned(),
            "-b".to_owned(),
            jar.clone(),
            "-c".to_owned(),
            jar,
            "-H".to_owned(),
            format!("Origin: {}", self.origin()),
        ];
        for (k, v) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("{}{path}", self.origin()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    }

    fn login(&self, jar: &str) -> Reply {
        self.post(jar, "/login", &[("email", EMAIL), ("password", PASSWORD)])
    }
}

/// Every audit record's (seq, hash), oldest first.
fn audit_records(app: &Appliance) -> Vec<(i64, Vec<u8>)> {
    let mut records = Vec::new();
    let mut conn = app.store.conn().expect("store connection");
    appliance::audit::export::for_each_record(&mut conn, &Default::default(), |r| {
        records.push((r.seq, r.hash));
        Ok(true)
    })
    .expect("audit records");
    records
}

fn assert_storage_full_http(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 503, "{what}: {reply:?}");
    assert!(
        reply.header("Retry-After").is_some(),
        "{what}: no Retry-After: {reply:?}"
    );
}

fn a_full_data_partition_refuses_clearly_and_recovers_without_a_restart(backend: Backend) {
    // Declared first, so dropped last: after the services and the store handles.
    let mount = LoopMount::new(SIZE_MIB);
    let outside = tempfile::tempdir().expect("tempdir");
    let database = (backend == Backend::Postgres).then(testkit::store::PostgresDatabase::create);
    let store = database
        .as_ref()
        .map(|db| format!("[store]\nurl = {:?}\n", db.url()))
        .unwrap_or_default();
    let config_path = outside.path().join("plantgate.toml");
    fs::write(
        &config_path,
        format!(
            "data_dir = {:?}\n{store}[log]\nlevel = \"warn\"\n\
             [web]\nhttps_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             host_name = \"localhost\"\nsecond_factor_roles = []\n\
             [ingest]\nhttps_listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\n",
            mount.mountpoint.join("data").display().to_string()
        ),
    )
    .expect("config");
    let config = Config::load(Some(&config_path)).expect("valid config");
    config.prepare_data_dir().expect("data dir");
    appliance::provision::keys(&config).expect("keys");
    let actor = Actor::System("test".into());
    let app = Appliance::create(config, &actor).expect("create the appliance");
    let org = Organisation::create(
        &app.audit,
        &actor,
        "Moulding Nord",
        appliance::time::now_us(),
    )
    .expect("organisation");
    let site = Site::create(
        &app.audit,
        &actor,
        org.id,
        "Hall 3",
        "",
        appliance::time::now_us(),
    )
    .expect("site");
    let (device, secret) = Device::register(
        &app.audit,
        &actor,
        &DeviceRequest {
            serial: "MM-1".into(),
            kind: DeviceKind::Monitor,
            site: site.id,
            gateway: None,
            model: None,
        },
        appliance::time::now_us(),
    )
    .expect("device");
    let (setup_token, _) = enrolment::issue(
        &app.audit,
        &actor,
        FIRST_ADMIN,
        3_600_000_000,
        appliance::time::now_us(),
    )
    .expect("setup token");

    let mut ingest = Service::start(
        "plantgate-ingest",
        Path::new(env!("CARGO_BIN_EXE_plantgate-ingest")),
        &config_path,
        outside.path(),
    );
    let mut web = Service::start(
        "plantgate-web",
        &sibling("plantgate-web"),
        &config_path,
        outside.path(),
    );
    let cert = app.config.ingest_certificate().cert;
    let mqtt_port = ingest.port("mqtt");
    let device_client = DeviceClient {
        port: ingest.port("https"),
        cert: cert.clone(),
        secret: secret.reveal().to_owned(),
        body_file: outside.path().join("body.json"),
    };
    let browser = Browser {
        port: web.port("https"),
        dir: outside.path().to_owned(),
    };
    let topic = readings_topic("MM-1");
    let mqtt = || {
        let (client, accepted) = MqttClient::connect(
            mqtt_port,
            &cert,
            None,
            Version::V5,
            "MM-1",
            Some(secret.reveal()),
        );
        assert!(accepted, "CONNECT refused");
        client
    };

    // In use: a device posts over HTTPS and MQTT, an administrator signs in.
    let mut acknowledged: BTreeSet<i64> = BTreeSet::new();
    for first in (1..=100).step_by(20) {
        let reply = device_client.post(first, 20);
        assert_eq!(reply.status, 200, "{reply:?}");
        acknowledged.extend(first..first + 20);
    }
    let mut client = mqtt();
    for (pkid, first) in [(1_u16, 1001_i64), (2, 1011)] {
        let payload = common::batch(None, "temperature_c", first, 10, 20.0);
        client
            .publish(pkid, &topic, payload.as_bytes())
            .expect("publish");
        assert_eq!(client.next_event(ANSWER), Event::PubAck { pkid, reason: 0 });
        acknowledged.extend(first..first + 10);
    }
    drop(client);
    let setup = browser.post(
        "setup",
        "/setup",
        &[
            ("token", setup_token.reveal()),
            ("organisation", "Moulding Plant Nord"),
            ("name", "Ada Admin"),
            ("email", EMAIL),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(setup.status, 303, "setup: {setup:?}");
    let signed_in = browser.login("ada");
    assert_eq!(signed_in.status, 303, "sign-in: {signed_in:?}");
    assert_eq!(browser.get("ada", "/sessions").status, 200);
    // The administrator comes back after a break: the session's last-seen time is then
    // written at the next page.
    diesel::sql_query("UPDATE sessions SET last_seen_us = last_seen_us - 120000000")
        .execute(&mut *app.store.conn().expect("store connection"))
        .expect("age the session");
    let before_full = audit_records(&app);

    // Full.
    assert_eq!(mount.fill(), 0, "the file system is not full");

    // The portal refuses a sign-in, which needs a session and an audit record, and says why.
    let refused = browser.login("late");
    assert_storage_full_http(&refused, "sign-in while full");
    assert!(
        refused.body.contains("Storage full"),
        "sign-in while full: {refused:?}"
    );
    // A signed-in administrator still reads pages.
    // A signed-in administrator still reads pages, even when the session's last-seen time
    // is due to be written (it was aged before the fill) and cannot be.
    let page = browser.get("ada", "/sessions");
    assert_eq!(page.status, 200, "a signed-in page while full: {page:?}");
    assert!(page.body.contains("name=\"csrf\""), "{page:?}");

    // The ingest: readings are stored while there is room (SQLite's WAL reuses its space,
    // PostgreSQL's disk is not full), and refused clearly once there is none.
    let mut refused_batches: Vec<(i64, i64)> = Vec::new();
    let mut next = 10_000_i64;
    let batch = 200_i64;
    for _ in 0..MAX_ATTEMPTS {
        mount.fill();
        let reply = device_client.post(next, batch);
        match reply.status {
            200 => {
                acknowledged.extend(next..next + batch);
            }
            503 => {
                assert_storage_full_http(&reply, "readings while full");
                let answer: serde_json::Value =
                    serde_json::from_str(&reply.body).expect("a JSON error");
                assert_eq!(answer["error"], "storage.full", "{reply:?}");
                assert!(
                    answer["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("storage full")),
                    "{reply:?}"
                );
                refused_batches.push((next, batch));
            }
            _ => panic!("readings while full: neither stored nor refused clearly: {reply:?}"),
        }
        next += batch;
        if backend == Backend::Sqlite && refused_batches.len() >= 3 {
            break;
        }
        if backend == Backend::Postgres && next >= 12_000 {
            break;
        }
    }
    match backend {
        Backend::Sqlite => assert!(
            !refused_batches.is_empty(),
            "{MAX_ATTEMPTS} batches were all stored on a full file system"
        ),
        // The store's disk has room: readings need nothing of the full partition.
        Backend::Postgres => assert!(
            refused_batches.is_empty(),
            "readings refused although PostgreSQL has room: {refused_batches:?}"
        ),
    }

    // MQTT 5: stored, or refused with PUBACK and DISCONNECT "quota exceeded".
    let mut mqtt_refused: Vec<i64> = Vec::new();
    let mut client = mqtt();
    let mut pkid = 1_u16;
    for _ in 0..MAX_ATTEMPTS {
        mount.fill();
        let payload = common::batch(None, "temperature_c", next, batch, 19.0);
        client
            .publish(pkid, &topic, payload.as_bytes())
            .expect("publish");
        match client.next_event(ANSWER) {
            Event::PubAck {
                pkid: acked,
                reason: 0,
            } if acked == pkid => {
                acknowledged.extend(next..next + batch);
            }
            Event::PubAck {
                pkid: refused,
                reason: QUOTA_EXCEEDED,
            } if refused == pkid => {
                assert_eq!(
                    client.next_event(ANSWER),
                    Event::Disconnect {
                        reason: QUOTA_EXCEEDED
                    }
                );
                mqtt_refused.push(next);
                client = mqtt();
            }
            other => panic!("MQTT publish while full: {other:?}"),
        }
        next += batch;
        pkid += 1;
        if backend == Backend::Sqlite && !mqtt_refused.is_empty() {
            break;
        }
        if backend == Backend::Postgres && pkid > 5 {
            break;
        }
    }
    drop(client);
    if backend == Backend::Sqlite {
        assert!(
            !mqtt_refused.is_empty(),
            "{MAX_ATTEMPTS} MQTT publishes were all stored on a full file system"
        );
    }
    // Still serving.
    let health = curl(&[
        "--cacert",
        &cert.display().to_string(),
        &format!("https://127.0.0.1:{}/healthz", device_client.port),
    ]);
    assert_eq!(health.status, 200, "{health:?}");
    ingest.assert_running();
    web.assert_running();
    let while_full = audit_records(&app);

    // Space freed: everything works again at once, the same processes.
    mount.free();
    let reply = device_client.post(next, 20);
    assert_eq!(
        reply.status, 200,
        "readings after space was freed: {reply:?}"
    );
    acknowledged.extend(next..next + 20);
    // What was refused is sent again, as a device does.
    for &(first, n) in &refused_batches {
        let reply = device_client.post(first, n);
        assert_eq!(reply.status, 200, "a refused batch sent again: {reply:?}");
        acknowledged.extend(first..first + n);
    }
    let mut client = mqtt();
    for (i, &first) in mqtt_refused.iter().enumerate() {
        let pkid = 100 + u16::try_from(i).expect("few");
        let payload = common::batch(None, "temperature_c", first, batch, 19.0);
        client
            .publish(pkid, &topic, payload.as_bytes())
            .expect("publish");
        assert_eq!(client.next_event(ANSWER), Event::PubAck { pkid, reason: 0 });
        acknowledged.extend(first..first + batch);
    }
    drop(client);
    let signed_in = browser.login("late");
    assert_eq!(
        signed_in.status, 303,
        "sign-in after space was freed: {signed_in:?}"
    );
    ingest.assert_running();
    web.assert_running();

    // Nothing acknowledged was lost.
    let stored: BTreeSet<i64> = {
        let mut conn = app.store.conn().expect("store connection");
        appliance::readings::seqs_for(&mut conn, device.id)
            .expect("stored readings")
            .into_iter()
            .collect()
    };
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    // Every audit record is still there, and the sign-in after recovery was added.
    let after = audit_records(&app);
    assert!(
        after.starts_with(&before_full),
        "audit records written before the disk filled are gone or changed"
    );
    assert!(
        after.starts_with(&while_full),
        "audit records written while the disk was full are gone or changed"
    );
    assert!(
        after.len() > while_full.len(),
        "the sign-in was not audited"
    );
    let verify = Command::new(sibling("plantgate"))
        .args(["audit", "verify"])
        .env("PLANTGATE_CONFIG", &config_path)
        .output()
        .expect("plantgate audit verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "plantgate audit verify: {said}");
    ingest.assert_no_panic();
    web.assert_no_panic();
    eprintln!(
        "{backend:?}: {} readings acknowledged, {} HTTPS batches and {} MQTT publishes refused \
         while full, {} audit records; audit verify: {}",
        acknowledged.len(),
        refused_batches.len(),
        mqtt_refused.len(),
        after.len(),
        said.trim()
    );
    drop(web);
    drop(ingest);
    drop(app);
}
