//! Sites, machines and the devices page, in process (`common::in_process`: the real
//! application over a real store): administrators set up sites and machines from the portal
//! (garbage changes nothing), the API lists machines and the requests the caller may see, and
//! the devices page shows each user only their sites. The walk through a real browser is
//! `remote_access.rs`; the firewall's side is firewall/tests/remote_access.rs.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::in_process::InProcess;
use common::people::{organisation, person};
use common::{EMAIL, PASSWORD};
use testkit::store::Backend;

use appliance::access::{self, Machine, NewMachine, SitePolicy};
use appliance::models::{Organisation, Role, Site, User};
use appliance::schema::{access_requests, machines, site_approvers};
use appliance::time::now_us;
use diesel::prelude::*;

fn counts(portal: &InProcess) -> (i64, i64, i64, usize) {
    let mut conn = portal.app.store.conn().unwrap();
    (
        machines::table.count().get_result(&mut conn).unwrap(),
        site_approvers::table.count().get_result(&mut conn).unwrap(),
        access_requests::table
            .count()
            .get_result(&mut conn)
            .unwrap(),
        portal.actions().len(),
    )
}

#[actix_web::test]
async fn an_administrator_sets_up_a_site_and_garbage_changes_nothing() {
    let portal = InProcess::with_web_settings(Backend::Sqlite, "logins_per_minute = 100");
    portal.setup_admin().await;
    let org = organisation(&portal.app);
    let ann = person(&portal.app, &org, "Ann", Role::Approver);
    let tom = person(&portal.app, &org, "Tom", Role::Technician);
    portal.login("admin", EMAIL, PASSWORD).await;
    let csrf = portal.csrf("admin").await;

    let created = portal
        .post(
            Some("admin"),
            "/sites",
            &[("csrf", &csrf), ("name", "Hall A"), ("location", "North")],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let site_path = created.header("location").unwrap().to_owned();
    let site_id: i64 = site_path.rsplit('/').next().unwrap().parse().unwrap();

    // Policy: the allowlist decides which machines can be added.
    let policy = async |allowlist: &str, max: &str, hours: &str| {
        portal
            .post(
                Some("admin"),
                &format!("{site_path}/policy"),
                &[
                    ("csrf", &csrf),
                    ("approval_required", "1"),
                    ("max_minutes", max),
                    ("allowed_hours", hours),
                    ("timezone", "Europe/Berlin"),
                    ("device_allowlist", allowlist),
                    ("declared_networks", ""),
                ],
            )
            .await
    };
    assert_eq!(policy("192.168.50.0/28", "90", "").await.status, 303);
    let before = counts(&portal);
    for (bad, why) in [
        (
            policy("10.0.0.0/8", "90", "").await,
            "not inside the device network",
        ),
        (policy("192.168.50.0/28", "-5", "").await, "max_minutes"),
        (
            policy("192.168.50.0/28", "90", "morning").await,
            "allowed_hours",
        ),
        (
            policy("not-a-network", "90", "").await,
            "not an IPv4 address or network",
        ),
    ] {
        assert_eq!(bad.status, 422, "{}", bad.body);
        assert!(bad.body.contains(why), "{why}: {}", bad.body);
    }
    let machine = async |name: &str, address: &str, agents: &[&str]| {
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("name", name),
            ("address", address),
        ];
        fields.extend(agents.iter().map(|a| ("agents", *a)));
        portal
            .post(Some("admin"), &format!("{site_path}/machines"), &fields)
            .await
    };
    for (bad, why) in [
        (
            machine("Robot", "192.168.50.40", &["vnc"]).await,
            "allowlist",
        ),
        (
            machine("Robot", "banana", &["vnc"]).await,
            "not an IPv4 address",
        ),
        (
            machine("Robot", "192.168.50.5", &[]).await,
            "at least one device agent",
        ),
        (
            machine("Robot", "192.168.50.5", &["telnet"]).await,
            "no device agent named",
        ),
        (
            machine("", "192.168.50.5", &["vnc"]).await,
            "must not be empty",
        ),
    ] {
        assert_eq!(bad.status, 422, "{}", bad.body);
        assert!(bad.body.contains(why), "{why}: {}", bad.body);
    }
    assert_eq!(counts(&portal), before, "a refused form changed something");
    assert_eq!(
        machine("Press 1", "192.168.50.10", &["s7", "vnc"])
            .await
            .status,
        303
    );
    assert_eq!(
        machine("Press 1", "192.168.50.11", &["s7"]).await.status,
        422,
        "a second machine of the same name"
    );

    // Only approvers can be named approvers.
    let as_approver = async |user: &User| {
        portal
            .post(
                Some("admin"),
                &format!("{site_path}/approvers"),
                &[
                    ("csrf", &csrf),
                    ("user", &user.id.0.to_string()),
                    ("action", "add"),
                ],
            )
            .await
    };
    assert_eq!(as_approver(&tom).await.status, 422);
    assert_eq!(as_approver(&ann).await.status, 303);
    let page = portal.get(Some("admin"), &site_path).await;
    assert!(
        page.body.contains("Press 1") && page.body.contains("ann@plant.example"),
        "{}",
        page.body
    );
    let stored = SitePolicy::of(
        &mut portal.app.store.conn().unwrap(),
        appliance::ids::SiteId(site_id),
    )
    .unwrap();
    assert_eq!(
        (
            stored.max_minutes,
            stored.timezone.as_str(),
            stored.device_allowlist.as_str()
        ),
        (90, "Europe/Berlin", "192.168.50.0/28")
    );

    // A technician changes nothing on a site, and another organisation's site is not found.
    portal.login("tom", &tom.email, PASSWORD).await;
    let tom_csrf = portal.csrf("tom").await;
    assert_eq!(
        portal
            .post(
                Some("tom"),
                &format!("{site_path}/machines"),
                &[
                    ("csrf", &tom_csrf),
                    ("name", "X"),
                    ("address", "192.168.50.3"),
                    ("agents", "vnc")
                ]
            )
            .await
            .status,
        403
    );
    assert_eq!(
        portal
            .post(
                Some("tom"),
                "/sites",
                &[("csrf", &tom_csrf), ("name", "Mine")]
            )
            .await
            .status,
        403
    );
    assert_eq!(
        portal
            .post(
                Some("tom"),
                &format!("{site_path}/key-switch"),
                &[("csrf", &tom_csrf), ("enabled", "off")]
            )
            .await
            .status,
        403
    );
    let other = Organisation::create(
        &portal.app.audit,
        &appliance::Actor::System("test".into()),
        "Other Plant",
        now_us(),
    )
    .unwrap();
    let foreign = Site::create(
        &portal.app.audit,
        &appliance::Actor::System("test".into()),
        other.id,
        "Elsewhere",
        "",
        now_us(),
    )
    .unwrap();
    assert_eq!(
        portal
            .get(Some("admin"), &format!("/sites/{}", foreign.id.0))
            .await
            .status,
        404
    );
    assert_eq!(
        portal
            .post(
                Some("admin"),
                &format!("/sites/{}/policy", foreign.id.0),
                &[("csrf", &csrf), ("max_minutes", "5")]
            )
            .await
            .status,
        404
    );
    assert_eq!(portal.get(Some("admin"), "/access/999").await.status, 404);

    // The technician's request form offers the machine; garbage is refused with the reason.
    let form = portal.get(Some("tom"), "/access").await;
    assert!(form.body.contains("Press 1"), "{}", form.body);
    let before = counts(&portal);
    for (fields, why) in [
        (
            vec![("target", "abc"), ("minutes", "5"), ("reason", "x")],
            "choose a machine",
        ),
        (
            vec![("target", "999/s7"), ("minutes", "5"), ("reason", "x")],
            "",
        ),
        (
            vec![("target", "1/s7"), ("minutes", "91"), ("reason", "x")],
            "from 1 to 90",
        ),
        (
            vec![("target", "1/s7"), ("minutes", "5"), ("reason", "")],
            "reason",
        ),
        (
            vec![("target", "1/modbus"), ("minutes", "5"), ("reason", "x")],
            "offers s7, vnc",
        ),
    ] {
        let mut all = vec![("csrf", tom_csrf.as_str())];
        all.extend(fields);
        let reply = portal.post(Some("tom"), "/access", &all).await;
        assert!(
            matches!(reply.status, 404 | 422),
            "{}: {}",
            reply.status,
            reply.body
        );
        assert!(reply.body.contains(why), "{why}: {}", reply.body);
    }
    assert_eq!(counts(&portal), before);
    let machine_id = Machine::of_site(
        &mut portal.app.store.conn().unwrap(),
        appliance::ids::SiteId(site_id),
    )
    .unwrap()[0]
        .id;
    assert_eq!(machine_id, appliance::ids::MachineId(1));
}

