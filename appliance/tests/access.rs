//! Remote access with approval at the core, on both backends: the rules a plant relies on.
//! Every refusal is checked to leave the store (requests, grants, audit log) untouched.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::Error;
use appliance::access::{self, Decision, Machine, NewRequest, PolicyChange, SitePolicy, State};
use appliance::accounts::PasswordPolicy;
use appliance::grants::Grant;
use appliance::models::{Organisation, Role, Site, User};
use appliance::schema::{access_requests, firewall_grants, mail_outbox};
use appliance::time::now_us;
use common::{Backend, Cli, TestAppliance, test_actor};
use diesel::prelude::*;

const FROM: &str = "10.1.0.20";

struct Plant {
    t: TestAppliance,
    site_a: Site,
    press: Machine,
    mixer: Machine,
    tech: User,
    ann: User,
    bert: User,
    carla: User,
}

fn user(t: &TestAppliance, org: &Organisation, name: &str, role: Role) -> User {
    User::create(
        &t.app.audit,
        &test_actor(),
        org.id,
        name,
        &format!("{}@plant.example", name.to_lowercase()),
        role,
    )
    .unwrap()
}

fn policy(allowlist: &str) -> PolicyChange {
    PolicyChange {
        approval_required: true,
        max_minutes: "60".into(),
        device_allowlist: allowlist.into(),
        ..PolicyChange::default()
    }
}

/// Site A (press, approvers Ann and Bert) and site B (mixer, approver Carla), one technician.
fn plant(backend: Backend) -> Plant {
    let t = TestAppliance::new(backend);
    let (audit, actor, config) = (&t.app.audit, test_actor(), &t.app.config);
    let org = Organisation::create(audit, &actor, "Plant").unwrap();
    let site_a = Site::create(audit, &actor, org.id, "Hall A", "").unwrap();
    let site_b = Site::create(audit, &actor, org.id, "Hall B", "").unwrap();
    SitePolicy::set(audit, &actor, config, &site_a, &policy("192.168.50.0/28")).unwrap();
    SitePolicy::set(audit, &actor, config, &site_b, &policy("192.168.50.16/28")).unwrap();
    let press = Machine::add(
        audit,
        &actor,
        config,
        &site_a,
        "Press 1",
        "192.168.50.10",
        &["s7".into(), "vnc".into()],
    )
    .unwrap();
    let mixer = Machine::add(
        audit,
        &actor,
        config,
        &site_b,
        "Mixer",
        "192.168.50.20",
        &["modbus".into()],
    )
    .unwrap();
    let tech = user(&t, &org, "Tom", Role::Technician);
    let ann = user(&t, &org, "Ann", Role::Approver);
    let bert = user(&t, &org, "Bert", Role::Approver);
    let carla = user(&t, &org, "Carla", Role::Approver);
    for (site, who) in [(&site_a, &ann), (&site_a, &bert), (&site_b, &carla)] {
        access::set_approver(audit, &actor, site, who.id, true).unwrap();
    }
    Plant {
        t,
        site_a,
        press,
        mixer,
        tech,
        ann,
        bert,
        carla,
    }
}

impl Plant {
    fn ask(
        &self,
        who: &User,
        machine: &Machine,
        agent: &str,
        minutes: &str,
    ) -> appliance::error::Result<access::AccessRequest> {
        self.ask_with(
            who,
            &NewRequest {
                machine_id: machine.id,
                agent: agent.into(),
                minutes: minutes.into(),
                reason: "Mould temperature alarm, check PLC".into(),
                declared_address: String::new(),
            },
        )
    }

    fn ask_with(
        &self,
        who: &User,
        new: &NewRequest,
    ) -> appliance::error::Result<access::AccessRequest> {
        access::request(
            &self.t.app.audit,
            &self.t.app.config,
            who,
            FROM,
            new,
            now_us(),
        )
    }

    fn decide(
        &self,
        who: &User,
        id: i64,
        decision: Decision,
    ) -> appliance::error::Result<access::AccessRequest> {
        access::decide(
            &self.t.app.audit,
            &self.t.app.config,
            who,
            id,
            &decision,
            "10.1.0.30",
            now_us(),
        )
    }

