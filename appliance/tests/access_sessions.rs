//! Remote access at the core, on both backends: what becomes of an approved session. The
//! key switch (from the portal and as a command), expiry and the tick, a technician's
//! extension, and a disabled organisation.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::Error;
use appliance::access::{self, SitePolicy};
use appliance::accounts::PasswordPolicy;
use appliance::grants::Grant;
use appliance::models::{Organisation, User};
use appliance::time::now_us;
use common::plant::{FROM, plant, policy};
use common::{Backend, Cli, test_actor};

fn the_key_switch_cuts_everything_and_refuses_approvals(backend: Backend) {
    let p = plant(backend);
    let (audit, config) = (&p.t.app.audit, &p.t.app.config);
    let first = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    let approved = p.approve(&p.ann, first.id).unwrap();
    let second = p.ask(&p.tech, &p.press, "vnc", "30").unwrap();
    // The technician cannot turn it; an approver of the other site cannot either.
    for who in [&p.tech, &p.carla] {
        let refused =
            access::set_key_switch(audit, config, Some(who), &p.site_a, false, "x", now_us());
        assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    }
    let cut = access::set_key_switch(
        audit,
        config,
        Some(&p.bert),
        &p.site_a,
        false,
        "10.1.0.31",
        now_us(),
    )
    .unwrap();
    assert_eq!(
        cut,
        Vec::from_iter(approved.grant_id),
        "the cut session's grant"
    );
    assert!(
        Grant::live(&mut p.t.conn(), now_us()).unwrap().is_empty(),
        "every session cut"
    );
    let before = p.footprint();
    let refused = p.approve(&p.ann, second.id);
    assert!(
        matches!(refused, Err(Error::Conflict(ref m)) if m.contains("switched off")),
        "{refused:?}"
    );
    assert!(matches!(
        p.ask(&p.tech, &p.press, "s7", "5"),
        Err(Error::Conflict(_))
    ));
    assert_eq!(p.footprint(), before);
    // Site B is not affected.
    let other = p.ask(&p.tech, &p.mixer, "modbus", "5").unwrap();
    assert!(p.approve(&p.carla, other.id).is_ok());
    // On again: the pending request can be approved.
    access::set_key_switch(audit, config, Some(&p.ann), &p.site_a, true, "x", now_us()).unwrap();
    assert!(p.approve(&p.bert, second.id).is_ok());
}

fn requests_expire_and_sessions_end_with_their_grant_or_account(backend: Backend) {
    let p = plant(backend);
    let (audit, config) = (&p.t.app.audit, &p.t.app.config);
    let waiting = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    let report = access::tick(audit, config, now_us() + 25 * 3_600_000_000).unwrap();
    assert_eq!(report.expired, 1);
    let mut conn = p.t.conn();
    assert_eq!(
        access::find_visible(&mut conn, &p.tech, waiting.id)
            .unwrap()
            .request
            .state,
        "expired"
    );
    drop(conn);
    assert!(
        p.mails_to(&p.tech)
            .iter()
            .any(|(s, _)| s.contains("expired"))
    );

    // A session ends when its grant's time runs out.
    let short = p.ask(&p.tech, &p.press, "s7", "1").unwrap();
    p.approve(&p.ann, short.id).unwrap();
    let report = access::tick(audit, config, now_us() + 61_000_000).unwrap();
    assert_eq!(report.ended, 1);
    assert_eq!(
        access::find_visible(&mut p.t.conn(), &p.tech, short.id)
            .unwrap()
            .request
            .state,
        "ended"
    );

    // Disabling the technician revokes the session at the next tick.
    let live = p.ask(&p.tech, &p.press, "vnc", "30").unwrap();
    p.approve(&p.ann, live.id).unwrap();
    appliance::accounts::set_disabled(
        audit,
        &test_actor(),
        p.tech.organisation_id,
        p.tech.id,
        true,
        now_us(),
    )
    .unwrap();
    access::tick(audit, config, now_us()).unwrap();
    let view = access::find_visible(&mut p.t.conn(), &p.ann, live.id).unwrap();
    assert_eq!(view.request.state, "ended");
    assert!(view.request.end_reason.unwrap().contains("account"));
    let grant = Grant::find(&mut p.t.conn(), view.request.grant_id.unwrap()).unwrap();
    assert!(grant.revoked_at_us.is_some(), "its pinhole is revoked");
}

fn a_technician_extends_only_where_the_policy_allows_and_within_its_maximum(backend: Backend) {
    let p = plant(backend);
    let (audit, actor, config) = (&p.t.app.audit, test_actor(), &p.t.app.config);
    let request = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    p.approve(&p.ann, request.id).unwrap();
    let extend =
        |who: &User, minutes: &str| access::extend(audit, who, request.id, minutes, FROM, now_us());
    let before = p.footprint();
    assert!(
        matches!(extend(&p.tech, "10"), Err(Error::Forbidden(_))),
        "the policy does not allow it"
    );
    let mut allows = policy("192.168.50.0/28");
    allows.requester_may_extend = true;
    SitePolicy::set(audit, &actor, config, &p.site_a, &allows, now_us()).unwrap();
    let before = (before.0, before.1, before.2 + 1);
    assert!(
        matches!(extend(&p.ann, "10"), Err(Error::Forbidden(_))),
        "only the requester"
    );
    assert!(
        matches!(extend(&p.tech, "31"), Err(Error::Invalid { .. })),
        "past the 60-minute maximum"
    );
    assert!(matches!(extend(&p.tech, "0"), Err(Error::Invalid { .. })));
    assert_eq!(p.footprint(), before);
    let grant_before = Grant::live(&mut p.t.conn(), now_us()).unwrap().remove(0);
    let extended = extend(&p.tech, "30").unwrap();
    assert_eq!(extended.approved_seconds, Some(3600));
    let grant_after = Grant::find(&mut p.t.conn(), grant_before.id).unwrap();
    assert_eq!(
        grant_after.expires_at_us - grant_before.expires_at_us,
        30 * 60_000_000
    );
    assert!(
        matches!(extend(&p.tech, "1"), Err(Error::Invalid { .. })),
        "nothing left to add"
    );
}

