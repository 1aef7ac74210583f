//! A revoke the firewall controller does not confirm, on both backends: the command line
//! says so and exits 3, the pending revoke is audited and mailed to the administrators; and
//! the controller's status row and the per-grant queries read back as the portal and the
//! controller use them. The kernel side (the lease closing the pinhole) is
//! `firewall/tests/remote_access.rs`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::grants::control::{FirewallStatus, Health};
use appliance::grants::{Grant, GrantRequest};
use appliance::ids::GrantId;
use appliance::models::{Organisation, Role, User};
use appliance::schema::mail_outbox;
use appliance::time::now_us;
use common::{Backend, Cli, TestAppliance, test_actor};
use diesel::prelude::*;

on_both_backends!(
    a_revoke_the_controller_does_not_confirm_exits_3_and_is_audited_and_mailed,
    the_controller_status_and_the_per_grant_queries_read_back,
);

fn audit(t: &TestAppliance) -> Vec<(String, String, String)> {
    let mut records = Vec::new();
    appliance::audit::export::for_each_record(&mut t.conn(), &Default::default(), |r| {
        records.push((r.action, r.target, r.outcome));
        Ok(true)
    })
    .unwrap();
    records
}

fn a_revoke_the_controller_does_not_confirm_exits_3_and_is_audited_and_mailed(backend: Backend) {
    let t = TestAppliance::new(backend);
    let (audit_log, actor) = (&t.app.audit, test_actor());
    let org = Organisation::create(audit_log, &actor, "Moulding Plant Nord", now_us()).unwrap();
    User::create(
        audit_log,
        &actor,
        org.id,
        "Ada",
        "ada@plant.example",
        Role::Admin,
        now_us(),
    )
    .unwrap();
    User::create(
        audit_log,
        &actor,
        org.id,
        "Tom",
        "tom@plant.example",
        Role::Technician,
        now_us(),
    )
    .unwrap();

    // No controller runs: the grant is stored, and the command says it is not open yet.
    let open = t
        .cli()
        .args([
            "grant",
            "open",
            "--from",
            "10.0.0.5",
            "--to",
            "192.168.50.7",
            "--agent",
            "s7",
            "--seconds",
            "600",
            "--reason",
            "maintenance",
        ])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&open.stdout),
        String::from_utf8_lossy(&open.stderr),
    );
    assert!(open.status.success(), "{err}");
    assert!(err.contains("did not answer"), "{err}");
    let id: i64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no grant id in {out:?}"));

    let revoke = t
        .cli()
        .args(["grant", "revoke", &id.to_string()])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&revoke.stdout),
        String::from_utf8_lossy(&revoke.stderr),
    );
    assert_eq!(revoke.status.code(), Some(3), "{out} {err}");
    assert!(out.contains(&format!("grant {id} revoked")), "{out}");
    assert!(
        err.contains("revoke recorded; pending: firewall controller unreachable")
            && err.contains("the pinhole closes by itself within 60 s"),
        "{err}"
    );

    // Recorded, not closed: the controller confirms that when it runs again.
    let grant = Grant::find(&mut t.conn(), GrantId(id)).unwrap();
    assert!(grant.revoked_at_us.is_some() && grant.closed_at_us.is_none());
    let records = audit(&t);
    let target = format!("grant:{id}");
    assert!(
        records
            .iter()
            .any(|(action, on, outcome)| action == "grant.revoked"
                && *on == target
                && outcome == "success"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|(action, on, outcome)| action == "firewall.revoke.pending"
                && *on == target
                && outcome == "failure"),
        "{records:?}"
    );
    // The administrator is told; the technician is not.
    let mails: Vec<(String, String)> = mail_outbox::table
        .select((mail_outbox::recipient, mail_outbox::subject))
        .load(&mut *t.conn())
        .unwrap();
    assert_eq!(
        mails,
        vec![(
            "ada@plant.example".to_owned(),
            format!("Plantgate: revoke of grant {id} pending: firewall controller unreachable")
        )]
    );

    // Revoking again is refused as such, and changes nothing.
    let again = t
        .cli()
        .args(["grant", "revoke", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended"));
    assert_eq!(audit(&t).len(), records.len());
}

fn the_controller_status_and_the_per_grant_queries_read_back(backend: Backend) {
    let t = TestAppliance::new(backend);
    assert_eq!(FirewallStatus::read(&mut t.conn()).unwrap(), None);
    assert_eq!(FirewallStatus::health(None, now_us()), Health::NeverRan);
    let mut status = FirewallStatus {
        started_at_us: 1_000_000,
        lease_seconds: 60,
        lease_renewed_at_us: 2_000_000,
        reconciled_at_us: None,
        last_error: Some("nft failed: no such table".into()),
    };
    status.record(&mut t.conn()).unwrap();
    assert_eq!(
        FirewallStatus::read(&mut t.conn()).unwrap().as_ref(),
        Some(&status)
    );
    // Renewed later: the one row is updated.
    status.lease_renewed_at_us = 30_000_000;
    status.reconciled_at_us = Some(29_000_000);
    status.last_error = None;
    status.record(&mut t.conn()).unwrap();
    let read = FirewallStatus::read(&mut t.conn()).unwrap();
    assert_eq!(read.as_ref(), Some(&status));
    assert!(matches!(
        FirewallStatus::health(read.clone(), 40_000_000),
        Health::Running(_)
    ));
    assert_eq!(
        FirewallStatus::health(read, 60_000_000),
        Health::Unreachable {
            status: status.clone(),
            lease_ends_at_us: 90_000_000
        }
    );

    // The controller's per-grant path reads only the grants between the same two addresses.
    let open = |from: &str, to: &str| {
        let request = GrantRequest {
            requester: from.into(),
            device: to.into(),
            agent: "s7".into(),
            duration_seconds: 600,
            reason: "maintenance".into(),
            dnat_port: None,
        };
        Grant::open(
            &t.app.audit,
            &test_actor(),
            &t.app.config,
            &request,
            now_us(),
        )
        .unwrap()
    };
    let (a, b, other) = (
        open("10.0.0.5", "192.168.50.7"),
        open("10.0.0.5", "192.168.50.7"),
        open("10.0.0.6", "192.168.50.7"),
    );
    Grant::revoke(&t.app.audit, &test_actor(), a.id, "done", now_us()).unwrap();
    let now = now_us();
    let ids = |grants: Vec<Grant>| grants.into_iter().map(|g| g.id).collect::<Vec<_>>();
    assert_eq!(
        ids(Grant::live_between(&mut t.conn(), "10.0.0.5", "192.168.50.7", now).unwrap()),
        vec![b.id]
    );
    assert_eq!(
        ids(Grant::live_between(&mut t.conn(), "10.0.0.6", "192.168.50.7", now).unwrap()),
        vec![other.id]
    );
    assert_eq!(
        ids(Grant::ended_unclosed(&mut t.conn(), now).unwrap()),
        vec![a.id]
    );
    // Past their expiry, the others count as ended too.
    assert_eq!(
        ids(Grant::ended_unclosed(&mut t.conn(), now + 601_000_000).unwrap()),
        vec![a.id, b.id, other.id]
    );
}