    fn approve(&self, who: &User, id: i64) -> appliance::error::Result<access::AccessRequest> {
        self.decide(
            who,
            id,
            Decision::Approve {
                minutes: String::new(),
            },
        )
    }

    /// Requests, grants and audit records: what a refusal must leave as it was.
    fn footprint(&self) -> (i64, i64, i64) {
        let mut conn = self.t.conn();
        (
            access_requests::table
                .count()
                .get_result(&mut conn)
                .unwrap(),
            firewall_grants::table
                .count()
                .get_result(&mut conn)
                .unwrap(),
            self.t.tail(),
        )
    }

    fn mails_to(&self, who: &User) -> Vec<(String, String)> {
        mail_outbox::table
            .filter(mail_outbox::recipient.eq(&who.email))
            .order(mail_outbox::id)
            .select((mail_outbox::subject, mail_outbox::body))
            .load(&mut self.t.conn())
            .unwrap()
    }
}

fn assert_invalid(result: appliance::error::Result<access::AccessRequest>, field: &str) {
    match result {
        Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected a refusal of {field}, got {other:?}"),
    }
}

fn the_flow_approves_emails_and_opens_exactly_one_grant(backend: Backend) {
    let p = plant(backend);
    let request = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    assert_eq!(request.state, "pending");
    assert_eq!(request.requester_addr, FROM);
    // Both approvers of site A are told, with the machine, the reason and a link; not Carla.
    for approver in [&p.ann, &p.bert] {
        let mails = p.mails_to(approver);
        assert_eq!(mails.len(), 1, "{}", approver.name);
        let (subject, body) = &mails[0];
        assert!(
            subject.contains("Press 1") && subject.contains("Hall A"),
            "{subject}"
        );
        assert!(
            body.contains("Mould temperature alarm")
                && body.contains(&format!("/access/{}", request.id)),
            "{body}"
        );
    }
    assert!(p.mails_to(&p.carla).is_empty());
    assert!(
        Grant::live(&mut p.t.conn(), now_us()).unwrap().is_empty(),
        "nothing open before approval"
    );

    let approved = p
        .decide(
            &p.ann,
            request.id,
            Decision::Approve {
                minutes: "10".into(),
            },
        )
        .unwrap();
    assert_eq!(approved.state, "approved");
    assert_eq!(
        approved.approved_seconds,
        Some(600),
        "the approver shortened it"
    );
    let live = Grant::live(&mut p.t.conn(), now_us()).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (
            live[0].requester_addr.as_str(),
            live[0].device_addr.as_str(),
            live[0].ports.as_str()
        ),
        (FROM, "192.168.50.10", "tcp/102")
    );
    let left = live[0].expires_at_us - now_us();
    assert!(left > 590_000_000 && left <= 600_000_000, "{left}");
    assert!(
        p.mails_to(&p.tech)
            .iter()
            .any(|(s, b)| s.contains("approved") && b.contains("192.168.50.10"))
    );

    // A second decision is refused and changes nothing.
    let before = p.footprint();
    let again = p.decide(
        &p.bert,
        request.id,
        Decision::Deny {
            reason: "no".into(),
        },
    );
    assert!(
        matches!(again, Err(Error::Conflict(ref m)) if m.contains("already approved")),
        "{again:?}"
    );
    assert_eq!(p.footprint(), before);

    // The technician ends it: the grant is revoked.
    let ended = access::end(
        &p.t.app.audit,
        &p.t.app.config,
        &p.tech,
        request.id,
        "",
        FROM,
        now_us(),
    )
    .unwrap();
    assert_eq!(ended.state, "ended");
    assert!(Grant::live(&mut p.t.conn(), now_us()).unwrap().is_empty());
}