fn disabling_the_organisation_ends_its_remote_sessions_and_logins(backend: Backend) {
    let p = plant(backend);
    let (audit, config) = (&p.t.app.audit, &p.t.app.config);
    appliance::accounts::set_password(
        audit,
        &test_actor(),
        &p.tech,
        "Nockenwelle-Zahnrad-42",
        PasswordPolicy { min_chars: 12 },
        0,
    )
    .unwrap();
    let request = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    p.approve(&p.ann, request.id).unwrap();
    Organisation::set_disabled(audit, &test_actor(), p.tech.organisation_id, true, now_us())
        .unwrap();
    access::tick(audit, config, now_us()).unwrap();
    let view = access::find_visible(&mut p.t.conn(), &p.ann, request.id).unwrap();
    assert_eq!(view.request.state, "ended");
    assert!(
        Grant::find(&mut p.t.conn(), view.request.grant_id.unwrap())
            .unwrap()
            .revoked_at_us
            .is_some()
    );
    let lockout = appliance::accounts::Lockout {
        attempts: 5,
        minutes: 15,
    };
    let login = appliance::accounts::login(
        audit,
        &p.tech.email,
        "Nockenwelle-Zahnrad-42",
        "x",
        now_us(),
        lockout,
    )
    .unwrap();
    assert!(login.user.is_none());
    assert_eq!(login.reason, "organisation disabled");
    Organisation::set_disabled(
        audit,
        &test_actor(),
        p.tech.organisation_id,
        false,
        now_us(),
    )
    .unwrap();
    let login = appliance::accounts::login(
        audit,
        &p.tech.email,
        "Nockenwelle-Zahnrad-42",
        "x",
        now_us(),
        lockout,
    )
    .unwrap();
    assert!(login.user.is_some());
}

fn the_hardware_key_switch_is_a_command(backend: Backend) {
    let p = plant(backend);
    let org = Organisation::find(&mut p.t.conn(), p.site_a.organisation_id).unwrap();
    let admin = common::plant::user(&p.t, &org, "Ada", appliance::models::Role::Admin);
    let request = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    let grant = p.approve(&p.ann, request.id).unwrap().grant_id.unwrap();
    let site = p.site_a.id.0.to_string();
    let off =
        p.t.cli()
            .args(["site", "key-switch", "--site", &site, "off"])
            .output()
            .unwrap();
    // No firewall controller runs here, so the cut session's revoke is recorded but
    // pending: the command says so and exits 3 (its pinhole closes when the lease runs out).
    assert_eq!(off.status.code(), Some(3), "{}", common::stderr(&off));
    assert!(
        common::stderr(&off).contains("pending: firewall controller unreachable"),
        "{}",
        common::stderr(&off)
    );
    assert!(
        common::stdout(&off).contains("Hall A: remote access off; 1 sessions cut"),
        "{}",
        common::stdout(&off)
    );
    assert!(Grant::live(&mut p.t.conn(), now_us()).unwrap().is_empty());
    // Pending as a revoke of one grant is: audited as a failure, and the administrators told.
    let mut pending = Vec::new();
    appliance::audit::export::for_each_record(&mut p.t.conn(), &Default::default(), |r| {
        if r.action == "firewall.revoke.pending" {
            pending.push((r.target, r.outcome));
        }
        Ok(true)
    })
    .unwrap();
    assert_eq!(
        pending,
        [(format!("grant:{}", grant.0), "failure".to_owned())]
    );
    assert!(
        p.mails_to(&admin).iter().any(|(subject, _)| subject
            == &format!(
                "Plantgate: revoke of grant {} pending: firewall controller unreachable",
                grant.0
            )),
        "{:?}",
        p.mails_to(&admin)
    );
    assert!(
        !SitePolicy::of(&mut p.t.conn(), p.site_a.id)
            .unwrap()
            .remote_enabled
    );
    let bad =
        p.t.cli()
            .args(["site", "key-switch", "--site", &site, "sideways"])
            .output()
            .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let missing =
        p.t.cli()
            .args(["site", "key-switch", "--site", "999", "on"])
            .output()
            .unwrap();
    assert!(!missing.status.success());
    let on =
        p.t.cli()
            .args(["site", "key-switch", "--site", &site, "on"])
            .output()
            .unwrap();
    assert!(on.status.success());
    assert!(
        SitePolicy::of(&mut p.t.conn(), p.site_a.id)
            .unwrap()
            .remote_enabled
    );
}

on_both_backends!(
    the_hardware_key_switch_is_a_command,
    disabling_the_organisation_ends_its_remote_sessions_and_logins,
    a_technician_extends_only_where_the_policy_allows_and_within_its_maximum,
    the_key_switch_cuts_everything_and_refuses_approvals,
    requests_expire_and_sessions_end_with_their_grant_or_account,
);
