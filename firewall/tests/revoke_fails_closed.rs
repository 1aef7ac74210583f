//! A revoke holds while the firewall controller is killed: every pinhole also needs the
//! controller's lease, which only a live controller that can read the store renews. Here
//! the lease is 3 s; `plantgate-web`, `plantgate` and `plantgate-firewall` run as processes
//! in the namespaces of `common`, with aiosmtpd beside them. Needs root.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appliance::access;
use appliance::grants::Grant;
use appliance::ids::{AccessRequestId, GrantId};
use appliance::models::{Role, User};
use common::portal::*;
use common::*;

#[test]
#[ignore = "a TCP server/client process for the tests below, not a test of its own"]
fn net_helper() {
    net_helper_main();
}

const LEASE_SECONDS: u64 = 3;

/// A stream across the appliance, with the arrival time of every read.
struct Flow {
    child: Child,
    reads: Arc<Mutex<Vec<u128>>>,
}

impl Flow {
    fn start(t: &mut Topology, ns: &str, from: &str) -> Flow {
        let mut child = t.stream(ns, from, DEVICE, 102);
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let sink = reads.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(at) = line
                    .split("RECV ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next()?.parse::<u128>().ok())
                {
                    sink.lock().unwrap().push(at);
                }
            }
        });
        let flow = Flow { child, reads };
        let deadline = Instant::now() + Duration::from_secs(10);
        while flow.reads.lock().unwrap().len() < 30 {
            assert!(
                Instant::now() < deadline,
                "the stream from {from} never flowed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        flow
    }

    fn last(&self) -> u128 {
        self.reads.lock().unwrap().last().copied().unwrap_or(0)
    }

    /// Waits until nothing has arrived for a second (the server writes every 10 ms) and
    /// returns when the last byte came; gives up 20 s on.
    fn stopped(&self) -> u128 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = self.last();
            if now_us().saturating_sub(last) > 1_000_000 {
                return last;
            }
            assert!(Instant::now() < deadline, "the stream never stopped");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plantgate(t: &Topology, args: &[&str]) -> Output {
    let firewall = PathBuf::from(env!("CARGO_BIN_EXE_plantgate-firewall"));
    let cli = firewall.with_file_name("plantgate");
    assert!(
        cli.exists(),
        "\n\n*** {} is missing: build it first (`cargo build -p plantgate-appliance`).\n",
        cli.display()
    );
    Command::new(cli)
        .args(args)
        .env("PLANTGATE_CONFIG", &t.config_path)
        .output()
        .expect("run plantgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls a page until it contains `needle`.
fn page_says(person: &Person, path: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = person.get(path);
        if page.body.contains(needle) {
            return page.body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never said {needle:?}:\n{}",
            page.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn killed_controller_revokes_from_the_portal_and_the_cli_stop_the_streams_within_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "lease_seconds = {LEASE_SECONDS}\n\
         [web]\nhttps_listen = \"{APPLIANCE_UPLINK}:{PORTAL_PORT}\"\nhost_name = \"{APPLIANCE_UPLINK}\"\n\
         second_factor_roles = []\n[smtp]\nhost = \"127.0.0.1\"\nport = {SMTP_PORT}\nsecurity = \"none\"\n\
         [access]\nportal_url = \"https://{APPLIANCE_UPLINK}:{PORTAL_PORT}\"\n"
    );
    let mut t = Topology::with_config(&extra);
    let (u, a, d) = (
        t.uplink_ns.clone(),
        t.appliance_ns.clone(),
        t.device_ns.clone(),
    );
    t.listen(&d, &[102]);
    t.start_daemon();
    let smtp = testkit::MailCatcher::start_in_namespace(&a, SMTP_PORT);
    let p = plant(&t);
    let org = p.tech.organisation_id;
    let ada = "ada@plant.example";
    User::create(
        &t.app.audit,
        &test_actor(),
        org,
        "Ada",
        ada,
        Role::Admin,
        appliance::time::now_us(),
    )
    .unwrap();
    let _portal = start_portal(&t);
    let tech = Person::login(&u, REQUESTER, dir.path(), &p.tech.email);
    let ann = Person::login(&u, OTHER_REQUESTER, dir.path(), &p.ann.email);
    let bert = Person::login(&u, OTHER_REQUESTER, dir.path(), &p.bert.email);

    // One session approved in the portal, one grant opened on the command line.
    let target = format!("{}/s7", p.press.id.0);
    let request = request_id(&tech.submit(
        "/access",
        &[
            ("target", &target),
            ("minutes", "30"),
            ("reason", "Mould alarm"),
        ],
    ));
    let approved = ann.submit(&format!("/access/{request}/approve"), &[]);
    assert_eq!(approved.status, 303, "{}", approved.body);
    let portal_grant = access::find_visible(
        &mut t.app.store.conn().unwrap(),
        &p.bert,
        AccessRequestId(request),
    )
    .unwrap()
    .request
    .grant_id
    .unwrap();
    let opened = plantgate(
        &t,
        &[
            "grant",
            "open",
            "--from",
            OTHER_REQUESTER,
            "--to",
            DEVICE,
            "--agent",
            "s7",
            "--seconds",
            "600",
            "--reason",
            "vendor support",
        ],
    );
    assert!(opened.status.success(), "{}", text(&opened.stderr));
    assert!(
        text(&opened.stderr).contains("firewall: applied"),
        "{}",
        text(&opened.stderr)
    );
    let cli_grant = GrantId(
        text(&opened.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .expect("grant id"),
    );
    page_says(&bert, "/", "running: lease renewed");

    let portal_flow = Flow::start(&mut t, &u, REQUESTER);
    let cli_flow = Flow::start(&mut t, &u, OTHER_REQUESTER);

    // SIGKILL: nothing of the controller runs, nothing answers its socket.
    t.kill_daemon();
    let revoked_at = now_us();
    let revoked = bert.submit(
        &format!("/access/{request}/end"),
        &[("reason", "shift change")],
    );
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    let revoke = plantgate(&t, &["grant", "revoke", &cli_grant.0.to_string()]);
    let said = text(&revoke.stderr);
    assert_eq!(revoke.status.code(), Some(3), "{said}");
    assert!(
        said.contains("revoke recorded; pending: firewall controller unreachable")
            && said.contains(&format!(
                "the pinhole closes by itself within {LEASE_SECONDS} s"
            )),
        "{said}"
    );
    // The portal tells the truth: pending, not ended.
    let page = bert.get(&format!("/access/{request}"));
    assert!(
        page.body
            .contains("revoke pending: firewall controller unreachable"),
        "{}",
        page.body
    );

    // Both streams stop within the lease, with no controller at all.
    let bound = u128::from(LEASE_SECONDS + 1) * 1_000_000;
    for (name, flow) in [("portal", &portal_flow), ("command line", &cli_flow)] {
        let stopped = flow.stopped();
        let after = stopped.saturating_sub(revoked_at);
        println!(
            "{name} revoke, controller killed: last byte {:.2} s after the revoke (lease {LEASE_SECONDS} s)",
            after as f64 / 1e6
        );
        assert!(
            stopped <= revoked_at + bound,
            "{name}: bytes arrived {:.2} s after the revoke; the lease is {LEASE_SECONDS} s",
            after as f64 / 1e6
        );
    }
    assert_eq!(
        t.reachable(&[
            (&u, REQUESTER, DEVICE, 102),
            (&u, OTHER_REQUESTER, DEVICE, 102)
        ]),
        [false, false]
    );
    // The overview shows the controller unreachable; the administrator is mailed.
    page_says(&bert, "/", "unreachable: last seen");
    smtp.wait_for_message(ada, &["pending", &format!("grant {}", cli_grant.0)]);
    smtp.wait_for_message(ada, &["pending", &format!("grant {}", portal_grant.0)]);
    let stopped = (portal_flow.last(), cli_flow.last());

    // Restarted, the controller confirms both revokes: store, kernel and audit agree.
    t.start_daemon();
    for id in [portal_grant, cli_grant] {
        let grant = Grant::find(&mut t.app.store.conn().unwrap(), id).unwrap();
        assert_eq!(grant.close_reason.as_deref(), Some("cut"), "grant {}", id.0);
    }
    let listing = t.table_listing();
    assert!(
        !listing.contains(&format!("{REQUESTER} . {DEVICE}"))
            && !listing.contains(&format!("{OTHER_REQUESTER} . {DEVICE}")),
        "{listing}"
    );
    assert_eq!(
        t.reachable(&[
            (&u, REQUESTER, DEVICE, 102),
            (&u, OTHER_REQUESTER, DEVICE, 102)
        ]),
        [false, false]
    );
    let page = bert.get(&format!("/access/{request}"));
    assert!(!page.body.contains("revoke pending"), "{}", page.body);
    page_says(&bert, "/", "running: lease renewed");
    let records = t.audit();
    for id in [portal_grant, cli_grant] {
        let target = format!("grant:{}", id.0);
        assert!(
            records
                .iter()
                .any(|(action, on, _)| action == "firewall.revoke.pending" && *on == target),
            "no pending revoke audited for {target}: {records:?}"
        );
        let cut = records
            .iter()
            .find(|(action, on, _)| action == "firewall.grant.cut" && *on == target)
            .unwrap_or_else(|| panic!("{target} not confirmed: {records:?}"));
        assert!(cut.2["confirmed_after_ms"].as_i64().is_some(), "{cut:?}");
    }
    // Nothing crossed after the streams stopped, the restart included.
    assert_eq!((portal_flow.last(), cli_flow.last()), stopped);
}