fn bad_input_is_refused_and_changes_nothing(backend: Backend) {
    let p = plant(backend);
    let (audit, actor, config) = (&p.t.app.audit, test_actor(), &p.t.app.config);
    let before = p.footprint();
    // A duration over the policy's maximum (60), or not a number.
    assert_invalid(p.ask(&p.tech, &p.press, "s7", "61"), "duration");
    assert_invalid(p.ask(&p.tech, &p.press, "s7", "ten"), "duration");
    // An agent the machine does not offer (Modbus belongs to site B's mixer).
    assert_invalid(p.ask(&p.tech, &p.press, "modbus", "30"), "agent");
    // A declared address the policy does not allow (it allows none yet).
    let declared = NewRequest {
        machine_id: p.press.id,
        agent: "s7".into(),
        minutes: "30".into(),
        reason: "x".into(),
        declared_address: "10.9.9.9".into(),
    };
    assert_invalid(p.ask_with(&p.tech, &declared), "address");
    // No reason.
    let silent = NewRequest {
        reason: "  ".into(),
        declared_address: String::new(),
        ..declared.clone()
    };
    assert_invalid(p.ask_with(&p.tech, &silent), "reason");
    // A machine of another organisation's id space: not found.
    let missing = NewRequest {
        machine_id: 9999,
        ..silent.clone()
    };
    assert!(matches!(
        p.ask_with(&p.tech, &missing),
        Err(Error::NotFound(_))
    ));
    assert_eq!(p.footprint(), before, "refused requests left a trace");

    // Outside the allowed hours: a one-hour window two hours from now (UTC).
    let hour = (now_us() / 3_600_000_000 + 2) % 24;
    let mut narrow = policy("192.168.50.0/28");
    narrow.allowed_hours = format!("{:02}:00-{:02}:00", hour, (hour + 1) % 24);
    SitePolicy::set(audit, &actor, config, &p.site_a, &narrow).unwrap();
    let before = p.footprint();
    assert_invalid(p.ask(&p.tech, &p.press, "s7", "30"), "time");
    assert_eq!(p.footprint(), before);

    // With the declared network allowed, the declared address is recorded as such.
    let mut open = policy("192.168.50.0/28");
    open.declared_networks = "10.9.0.0/16".into();
    SitePolicy::set(audit, &actor, config, &p.site_a, &open).unwrap();
    let request = p.ask_with(&p.tech, &declared).unwrap();
    assert_eq!(
        (request.requester_addr.as_str(), request.address_declared),
        ("10.9.9.9", true)
    );

    // Approving for longer than asked is refused.
    let before = p.footprint();
    let longer = p.decide(
        &p.ann,
        request.id,
        Decision::Approve {
            minutes: "31".into(),
        },
    );
    assert_invalid(longer, "duration");
    assert!(matches!(
        p.decide(&p.ann, request.id, Decision::Deny { reason: " ".into() }),
        Err(Error::Invalid { .. })
    ));
    assert_eq!(p.footprint(), before);

    // A decision on an expired request.
    let late = access::decide(
        audit,
        config,
        &p.ann,
        request.id,
        &Decision::Approve {
            minutes: String::new(),
        },
        "x",
        now_us() + 25 * 3_600_000_000,
    );
    assert!(
        matches!(late, Err(Error::Conflict(ref m)) if m.contains("expired")),
        "{late:?}"
    );
    assert_eq!(p.footprint(), before);

    // Policy values are checked too.
    for (field, change) in [
        (
            "max_minutes",
            PolicyChange {
                max_minutes: "100000".into(),
                ..policy("")
            },
        ),
        (
            "allowed_hours",
            PolicyChange {
                allowed_hours: "late".into(),
                ..policy("")
            },
        ),
        (
            "timezone",
            PolicyChange {
                timezone: "Mars/Olympus".into(),
                ..policy("")
            },
        ),
        ("device_allowlist", policy("10.0.0.0/8")),
        (
            "declared_networks",
            PolicyChange {
                declared_networks: "192.168.50.0/24".into(),
                ..policy("")
            },
        ),
    ] {
        match SitePolicy::set(audit, &actor, config, &p.site_a, &change) {
            Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // A machine outside the site's allowlist.
    let outside = Machine::add(
        audit,
        &actor,
        config,
        &p.site_a,
        "Robot",
        "192.168.50.40",
        &["vnc".into()],
    );
    assert!(
        matches!(
            outside,
            Err(Error::Invalid {
                field: "address",
                ..
            })
        ),
        "{outside:?}"
    );
}

fn nobody_approves_their_own_request(backend: Backend) {
    let p = plant(backend);
    // Ann holds the approver role for site A and asks herself.
    let request = p.ask(&p.ann, &p.press, "vnc", "15").unwrap();
    assert!(
        p.mails_to(&p.ann).is_empty(),
        "the requester is not asked to approve"
    );
    assert_eq!(p.mails_to(&p.bert).len(), 1);
    let before = p.footprint();
    let own = p.approve(&p.ann, request.id);
    assert!(matches!(own, Err(Error::Forbidden(_))), "{own:?}");
    let (requests, grants, tail) = p.footprint();
    assert_eq!((requests, grants), (before.0, before.1));
    assert_eq!(tail, before.2 + 1, "the refused attempt is audited");
    assert!(p.approve(&p.bert, request.id).is_ok());
}

fn an_approver_of_one_site_cannot_see_or_decide_on_another(backend: Backend) {
    let p = plant(backend);
    let request = p.ask(&p.tech, &p.mixer, "modbus", "15").unwrap();
    let before = p.footprint();
    assert!(matches!(
        access::find_visible(&mut p.t.conn(), &p.ann, request.id),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        p.approve(&p.ann, request.id),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        access::end(
            &p.t.app.audit,
            &p.t.app.config,
            &p.ann,
            request.id,
            "",
            "x",
            now_us()
        ),
        Err(Error::NotFound(_))
    ));
    assert!(
        access::visible(&mut p.t.conn(), &p.ann, access::Show::All, 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(p.footprint(), before);
    assert_eq!(
        access::visible(&mut p.t.conn(), &p.carla, access::Show::All, 100)
            .unwrap()
            .len(),
        1
    );
    assert!(p.approve(&p.carla, request.id).is_ok());
}

fn two_approvers_at_once_yield_one_decision(backend: Backend) {
    let p = plant(backend);
    for round in 0..5 {
        let request = p.ask(&p.tech, &p.press, "s7", "5").unwrap();
        let barrier = std::sync::Barrier::new(2);
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = [&p.ann, &p.bert]
                .into_iter()
                .enumerate()
                .map(|(i, who)| {
                    let (p, barrier) = (&p, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        if i == 0 {
                            p.approve(who, request.id)
                        } else {
                            p.decide(
                                who,
                                request.id,
                                Decision::Deny {
                                    reason: "not now".into(),
                                },
                            )
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(Error::Conflict(_)))),
            "{outcomes:?}"
        );
        let grants = Grant::live(&mut p.t.conn(), now_us()).unwrap().len() as i64;
        let approved: i64 = access_requests::table
            .filter(access_requests::state.eq("approved"))
            .count()
            .get_result(&mut p.t.conn())
            .unwrap();
        assert_eq!(
            grants, approved,
            "a grant for every approval and nothing else"
        );
        // Clear the way for the next round.
        if let Ok(r) = outcomes.iter().find(|o| o.is_ok()).unwrap()
            && r.state == "approved"
        {
            access::end(
                &p.t.app.audit,
                &p.t.app.config,
                &p.tech,
                r.id,
                "",
                FROM,
                now_us(),
            )
            .unwrap();
        }
    }
}

fn the_key_switch_cuts_everything_and_refuses_approvals(backend: Backend) {
    let p = plant(backend);
    let (audit, config) = (&p.t.app.audit, &p.t.app.config);
    let first = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    p.approve(&p.ann, first.id).unwrap();
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
    assert_eq!(cut, 1);
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
    SitePolicy::set(audit, &actor, config, &p.site_a, &allows).unwrap();
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
    let request = p.ask(&p.tech, &p.press, "s7", "30").unwrap();
    p.approve(&p.ann, request.id).unwrap();
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
    let other = Organisation::create(audit, &actor, "Elsewhere").unwrap();
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
    the_hardware_key_switch_is_a_command,
    disabling_the_organisation_ends_its_remote_sessions_and_logins,
    a_technician_extends_only_where_the_policy_allows_and_within_its_maximum,
    the_flow_approves_emails_and_opens_exactly_one_grant,
    bad_input_is_refused_and_changes_nothing,
    nobody_approves_their_own_request,
    an_approver_of_one_site_cannot_see_or_decide_on_another,
    two_approvers_at_once_yield_one_decision,
    the_key_switch_cuts_everything_and_refuses_approvals,
    requests_expire_and_sessions_end_with_their_grant_or_account,
    a_contractor_is_invited_to_one_site,
);
