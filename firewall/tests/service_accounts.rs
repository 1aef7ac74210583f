//! The three services as the image runs them: each under its own account (numeric ids here,
//! so the machine's /etc is left alone), in the image's groups, with the key files' owners
//! and modes that `plantgate init` gives them from `appliance::keyring`'s table. A permission
//! mistake like a key one service made and another cannot read fails here, in `scripts/test`,
//! not only on the booted image.
//!
//! The portal and the ingest are the workspace's sibling binaries (`cargo test --workspace`
//! builds them), started inside the appliance namespace with `setpriv`; people and devices
//! reach them from the uplink and device namespaces with curl.
#![allow(clippy::expect_used)] // a failure is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use appliance::keyring::{KEY_FILES, Owner, Service};
use common::*;

#[test]
#[ignore = "a TCP server/client process for the tests below, not a test of its own"]
fn net_helper() {
    net_helper_main();
}

const WEB_UID: u32 = 61801;
const INGEST_UID: u32 = 61802;
const FIREWALL_UID: u32 = 61803;
const SERVICES_GID: u32 = 61800;
const MAIL_GID: u32 = 61804;
const EMAIL: &str = "ada@plant.example";
const PASSWORD: &str = "Vierkant-Schraube-77";
const SMTP_PORT: u16 = 2525;

/// A binary built beside this test's firewall binary.
fn sibling(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_plantgate-firewall")).with_file_name(name);
    assert!(
        path.exists(),
        "\n\n*** {} is missing: build the workspace's binaries first (`cargo build --bins`; scripts/test does).\n",
        path.display()
    );
    path
}

fn uid_of(service: Service) -> u32 {
    match service {
        Service::Web => WEB_UID,
        Service::Ingest => INGEST_UID,
        Service::Firewall => FIREWALL_UID,
    }
}

/// `setpriv` arguments that make a process what the image's unit makes it: its own user, the
/// services' group, the mail group for the two that send mail, and no capabilities but
/// `extra_caps`.
fn as_service(service: Service, extra_caps: &str) -> Vec<String> {
    let groups = match service {
        Service::Web | Service::Ingest => format!("{SERVICES_GID},{MAIL_GID}"),
        Service::Firewall => SERVICES_GID.to_string(),
    };
    let caps = if extra_caps.is_empty() {
        "-all".to_owned()
    } else {
        format!("-all,{extra_caps}")
    };
    let mut args = vec![
        "setpriv".to_owned(),
        format!("--reuid={}", uid_of(service)),
        format!("--regid={SERVICES_GID}"),
        format!("--groups={groups}"),
        format!("--inh-caps={caps}"),
        format!("--bounding-set={caps}"),
    ];
    if !extra_caps.is_empty() {
        args.push(format!("--ambient-caps={extra_caps}"));
    }
    args.push("--".to_owned());
    args
}

fn accounts_config(smtp_port: u16, mqtt_port: u16) -> String {
    format!(
        "\n[accounts]\nweb = \"{WEB_UID}\"\ningest = \"{INGEST_UID}\"\nfirewall = \"{FIREWALL_UID}\"\n\
         group = \"{SERVICES_GID}\"\nmail_group = \"{MAIL_GID}\"\n\
         [web]\nhttps_listen = \"{APPLIANCE_UPLINK}:{PORTAL_PORT}\"\nhttp_listen = \"{APPLIANCE_UPLINK}:8080\"\nhost_name = \"localhost\"\n\
         second_factor_roles = [\"admin\"]\n\
         [ingest]\nhttps_listen = \"{APPLIANCE_DEVICE}:{INGEST_PORT}\"\nmqtt_listen = \"127.0.0.1:{mqtt_port}\"\n\
         [smtp]\nfrom = \"plantgate@plant.example\"\nport = {smtp_port}\n"
    )
}

/// A service process in the appliance namespace under its account; killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn service_command(t: &Topology, service: Service, extra_caps: &str) -> Command {
    let program = match service {
        Service::Web => "plantgate-web",
        Service::Ingest => "plantgate-ingest",
        Service::Firewall => "plantgate-firewall",
    };
    let mut command = Command::new("ip");
    // The units' UMask=0007: what a service writes stays the group's, nothing for others.
    command
        .args(["netns", "exec", &t.appliance_ns])
        .args(["sh", "-c", "umask 0007 && exec \"$0\" \"$@\""])
        .args(as_service(service, extra_caps))
        .arg(sibling(program))
        .env("PLANTGATE_CONFIG", &t.config_path);
    if service == Service::Firewall {
        command.arg("run");
    }
    command
}

/// curl from a namespace, keeping cookies in `jar` like a browser; (status, body).
fn curl(ns: &str, jar: &std::path::Path, args: &[&str]) -> (u16, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sk", "--max-time", "30"])
        .arg("-b")
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// A person in the uplink namespace with a browser's cookie jar.
struct Browser {
    uplink_ns: String,
    jar: PathBuf,
}

impl Browser {
    fn url(path: &str) -> String {
        format!("https://{APPLIANCE_UPLINK}:{PORTAL_PORT}{path}")
    }

    fn get(&self, path: &str) -> (u16, String) {
        curl(&self.uplink_ns, &self.jar, &[&Self::url(path)])
    }

    /// A form post from the portal's own page, following redirects as a browser does.
    fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let origin = format!("Origin: https://{APPLIANCE_UPLINK}:{PORTAL_PORT}");
        let mut args: Vec<String> = vec!["-L".into(), "-H".into(), origin, Self::url(path)];
        for (key, value) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{key}={value}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&self.uplink_ns, &self.jar, &args)
    }
}

