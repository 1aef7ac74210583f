//! Remote access with approval at the core, on both backends: asking and deciding, the
//! rules a plant relies on. Every refusal is checked to leave the store (requests, grants,
//! audit log) untouched.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::Error;
use appliance::access::{
    self, Decision, Machine, NewMachine, NewRequest, PolicyChange, SitePolicy,
};
use appliance::grants::Grant;
use appliance::ids::MachineId;
use appliance::schema::access_requests;
use appliance::time::now_us;
use common::plant::{FROM, assert_invalid, plant, policy};
use common::{Backend, test_actor};
use diesel::prelude::*;

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
                && body.contains(&format!("/access/{}", request.id.0)),
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
        machine_id: MachineId(9999),
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
    SitePolicy::set(audit, &actor, config, &p.site_a, &narrow, now_us()).unwrap();
    let before = p.footprint();
    assert_invalid(p.ask(&p.tech, &p.press, "s7", "30"), "time");
    assert_eq!(p.footprint(), before);

    // With the declared network allowed, the declared address is recorded as such.
    let mut open = policy("192.168.50.0/28");
    open.declared_networks = "10.9.0.0/16".into();
    SitePolicy::set(audit, &actor, config, &p.site_a, &open, now_us()).unwrap();
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
        match SitePolicy::set(audit, &actor, config, &p.site_a, &change, now_us()) {
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
        &NewMachine {
            name: "Robot",
            address: "192.168.50.40",
            agents: &["vnc".into()],
        },
        now_us(),
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

on_both_backends!(
    the_flow_approves_emails_and_opens_exactly_one_grant,
    bad_input_is_refused_and_changes_nothing,
    nobody_approves_their_own_request,
    an_approver_of_one_site_cannot_see_or_decide_on_another,
    two_approvers_at_once_yield_one_decision,
);
