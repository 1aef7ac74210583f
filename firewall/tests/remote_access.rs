//! Remote access with approval, end to end across processes: `plantgate-web` and
//! `plantgate-firewall` in the appliance's network namespace, aiosmtpd (a real SMTP server,
//! not written here) beside them, technicians and approvers as `curl` on the uplink host,
//! and real TCP to the device host. Needs root.
//!
//! The portal binary is taken from beside `plantgate-firewall` in the target directory;
//! `cargo test --workspace` (what scripts/test runs) builds both.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use appliance::access;
use appliance::grants::Grant;
use common::portal::*;
use common::*;

#[test]
#[ignore = "a TCP server/client process for the tests below, not a test of its own"]
fn net_helper() {
    net_helper_main();
}

fn wait_for_signal(file: &std::path::Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // The hook runs as `lamp on|off SITE_ID SITE_NAME`; look at this site's last line.
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let site = line.split_whitespace().nth(1);
        if text.lines().rfind(|l| l.split_whitespace().nth(1) == site) == Some(line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "signal never reached {line:?}; it shows:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn live_grants(t: &Topology) -> Vec<Grant> {
    Grant::live(&mut t.app.store.conn().unwrap(), appliance::time::now_us()).unwrap()
}

#[test]
fn request_approve_connect_revoke_key_switch_and_deny_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let signal = dir.path().join("lamp");
    let extra = format!(
        "[web]\nhttps_listen = \"{APPLIANCE_UPLINK}:{PORTAL_PORT}\"\nhost_name = \"{APPLIANCE_UPLINK}\"\n\
         second_factor_roles = []\n[smtp]\nhost = \"127.0.0.1\"\nport = {SMTP_PORT}\nsecurity = \"none\"\n\
         [access]\nportal_url = \"https://{APPLIANCE_UPLINK}:{PORTAL_PORT}\"\n\
         signal_command = [\"sh\", \"-c\", \"echo \\\"$1 $2\\\" >> {}\", \"lamp\"]\n",
        signal.display()
    );
    let mut t = Topology::with_config(&extra);
    let (u, a, d) = (
        t.uplink_ns.clone(),
        t.appliance_ns.clone(),
        t.device_ns.clone(),
    );
    t.listen(&d, &[102, 502]);
    t.start_daemon();
    let smtp = testkit::MailCatcher::start_in_namespace(&a, SMTP_PORT);
    let p = plant(&t);
    let portal = start_portal(&t);
    let site = p.site_a.id.0;
    wait_for_signal(&signal, &format!("off {site}"));

    let tech = Person::login(&u, REQUESTER, dir.path(), &p.tech.email);
    let ann = Person::login(&u, OTHER_REQUESTER, dir.path(), &p.ann.email);
    let bert = Person::login(&u, OTHER_REQUESTER, dir.path(), &p.bert.email);
    let carla = Person::login(&u, OTHER_REQUESTER, dir.path(), &p.carla.email);
    let target = format!("{}/s7", p.press.id.0);

    // Bad input over HTTP: a clear answer, and nothing stored or opened.
    let too_long = tech.submit(
        "/access",
        &[("target", &target), ("minutes", "61"), ("reason", "x")],
    );
    assert_eq!(too_long.status, 422);
    assert!(
        too_long.body.contains("a number of minutes from 1 to 60"),
        "{}",
        too_long.body
    );
    let declared = tech.submit(
        "/access",
        &[
            ("target", &target),
            ("minutes", "5"),
            ("reason", "x"),
            ("declared_address", "10.50.0.1"),
        ],
    );
    assert_eq!(declared.status, 422);
    assert!(
        access::visible(
            &mut t.app.store.conn().unwrap(),
            &p.ann,
            access::Show::All,
            10
        )
        .unwrap()
        .is_empty()
    );

    // 1. Request: the approvers' email names the machine and the reason.
    let id = request_id(&tech.submit(
        "/access",
        &[
            ("target", &target),
            ("minutes", "30"),
            ("reason", "Mould temperature alarm on press 1"),
        ],
    ));
    let email = smtp.wait_for_message(
        &p.ann.email,
        &["Press 1", "Mould temperature alarm on press 1"],
    );
    assert!(email.contains(&format!("/access/{id}")), "{email}");
    smtp.wait_for_message(&p.bert.email, &["Press 1"]);

    // 2. Before approval the device port is closed.
    assert_eq!(t.reachable(&[(&u, REQUESTER, DEVICE, 102)]), [false]);

    // 3. An approver of site B sees nothing of it: 404 for the page and the decision.
    assert_eq!(carla.get(&format!("/access/{id}")).status, 404);
    assert_eq!(
        carla.submit(&format!("/access/{id}/approve"), &[]).status,
        404
    );

    // 4. Ann approves: exactly the agent's port, from exactly the requester's address.
    let approved = ann.submit(&format!("/access/{id}/approve"), &[("minutes", "20")]);
    assert_eq!(approved.status, 303, "{}", approved.body);
    assert_eq!(
        t.reachable(&[
            (&u, REQUESTER, DEVICE, 102),
            (&u, OTHER_REQUESTER, DEVICE, 102),
            (&u, REQUESTER, DEVICE, 502),
            (&u, REQUESTER, OTHER_DEVICE, 102),
        ]),
        [true, false, false, false]
    );
    smtp.wait_for_message(&p.tech.email, &["approved", DEVICE]);
    // The technician's page says what to connect to and offers to end the session.
    let page = tech.get(&format!("/access/{id}"));
    assert!(
        page.body.contains(DEVICE)
            && page.body.contains("tcp/102")
            && page.body.contains("End session"),
        "{}",
        page.body
    );
    assert!(page.body.contains("minutes left"));

    // 5. The "remote access active" signal turns on, and every portal page shows it.
    wait_for_signal(&signal, &format!("on {site}"));
    assert!(
        bert.get("/")
            .body
            .contains("Remote access active at Hall A: Tom on Press 1")
    );

    // 6. Bert revokes while a stream is flowing: no byte arrives later than 1 s after.
    let mut stream = t.stream(&u, REQUESTER, DEVICE, 102);
    let mut lines = BufReader::new(stream.stdout.take().unwrap()).lines();
    let flowing = wait_for_bytes(&mut lines, 30);
    assert!(
        flowing.last().is_some_and(|(_, total)| *total >= 30),
        "the stream never flowed"
    );
    let revoked_at = now_us();
    let revoked = bert.submit(&format!("/access/{id}/end"), &[("reason", "shift change")]);
    assert_eq!(revoked.status, 303, "{}", revoked.body);
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
    std::thread::sleep(Duration::from_secs(3));
    let _ = stream.kill();
    let _ = stream.wait();
    let late = reader
        .join()
        .unwrap()
        .into_iter()
        .filter(|at| *at > revoked_at + 1_000_000)
        .count();
    assert_eq!(
        late, 0,
        "{late} reads arrived more than 1 s after the revoke"
    );
    assert_eq!(t.reachable(&[(&u, REQUESTER, DEVICE, 102)]), [false]);
    wait_for_signal(&signal, &format!("off {site}"));
    smtp.wait_for_message(&p.tech.email, &["ended", "shift change"]);
    assert!(!bert.get("/").body.contains("Remote access active"));

    // 7. The key switch: off cuts everything at once and refuses approvals.
    let second = request_id(&tech.submit(
        "/access",
        &[
            ("target", &target),
            ("minutes", "10"),
            ("reason", "second try"),
        ],
    ));
    assert_eq!(
        ann.submit(&format!("/access/{second}/approve"), &[]).status,
        303
    );
    let waiting = request_id(&tech.submit(
        "/access",
        &[
            ("target", &target),
            ("minutes", "10"),
            ("reason", "third try"),
        ],
    ));
    assert_eq!(t.reachable(&[(&u, REQUESTER, DEVICE, 102)]), [true]);
    // A technician cannot turn the switch.
    assert_eq!(
        tech.submit(&format!("/sites/{site}/key-switch"), &[("enabled", "off")])
            .status,
        403
    );
    let off = bert.submit(&format!("/sites/{site}/key-switch"), &[("enabled", "off")]);
    assert_eq!(off.status, 303, "{}", off.body);
    assert_eq!(t.reachable(&[(&u, REQUESTER, DEVICE, 102)]), [false]);
    let refused = ann.submit(&format!("/access/{waiting}/approve"), &[]);
    assert_eq!(refused.status, 422);
    assert!(refused.body.contains("switched off"), "{}", refused.body);
    assert!(live_grants(&t).is_empty());
    assert_eq!(t.reachable(&[(&u, REQUESTER, DEVICE, 102)]), [false]);
    wait_for_signal(&signal, &format!("off {site}"));
    assert_eq!(
        bert.submit(&format!("/sites/{site}/key-switch"), &[("enabled", "on")])
            .status,
        303
    );

    // 8. A deny leaves everything closed, and the technician is told why.
    let denied = ann.submit(
        &format!("/access/{waiting}/deny"),
        &[("reason", "line is running production")],
    );
    assert_eq!(denied.status, 303, "{}", denied.body);
    smtp.wait_for_message(&p.tech.email, &["denied", "line is running production"]);
    assert!(live_grants(&t).is_empty());
    assert_eq!(t.reachable(&[(&u, REQUESTER, DEVICE, 102)]), [false]);
    // A decision on an already-decided request changes nothing.
    let again = bert.submit(&format!("/access/{waiting}/approve"), &[]);
    assert_eq!(again.status, 422);
    assert!(again.body.contains("already denied"), "{}", again.body);
    assert!(live_grants(&t).is_empty());

    // 9. Nobody approves their own request, even holding the approver role.
    let own_press = format!("{}/s7", p.press.id.0);
    let own = request_id(&ann.submit(
        "/access",
        &[
            ("target", &own_press),
            ("minutes", "5"),
            ("reason", "my own"),
        ],
    ));
    assert_eq!(
        ann.submit(&format!("/access/{own}/approve"), &[]).status,
        403
    );
    assert!(live_grants(&t).is_empty());
    assert_eq!(t.reachable(&[(&u, OTHER_REQUESTER, DEVICE, 102)]), [false]);

    // Every step is in the audit log, with its actor and source address.
    let actions: Vec<String> = t.audit().into_iter().map(|(action, _, _)| action).collect();
    for expected in [
        "access.requested",
        "access.notified",
        "access.approved",
        "firewall.grant.opened",
        "access.signal.on",
        "access.revoked",
        "firewall.grant.cut",
        "access.signal.off",
        "access.key_switch.off",
        "access.key_switch.on",
        "access.denied",
        "access.decision.refused",
        "mail.sent",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} not audited: {actions:?}"
        );
    }
    drop(portal);
    drop(smtp);
    let _ = p.bert;
}
