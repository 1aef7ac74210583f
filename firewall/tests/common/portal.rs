//! The portal beside the controller, for the tests that drive remote access across
//! processes: `plantgate-web` in the appliance's namespace, people as `curl` on the uplink
//! host, and a plant with its approvers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a failed test

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance::access::{self, Machine, NewMachine, PolicyChange, SitePolicy};
use appliance::accounts::{self, PasswordPolicy};
use appliance::models::{Organisation, Role, Site, User};

use super::*;

pub const PASSWORD: &str = "Spritzguss-Werkzeug-2026";
pub const SMTP_PORT: u16 = 2525;

/// A person at a browser on the uplink host: curl with a cookie jar, from one address.
pub struct Person {
    pub ns: String,
    pub from: &'static str,
    pub jar: PathBuf,
}

pub struct Reply {
    pub status: u16,
    pub location: String,
    pub body: String,
}

pub const ORIGIN: &str = "https://10.99.1.1:8443";

impl Person {
    pub fn curl(&self, args: &[String]) -> Reply {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-sk",
                "-i",
                "--max-time",
                "20",
                "--interface",
                self.from,
                "-b",
            ])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .args(args)
            .output()
            .expect("curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let location = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("location: ")
                    .or_else(|| l.strip_prefix("Location: "))
            })
            .unwrap_or("")
            .trim()
            .to_owned();
        Reply {
            status,
            location,
            body: body.to_owned(),
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.curl(&[format!("{ORIGIN}{path}")])
    }

    pub fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let mut args = vec![
            "-H".to_owned(),
            format!("Origin: {ORIGIN}"),
            format!("{ORIGIN}{path}"),
        ];
        for (k, v) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        self.curl(&args)
    }

    /// A form post carrying the session's CSRF token, read from a signed-in page.
    pub fn submit(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let page = self.get("/sessions");
        let at = page.body.find("name=\"csrf\" value=\"").expect("signed in") + 19;
        let csrf = page.body[at..at + 64].to_owned();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all)
    }

    pub fn login(ns: &str, from: &'static str, dir: &std::path::Path, email: &str) -> Person {
        let person = Person {
            ns: ns.to_owned(),
            from,
            jar: dir.join(format!("{email}.jar")),
        };
        let reply = person.post("/login", &[("email", email), ("password", PASSWORD)]);
        assert_eq!(reply.status, 303, "login of {email}: {}", reply.body);
        person
    }
}

pub struct Plant {
    pub site_a: Site,
    pub press: Machine,
    pub tech: User,
    pub ann: User,
    pub bert: User,
    pub carla: User,
}

pub fn plant(t: &Topology) -> Plant {
    let (audit, actor, config) = (&t.app.audit, test_actor(), &t.app.config);
    let org = Organisation::create(
        audit,
        &actor,
        "Moulding Plant Nord",
        appliance::time::now_us(),
    )
    .unwrap();
    let site_a = Site::create(
        audit,
        &actor,
        org.id,
        "Hall A",
        "",
        appliance::time::now_us(),
    )
    .unwrap();
    let site_b = Site::create(
        audit,
        &actor,
        org.id,
        "Hall B",
        "",
        appliance::time::now_us(),
    )
    .unwrap();
    let policy = |allowlist: &str| PolicyChange {
        approval_required: true,
        max_minutes: "60".into(),
        device_allowlist: allowlist.into(),
        ..PolicyChange::default()
    };
    SitePolicy::set(
        audit,
        &actor,
        config,
        &site_a,
        &policy(&format!("{DEVICE}/32")),
        appliance::time::now_us(),
    )
    .unwrap();
    SitePolicy::set(
        audit,
        &actor,
        config,
        &site_b,
        &policy(&format!("{OTHER_DEVICE}/32")),
        appliance::time::now_us(),
    )
    .unwrap();
    let press = Machine::add(
        audit,
        &actor,
        config,
        &site_a,
        &NewMachine {
            name: "Press 1",
            address: DEVICE,
            agents: &["s7".into()],
        },
        appliance::time::now_us(),
    )
    .unwrap();
    Machine::add(
        audit,
        &actor,
        config,
        &site_b,
        &NewMachine {
            name: "Mixer",
            address: OTHER_DEVICE,
            agents: &["modbus".into()],
        },
        appliance::time::now_us(),
    )
    .unwrap();
    let person = |name: &str, role| {
        let user = User::create(
            audit,
            &actor,
            org.id,
            name,
            &format!("{}@plant.example", name.to_lowercase()),
            role,
            appliance::time::now_us(),
        )
        .unwrap();
        accounts::set_password(
            audit,
            &actor,
            &user,
            PASSWORD,
            PasswordPolicy { min_chars: 12 },
            0,
        )
        .unwrap();
        user
    };
    let (tech, ann, bert, carla) = (
        person("Tom", Role::Technician),
        person("Ann", Role::Approver),
        person("Bert", Role::Approver),
        person("Carla", Role::Approver),
    );
    for (site, who) in [(&site_a, &ann), (&site_a, &bert), (&site_b, &carla)] {
        access::set_approver(audit, &actor, site, who.id, true).unwrap();
    }
    Plant {
        site_a,
        press,
        tech,
        ann,
        bert,
        carla,
    }
}

/// Killed on drop, so a failed assertion does not leave the portal running.
pub struct Portal(Child);

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_portal(t: &Topology) -> Portal {
    let firewall = PathBuf::from(env!("CARGO_BIN_EXE_plantgate-firewall"));
    let web = firewall.with_file_name("plantgate-web");
    assert!(
        web.exists(),
        "\n\n*** {} is missing: build it first (`cargo build -p plantgate-web`; scripts/test builds the whole workspace).\n",
        web.display()
    );
    let portal = Portal(
        Command::new("ip")
            .args(["netns", "exec", &t.appliance_ns])
            .arg(&web)
            .env("PLANTGATE_CONFIG", &t.config_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start plantgate-web"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.uplink_ns,
                "curl",
                "-sk",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                &format!("{ORIGIN}/login"),
            ])
            .status()
            .is_ok_and(|s| s.success());
        if up {
            return portal;
        }
        assert!(Instant::now() < deadline, "plantgate-web did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn request_id(reply: &Reply) -> i64 {
    assert_eq!(reply.status, 303, "request refused: {}", reply.body);
    reply
        .location
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .expect("redirect to /access/ID")
}