#[actix_web::test]
async fn the_api_lists_machines_and_the_requests_the_caller_may_see() {
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    let org = organisation(&portal.app);
    let actor = appliance::Actor::System("test".into());
    let (audit, config) = (&portal.app.audit, &portal.app.config);
    let policy = async |allowlist: &str| access::PolicyChange {
        approval_required: true,
        max_minutes: "60".into(),
        device_allowlist: allowlist.into(),
        ..Default::default()
    };
    let hall_a = Site::create(audit, &actor, org.id, "Hall A", "", now_us()).unwrap();
    let hall_b = Site::create(audit, &actor, org.id, "Hall B", "", now_us()).unwrap();
    SitePolicy::set(
        audit,
        &actor,
        config,
        &hall_a,
        &policy("192.168.50.10/32").await,
        now_us(),
    )
    .unwrap();
    SitePolicy::set(
        audit,
        &actor,
        config,
        &hall_b,
        &policy("192.168.50.20/32").await,
        now_us(),
    )
    .unwrap();
    let press = Machine::add(
        audit,
        &actor,
        config,
        &hall_a,
        &NewMachine {
            name: "Press 1",
            address: "192.168.50.10",
            agents: &["s7".into(), "vnc".into()],
        },
        now_us(),
    )
    .unwrap();
    let tom = person(&portal.app, &org, "Tom", Role::Technician);
    let ann = person(&portal.app, &org, "Ann", Role::Approver);
    let carla = person(&portal.app, &org, "Carla", Role::Approver);
    access::set_approver(audit, &actor, &hall_a, ann.id, true).unwrap();
    access::set_approver(audit, &actor, &hall_b, carla.id, true).unwrap();
    let new = access::NewRequest {
        machine_id: press.id,
        agent: "vnc".into(),
        minutes: "15".into(),
        reason: "HMI frozen".into(),
        declared_address: String::new(),
    };
    let request = access::request(
        audit,
        config,
        &tom,
        "10.1.0.5",
        &new,
        appliance::time::now_us(),
    )
    .unwrap();
    let token_for = |user: &User| {
        let (secret, _) = appliance::tokens::create(
            audit,
            &actor,
            user,
            "script",
            &["access:read".into()],
            30,
            appliance::time::now_us(),
        )
        .unwrap();
        secret.reveal().to_owned()
    };

    let (status, machines) = portal.api(Some(&token_for(&tom)), "/api/v1/machines").await;
    assert_eq!(status, 200, "{machines}");
    assert_eq!(machines[0]["name"], "Press 1");
    assert_eq!(machines[0]["address"], "192.168.50.10");
    assert_eq!(machines[0]["agents"][1]["ports"], "tcp/5900");

    let (status, seen) = portal
        .api(Some(&token_for(&ann)), "/api/v1/access-requests")
        .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen.as_array().unwrap().len(), 1);
    assert_eq!(seen[0]["id"], request.id.0);
    assert_eq!(seen[0]["state"], "pending");
    assert_eq!(seen[0]["requester_addr"], "10.1.0.5");
    // An approver of another site sees none of it.
    let (_, unseen) = portal
        .api(
            Some(&token_for(&carla)),
            "/api/v1/access-requests?state=all",
        )
        .await;
    assert_eq!(unseen, serde_json::json!([]));
    // Bad parameters get the API's error shape; a token without the scope gets 403.
    let (status, error) = portal
        .api(
            Some(&token_for(&ann)),
            "/api/v1/access-requests?state=maybe",
        )
        .await;
    assert_eq!(status, 400, "{error}");
    let (other, _) = portal.token(&["audit:read"], 30, 0);
    assert_eq!(portal.api(Some(&other), "/api/v1/machines").await.0, 403);
    // The administrator exports every request of the organisation, audited.
    portal.login("admin", EMAIL, PASSWORD).await;
    let csv = portal.get(Some("admin"), "/access/export?format=csv").await;
    assert_eq!(csv.status, 200);
    assert!(
        csv.body.starts_with("id,state,site,machine"),
        "{}",
        csv.body
    );
    assert!(
        csv.body.contains(&format!(
            "{},pending,Hall A,Press 1,192.168.50.10,vnc",
            request.id.0
        )),
        "{}",
        csv.body
    );
    let jsonl = portal
        .get(Some("admin"), "/access/export?format=jsonl")
        .await;
    let first: serde_json::Value =
        serde_json::from_str(jsonl.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["reason"], "HMI frozen");
    assert_eq!(
        portal
            .get(Some("admin"), "/access/export?format=xml")
            .await
            .status,
        400
    );
    assert!(portal.actions().iter().any(|a| a == "access.exported"));
}

