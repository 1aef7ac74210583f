//! Remote access and the accounts around it, on both backends: a contractor invited to one
//! site, and deleting sites, users and organisations without losing remote-access history.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::Error;
use appliance::access::{self, Machine, State};
use appliance::accounts::PasswordPolicy;
use appliance::models::{Organisation, Role, Site, User};
use appliance::time::now_us;
use common::plant::{plant, user};
use common::{Backend, test_actor};

fn a_contractor_is_invited_to_one_site(backend: Backend) {
    let p = plant(backend);
    let (audit, config) = (&p.t.app.audit, &p.t.app.config);
    // A technician cannot invite; an approver of site A can.
    let refused = access::invite_contractor(
        audit,
        config,
        &p.tech,
        &p.site_a,
        "Vera",
        "vera@vendor.example",
        "7",
        "x",
        now_us(),
    );
    assert!(matches!(refused, Err(Error::Forbidden(_))));
    let vera = access::invite_contractor(
        audit,
        config,
        &p.ann,
        &p.site_a,
        "Vera",
        "vera@vendor.example",
        "7",
        "x",
        now_us(),
    )
    .unwrap();
    let mails = p.mails_to(&vera);
    assert_eq!(mails.len(), 1);
    let link = mails[0].1.lines().find(|l| l.contains("/invite/")).unwrap();
    let token = link.rsplit('/').next().unwrap();
    let policy = PasswordPolicy { min_chars: 12 };
    assert!(
        access::accept_invitation(audit, policy, vera.id, token, "short", "x", now_us()).is_err()
    );
    access::accept_invitation(
        audit,
        policy,
        vera.id,
        token,
        "Nockenwelle-Zahnrad-42",
        "x",
        now_us(),
    )
    .unwrap();
    assert!(
        access::accept_invitation(
            audit,
            policy,
            vera.id,
            token,
            "Nockenwelle-Zahnrad-43",
            "x",
            now_us()
        )
        .is_err(),
        "the link works once"
    );
    // Vera sees site A only, and a machine of site B is "not found" to her.
    let sites = access::sites_for(&mut p.t.conn(), &vera).unwrap();
    assert_eq!(
        sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["Hall A"]
    );
    assert!(matches!(
        p.ask(&vera, &p.mixer, "modbus", "5"),
        Err(Error::NotFound(_))
    ));
    assert!(p.ask(&vera, &p.press, "s7", "5").is_ok());
    // When her account ends, so does any session.
    let request = access::visible(&mut p.t.conn(), &vera, access::Show::Open, 10)
        .unwrap()
        .remove(0);
    p.approve(&p.ann, request.request.id).unwrap();
    let report = access::tick(audit, config, now_us() + 8 * 24 * 3_600_000_000).unwrap();
    assert!(report.ended >= 1);
    let view = access::find_visible(&mut p.t.conn(), &p.ann, request.request.id).unwrap();
    assert_eq!(view.request.state().unwrap(), State::Ended);
}

/// Deleting sites, users and organisations never loses remote-access history: what has
/// some is refused with the advice to disable it, and the refusal changes nothing.
fn deleting_keeps_history_and_says_so(backend: Backend) {
    use appliance::accounts::{self, AccountChange};
    let p = plant(backend);
    let (audit, actor) = (&p.t.app.audit, test_actor());
    let org = p.site_a.organisation_id;
    p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    let before = p.footprint();

    let kept = Site::delete(audit, &actor, org, p.site_a.id);
    assert!(
        matches!(&kept, Err(Error::Conflict(why)) if why.contains("history")),
        "{kept:?}"
    );
    let kept = accounts::delete_account(audit, &actor, org, p.tech.id);
    assert!(
        matches!(&kept, Err(Error::Conflict(why)) if why.contains("disable")),
        "{kept:?}"
    );
    let kept = Organisation::delete(audit, &actor, org);
    assert!(matches!(kept, Err(Error::Conflict(_))), "{kept:?}");
    assert_eq!(
        p.footprint(),
        before,
        "a refused deletion changed something"
    );
    assert_eq!(
        Machine::of_site(&mut p.t.conn(), p.site_a.id)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        access::approvers(&mut p.t.conn(), p.site_a.id)
            .unwrap()
            .len(),
        2
    );

    // Without history: an approver goes with their approver role, a site with its machines.
    accounts::delete_account(audit, &actor, org, p.ann.id).unwrap();
    let approvers = access::approvers(&mut p.t.conn(), p.site_a.id).unwrap();
    assert_eq!(approvers, vec![p.bert.clone()]);
    let site_b = p.mixer.site_id;
    Site::delete(audit, &actor, org, site_b).unwrap();
    assert!(
        Site::list_for(&mut p.t.conn(), org)
            .unwrap()
            .iter()
            .all(|s| s.id != site_b)
    );
    assert!(
        Machine::of_site(&mut p.t.conn(), site_b)
            .unwrap()
            .is_empty()
    );
    // Another organisation's ids are "not found", to the deleting and to the editing.
    let other = Organisation::create(audit, &actor, "Elsewhere", now_us()).unwrap();
    assert!(matches!(
        Site::delete(audit, &actor, other.id, p.site_a.id),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        accounts::delete_account(audit, &actor, other.id, p.bert.id),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        Site::update(audit, &actor, other.id, p.site_a.id, "Mine now", ""),
        Err(Error::NotFound(_))
    ));
    // An empty organisation goes, its users with it.
    let _ghost = user(&p.t, &other, "Ghost", Role::Viewer);
    Organisation::delete(audit, &actor, other.id).unwrap();
    assert!(
        User::find_by_email(&mut p.t.conn(), "ghost@plant.example")
            .unwrap()
            .is_none()
    );

    // Renaming checks the name and says whose it was.
    let renamed =
        Site::update(audit, &actor, org, p.site_a.id, "  Hall A North ", "Gate 3").unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.location.as_str()),
        ("Hall A North", "Gate 3")
    );
    assert!(matches!(
        Site::update(audit, &actor, org, p.site_a.id, "", ""),
        Err(Error::Invalid { field: "name", .. })
    ));

    // A new email address is told to both; nobody changes their own role.
    let change = AccountChange {
        email: Some("Tom.New@Plant.Example".into()),
        ..AccountChange::default()
    };
    let tom = accounts::update_account(audit, &actor, org, p.tech.id, &change, now_us()).unwrap();
    assert_eq!(tom.email, "tom.new@plant.example");
    assert!(p.mails_to(&p.tech)[0].1.contains("tom.new@plant.example"));
    assert_eq!(p.mails_to(&tom).len(), 1);
    let taken = AccountChange {
        email: Some(p.bert.email.clone()),
        ..AccountChange::default()
    };
    assert!(matches!(
        accounts::update_account(audit, &actor, org, p.tech.id, &taken, now_us()),
        Err(Error::Invalid { field: "email", .. })
    ));
    let promote = AccountChange {
        role: Some(Role::Admin),
        ..AccountChange::default()
    };
    assert!(matches!(
        accounts::update_account(
            audit,
            &appliance::Actor::User(p.tech.id),
            org,
            p.tech.id,
            &promote,
            now_us()
        ),
        Err(Error::Invalid { field: "role", .. })
    ));
}

on_both_backends!(
    deleting_keeps_history_and_says_so,
    a_contractor_is_invited_to_one_site,
);