fn input_value(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    body[at..].split('"').next().unwrap_or_default().to_owned()
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not happen in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stat(path: &std::path::Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn three_services_under_their_own_accounts_carry_an_administrators_first_day() {
    let mqtt_port = 18_800 + (std::process::id() % 1000) as u16;
    let mut t = Topology::with_config(&accounts_config(SMTP_PORT, mqtt_port));
    let config = t.app.config.clone();

    // What first boot made: every key with the table's owner, group and mode.
    for row in &KEY_FILES {
        let (uid, gid, mode) = stat(&config.keys_dir().join(row.file));
        let want_uid = match row.owner {
            Owner::Root => 0,
            Owner::Of(service) => uid_of(service),
        };
        let want_gid = match row.group {
            appliance::keyring::Group::Root => 0,
            appliance::keyring::Group::Services => SERVICES_GID,
            appliance::keyring::Group::Mail => MAIL_GID,
        };
        assert_eq!(
            (uid, gid, mode),
            (want_uid, want_gid, row.mode),
            "{}",
            row.file
        );
    }

    // The firewall controller under its account with CAP_NET_ADMIN only, as its unit has it.
    let firewall = service_command(&t, Service::Firewall, "+net_admin");
    t.start_daemon_command(firewall, &[]);
    let web = Running(
        service_command(&t, Service::Web, "")
            .stdout(Stdio::null())
            .spawn()
            .expect("plantgate-web"),
    );
    let ingest = Running(
        service_command(&t, Service::Ingest, "")
            .stdout(Stdio::null())
            .spawn()
            .expect("plantgate-ingest"),
    );
    let mail = testkit::MailCatcher::start_in_namespace(&t.appliance_ns, SMTP_PORT);

    let browser = Browser {
        uplink_ns: t.uplink_ns.clone(),
        jar: t.dir.path().join("ada.cookies"),
    };
    // Before the first administrator exists every page leads to first-run setup.
    wait_until("the portal answering on uplink", || {
        browser.get("/setup").0 == 200
    });

    // First-run setup with the enrolment token, as the console shows it.
    let (token, _) = appliance::enrolment::issue(
        &t.app.audit,
        &test_actor(),
        appliance::enrolment::FIRST_ADMIN,
        3_600_000_000,
        appliance::time::now_us(),
    )
    .expect("token");
    let (status, page) = browser.post(
        "/setup",
        &[
            ("token", token.reveal()),
            ("organisation", "Moulding Plant Nord"),
            ("name", "Ada Admin"),
            ("email", EMAIL),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(status, 200, "setup: {page}");

    // Sign in; the second factor must be enrolled first (this answered 500 on the image).
    let (_, page) = browser.post("/login", &[("email", EMAIL), ("password", PASSWORD)]);
    let secret = input_value(&page, "secret");
    let csrf = input_value(&page, "csrf");
    let code = appliance::second_factor::code_at(&secret, appliance::time::now_us()).expect("code");
    let (status, page) = browser.post(
        "/account/second-factor",
        &[("csrf", &csrf), ("secret", &secret), ("code", &code)],
    );
    assert_eq!(
        status, 200,
        "TOTP enrolment as the portal's account: {page}"
    );
    assert_eq!(
        page.matches("<li><code>").count(),
        10,
        "recovery codes: {page}"
    );

    // Sign out, and in again with the password and a code.
    let (_, home) = browser.get("/");
    assert!(home.contains("Welcome"), "{home}");
    browser.post("/logout", &[("csrf", &input_value(&home, "csrf"))]);
    let (_, page) = browser.post("/login", &[("email", EMAIL), ("password", PASSWORD)]);
    let next = appliance::second_factor::code_at(&secret, appliance::time::now_us() + 30_000_000)
        .expect("code");
    let (status, home) = browser.post(
        "/login/second-factor",
        &[("csrf", &input_value(&page, "csrf")), ("code", &next)],
    );
    assert_eq!(status, 200);
    assert!(home.contains("Welcome"), "signed in with TOTP: {home}");

    // The mail relay with a password (sealed under the relay key), then a test email.
    let (_, settings) = browser.get("/settings");
    let csrf = input_value(&settings, "csrf");
    let relay = |user: &str, password: &str| {
        browser.post(
            "/settings/mail",
            &[
                ("csrf", &csrf),
                ("host", "127.0.0.1"),
                ("port", &SMTP_PORT.to_string()),
                ("security", "none"),
                ("username", user),
                ("password", password),
                ("from", "plantgate@plant.example"),
            ],
        )
    };
    let (status, page) = relay("relay-user", "relay-secret-77");
    assert!(status == 200 && page.contains("Saved."), "{page}");
    // The debugging SMTP server offers no AUTH: the test email goes without credentials.
    let (status, page) = relay("", "");
    assert!(status == 200 && page.contains("Saved."), "{page}");
    let (status, page) = browser.post("/settings/mail/test", &[("csrf", &csrf)]);
    assert!(
        status == 200 && page.contains("A test email was sent"),
        "{page}"
    );
    mail.wait_for("[Plantgate] Test email");

    // A device posts a reading over HTTPS from the device network to the ingest.
    let site = appliance::models::Site::create(
        &t.app.audit,
        &test_actor(),
        appliance::models::Organisation::list(&mut t.app.store.conn().expect("conn"))
            .expect("organisations")[0]
            .id,
        "Hall 3",
        "",
        appliance::time::now_us(),
    )
    .expect("site");
    let (_, device_secret) = appliance::devices::Device::register(
        &t.app.audit,
        &test_actor(),
        &appliance::devices::DeviceRequest {
            serial: "PRESS-7".into(),
            kind: appliance::devices::DeviceKind::Monitor,
            site: site.id,
            gateway: None,
            model: None,
        },
        appliance::time::now_us(),
    )
    .expect("device");
    // `ts` in milliseconds, as the device protocol says (seconds would read as 1970, which
    // the ingest refuses).
    let reading = format!(
        r#"{{"readings":[{{"metric":"temperature_c","value":61.5,"seq":1,"ts":{}}}]}}"#,
        appliance::time::now_us() / 1_000 - 5_000
    );
    let post = || {
        curl(
            &t.device_ns,
            &t.dir.path().join("device.cookies"),
            &[
                "-H",
                &format!("Authorization: Bearer {}", device_secret.reveal()),
                "-H",
                "Content-Type: application/json",
                "--data",
                &reading,
                &format!("https://{APPLIANCE_DEVICE}:{INGEST_PORT}/v1/readings"),
            ],
        )
    };
    wait_until("the ingest answering on device", || post().0 == 200);

    // A grant through the controller running as its own account, then its revoke.
    let device_ns = t.device_ns.clone();
    t.listen(&device_ns, &[102]);
    let grant = t.open_grant(REQUESTER, DEVICE, "s7", 600).expect("grant");
    assert!(
        t.connect_from(&t.uplink_ns, REQUESTER, DEVICE, 102)
            .is_some(),
        "the pinhole opened by the controller under its own account"
    );
    t.revoke(grant.id);
    assert!(
        t.connect_from(&t.uplink_ns, REQUESTER, DEVICE, 102)
            .is_none()
    );

    // Three accounts appended to one audit log; root's `plantgate audit verify` calls it intact.
    let verify: Output = Command::new(sibling("plantgate"))
        .args(["audit", "verify"])
        .env("PLANTGATE_CONFIG", &t.config_path)
        .output()
        .expect("plantgate audit verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    drop((web, ingest));
}

/// Starts `program` as `service` and returns how it ended (it must end by itself).
fn start_expecting_refusal(t: &Topology, service: Service) -> Output {
    let program = service.program();
    let mut child = service_command(t, service, "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} started although a key it needs is unreadable");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn a_service_that_cannot_read_its_key_refuses_to_start_with_one_line_saying_why() {
    let t = Topology::with_config(&accounts_config(SMTP_PORT, 18_700));
    let keys = t.app.config.keys_dir();

    // The image's first bug: the TOTP key made by, and readable only to, the ingest.
    let totp = keys.join("totp-sealing.key");
    std::os::unix::fs::chown(&totp, Some(INGEST_UID), Some(0)).expect("chown");
    let ended = start_expecting_refusal(&t, Service::Web);
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(3), "{stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    for part in [
        "plantgate-web: cannot start",
        &totp.display().to_string(),
        &format!("owned by {INGEST_UID}:root"),
        "mode 0600",
        &format!("uid {WEB_UID}"),
        "read it",
        "TOTP",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }

    // The ingest without the device CA's key; the firewall without the audit signing key.
    std::fs::set_permissions(
        keys.join("device-ca.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .expect("chmod");
    let ended = start_expecting_refusal(&t, Service::Ingest);
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("device-ca.key") && stderr.contains("mode 0000"),
        "{stderr}"
    );

    std::fs::set_permissions(
        keys.join("audit-signing.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let ended = start_expecting_refusal(&t, Service::Firewall);
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(
        stderr.contains("plantgate-firewall: cannot start") && stderr.contains("audit-signing.key"),
        "{stderr}"
    );

    // `plantgate init` (every boot) puts the table's owners and modes back.
    let init = Command::new(sibling("plantgate"))
        .arg("init")
        .env("PLANTGATE_CONFIG", &t.config_path)
        .output()
        .expect("plantgate init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert_eq!(stat(&totp), (WEB_UID, 0, 0o600));
    assert_eq!(stat(&keys.join("device-ca.key")), (INGEST_UID, 0, 0o600));
    assert_eq!(
        stat(&keys.join("audit-signing.key")),
        (0, SERVICES_GID, 0o640)
    );
}