#[actix_web::test]
async fn the_devices_page_shows_state_and_active_alerts_at_the_users_sites_only() {
    use appliance::alerts::{AlertKind, AlertRule, Measure, RuleRequest, RuleScope};
    use appliance::devices::{Device, DeviceKind, DeviceRequest};
    let portal = InProcess::new(Backend::Sqlite);
    portal.setup_admin().await;
    let org = organisation(&portal.app);
    let actor = appliance::Actor::System("test".into());
    let audit = &portal.app.audit;
    let hall = Site::create(audit, &actor, org.id, "Hall A", "", now_us()).unwrap();
    let register = |serial: &str, site: &Site| {
        Device::register(
            audit,
            &actor,
            &DeviceRequest {
                serial: serial.into(),
                kind: DeviceKind::Monitor,
                site: site.id,
                gateway: None,
                model: None,
            },
            now_us(),
        )
        .unwrap()
        .0
    };
    let monitor = register("MM-0042", &hall);
    appliance::readings::update_state(
        &mut portal.app.store.conn().unwrap(),
        monitor.id,
        appliance::time::now_us(),
        &appliance::readings::DeviceState {
            firmware_version: Some("2.1.0".into()),
            battery_pct: Some(87.0),
            signal_dbm: Some(-67.0),
        },
    )
    .unwrap();
    let rule = AlertRule::create(
        audit,
        &actor,
        hall.organisation_id,
        &RuleRequest {
            scope: RuleScope::Site(hall.id),
            name: "mould too hot".into(),
            kind: AlertKind::Above,
            metric: "temperature_c".into(),
            threshold: 80.0,
            hysteresis: 2.0,
            consecutive: 1,
            silent_seconds: 0,
            notify_email: String::new(),
            measure: Measure::Value,
            for_seconds: 0,
        },
        now_us(),
    )
    .unwrap();
    // An active alert, as the ingest service's evaluation would store it.
    diesel::insert_into(appliance::schema::alerts::table)
        .values((
            appliance::schema::alerts::rule_id.eq(rule.id),
            appliance::schema::alerts::device_id.eq(monitor.id),
            appliance::schema::alerts::raised_at_us.eq(appliance::time::now_us()),
            appliance::schema::alerts::raised_value.eq(Some(83.5)),
        ))
        .execute(&mut portal.app.store.conn().unwrap())
        .unwrap();
    // Another organisation's device stays invisible.
    let other = Organisation::create(audit, &actor, "Other Plant", now_us()).unwrap();
    let elsewhere = Site::create(audit, &actor, other.id, "Elsewhere", "", now_us()).unwrap();
    register("XX-0001", &elsewhere);

    let viewer = person(&portal.app, &org, "Vic", Role::Viewer);
    portal.login("viewer", &viewer.email, PASSWORD).await;
    let page = portal.get(Some("viewer"), "/devices").await;
    assert_eq!(page.status, 200);
    for shown in [
        "MM-0042",
        "Hall A",
        "2.1.0",
        "87 %",
        "-67 dBm",
        "mould too hot since",
    ] {
        assert!(page.body.contains(shown), "{shown}: {}", page.body);
    }
    assert!(
        !page.body.contains("XX-0001"),
        "another organisation's device is listed"
    );
}
