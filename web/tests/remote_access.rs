//! Remote access in the portal: administrators set up sites over real HTTPS (curl), and a
//! real Chromium walks request → approval in a second browser session → the banner →
//! revoke. The firewall side has its own end-to-end test (firewall/tests/remote_access.rs);
//! here no controller runs, so grants stay in the store.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use appliance::access::{self, Machine, NewMachine, SitePolicy};
use appliance::accounts::{self, PasswordPolicy};
use appliance::models::{Organisation, Role, Site, User};
use appliance::schema::{access_requests, machines, site_approvers};
use appliance::time::now_us;
use diesel::prelude::*;

fn organisation(portal: &Portal) -> Organisation {
    Organisation::find_by_name(&mut portal.app.store.conn().unwrap(), "Moulding Plant Nord")
        .unwrap()
        .expect("set up")
}

fn person(portal: &Portal, org: &Organisation, name: &str, role: Role) -> User {
    let actor = appliance::Actor::System("test".into());
    let user = User::create(
        &portal.app.audit,
        &actor,
        org.id,
        name,
        &format!("{}@plant.example", name.to_lowercase()),
        role,
        now_us(),
    )
    .unwrap();
    accounts::set_password(
        &portal.app.audit,
        &actor,
        &user,
        PASSWORD,
        PasswordPolicy { min_chars: 12 },
        0,
    )
    .unwrap();
    user
}

fn counts(portal: &Portal) -> (i64, i64, i64, usize) {
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

#[test]
fn an_administrator_sets_up_a_site_and_garbage_changes_nothing() {
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    let org = organisation(&portal);
    let ann = person(&portal, &org, "Ann", Role::Approver);
    let tom = person(&portal, &org, "Tom", Role::Technician);
    portal.login("admin", EMAIL, PASSWORD);
    let csrf = portal.csrf("admin");

    let created = portal.post(
        Some("admin"),
        "/sites",
        &[("csrf", &csrf), ("name", "Hall A"), ("location", "North")],
    );
    assert_eq!(created.status, 303, "{}", created.body);
    let site_path = created.header("location").unwrap().to_owned();
    let site_id: i64 = site_path.rsplit('/').next().unwrap().parse().unwrap();

    // Policy: the allowlist decides which machines can be added.
    let policy = |allowlist: &str, max: &str, hours: &str| {
        portal.post(
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
    };
    assert_eq!(policy("192.168.50.0/28", "90", "").status, 303);
    let before = counts(&portal);
    for (bad, why) in [
        (
            policy("10.0.0.0/8", "90", ""),
            "not inside the device network",
        ),
        (policy("192.168.50.0/28", "-5", ""), "max_minutes"),
        (policy("192.168.50.0/28", "90", "morning"), "allowed_hours"),
        (
            policy("not-a-network", "90", ""),
            "not an IPv4 address or network",
        ),
    ] {
        assert_eq!(bad.status, 422, "{}", bad.body);
        assert!(bad.body.contains(why), "{why}: {}", bad.body);
    }
    let machine = |name: &str, address: &str, agents: &[&str]| {
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("name", name),
            ("address", address),
        ];
        fields.extend(agents.iter().map(|a| ("agents", *a)));
        portal.post(Some("admin"), &format!("{site_path}/machines"), &fields)
    };
    for (bad, why) in [
        (machine("Robot", "192.168.50.40", &["vnc"]), "allowlist"),
        (machine("Robot", "banana", &["vnc"]), "not an IPv4 address"),
        (
            machine("Robot", "192.168.50.5", &[]),
            "at least one device agent",
        ),
        (
            machine("Robot", "192.168.50.5", &["telnet"]),
            "no device agent named",
        ),
        (machine("", "192.168.50.5", &["vnc"]), "must not be empty"),
    ] {
        assert_eq!(bad.status, 422, "{}", bad.body);
        assert!(bad.body.contains(why), "{why}: {}", bad.body);
    }
    assert_eq!(counts(&portal), before, "a refused form changed something");
    assert_eq!(
        machine("Press 1", "192.168.50.10", &["s7", "vnc"]).status,
        303
    );
    assert_eq!(
        machine("Press 1", "192.168.50.11", &["s7"]).status,
        422,
        "a second machine of the same name"
    );

    // Only approvers can be named approvers.
    let as_approver = |user: &User| {
        portal.post(
            Some("admin"),
            &format!("{site_path}/approvers"),
            &[
                ("csrf", &csrf),
                ("user", &user.id.0.to_string()),
                ("action", "add"),
            ],
        )
    };
    assert_eq!(as_approver(&tom).status, 422);
    assert_eq!(as_approver(&ann).status, 303);
    let page = portal.get(Some("admin"), &site_path);
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
    portal.login("tom", &tom.email, PASSWORD);
    let tom_csrf = portal.csrf("tom");
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
            .status,
        404
    );
    assert_eq!(portal.get(Some("admin"), "/access/999").status, 404);

    // The technician's request form offers the machine; garbage is refused with the reason.
    let form = portal.get(Some("tom"), "/access");
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
        let reply = portal.post(Some("tom"), "/access", &all);
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

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_real_browser_walks_request_approval_banner_and_revoke() {
    use fantoccini::{Client, ClientBuilder, Locator};
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "\n*** {tool} is missing: scripts/deps test installs chromium and chromium-driver\n"
        );
    }
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    let org = organisation(&portal);
    let actor = appliance::Actor::System("test".into());
    let (audit, config) = (&portal.app.audit, &portal.app.config);
    let site = Site::create(audit, &actor, org.id, "Hall A", "", now_us()).unwrap();
    let policy = access::PolicyChange {
        approval_required: true,
        max_minutes: "60".into(),
        device_allowlist: "192.168.50.0/28".into(),
        ..Default::default()
    };
    SitePolicy::set(audit, &actor, config, &site, &policy, now_us()).unwrap();
    let press = Machine::add(
        audit,
        &actor,
        config,
        &site,
        &NewMachine {
            name: "Press 1",
            address: "192.168.50.10",
            agents: &["vnc".into()],
        },
        now_us(),
    )
    .unwrap();
    let tom = person(&portal, &org, "Tom", Role::Technician);
    let ann = person(&portal, &org, "Ann", Role::Approver);
    access::set_approver(audit, &actor, &site, ann.id, true).unwrap();

    let driver = ChromeDriver::start();
    let driver_port = driver.port;
    let shots = screenshot_dir();
    let origin = portal.origin();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let open = |profile: &'static str| {
            let dir = portal.dir.path().join(profile);
            async move {
                let mut caps = serde_json::Map::new();
                caps.insert("goog:chromeOptions".into(), serde_json::json!({
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--ignore-certificate-errors", "--window-size=1200,900", format!("--user-data-dir={}", dir.display())],
                }));
                caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
                ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{driver_port}")).await.expect("a WebDriver session")
            }
        };
        let wait_for = |browser: &Client, css: &'static str| {
            let browser = browser.clone();
            async move {
                browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(css)).await.unwrap_or_else(|_| panic!("no {css}"))
            }
        };
        let fill = |browser: &Client, css: &'static str, value: String| {
            let browser = browser.clone();
            async move { browser.find(Locator::Css(css)).await.unwrap().send_keys(&value).await.unwrap() }
        };
        let login = |browser: &Client, email: String| {
            let browser = browser.clone();
            let origin = origin.clone();
            async move {
                browser.goto(&format!("{origin}/login")).await.unwrap();
                browser.find(Locator::Css("input[name=email]")).await.unwrap().send_keys(&email).await.unwrap();
                browser.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
                browser.find(Locator::Css("main button[type=submit]")).await.unwrap().click().await.unwrap();
                browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("main h1.welcome")).await.unwrap();
            }
        };
        let shot = |browser: &Client, name: &'static str| {
            let (browser, shots) = (browser.clone(), shots.clone());
            async move { std::fs::write(shots.join(format!("{name}.png")), browser.screenshot().await.unwrap()).unwrap() }
        };

        // The technician asks.
        let technician = open("tom-profile").await;
        login(&technician, tom.email.clone()).await;
        technician.find(Locator::LinkText("Remote access")).await.unwrap().click().await.unwrap();
        wait_for(&technician, "form[action='/access']").await;
        technician
            .find(Locator::Css(&format!("select[name=target] option[value='{}/vnc']", press.id.0)))
            .await.unwrap().click().await.unwrap();
        fill(&technician, "input[name=minutes]", "30".into()).await;
        fill(&technician, "input[name=reason]", "HMI frozen on press 1".into()).await;
        shot(&technician, "access-1-request").await;
        technician.find(Locator::Css("form[action='/access'] button[type=submit]")).await.unwrap().click().await.unwrap();
        wait_for(&technician, "#cancel-request").await;
        assert_eq!(technician.find(Locator::Css("#state")).await.unwrap().text().await.unwrap(), "pending");

        // The approver, in a second browser session, finds it and approves.
        let approver = open("ann-profile").await;
        login(&approver, ann.email.clone()).await;
        approver.find(Locator::LinkText("Remote access")).await.unwrap().click().await.unwrap();
        wait_for(&approver, "table a").await;
        approver.find(Locator::LinkText("1")).await.unwrap().click().await.unwrap();
        wait_for(&approver, "#approve").await;
        assert!(approver.source().await.unwrap().contains("HMI frozen on press 1"));
        shot(&approver, "access-2-decide").await;
        approver.find(Locator::Css("#approve")).await.unwrap().click().await.unwrap();
        wait_for(&approver, "#revoke").await;
        assert_eq!(approver.find(Locator::Css("#state")).await.unwrap().text().await.unwrap(), "approved");

        // The technician sees where to connect, and every page carries the banner.
        technician.refresh().await.unwrap();
        wait_for(&technician, "#connect").await;
        let connect = technician.find(Locator::Css("#connect")).await.unwrap().text().await.unwrap();
        assert!(connect.contains("192.168.50.10") && connect.contains("tcp/5900"), "{connect}");
        let banner = technician.find(Locator::Css(".remote-active")).await.unwrap().text().await.unwrap();
        assert!(banner.contains("Remote access active at Hall A: Tom on Press 1"), "{banner}");
        shot(&technician, "access-3-connect-banner").await;
        approver.goto(&format!("{origin}/sites/{}", site.id.0)).await.unwrap();
        wait_for(&approver, ".remote-active").await;
        shot(&approver, "access-4-site-active").await;

        // The approver revokes; the banner goes.
        approver.goto(&format!("{origin}/access/1")).await.unwrap();
        wait_for(&approver, "#revoke").await;
        approver.find(Locator::Css("#revoke")).await.unwrap().click().await.unwrap();
        // The click does not wait for the next page: the old page's #state may go stale
        // under our hands, so ask again until the new page says "ended".
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = match approver.find(Locator::Css("#state")).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if state == "ended" {
                break;
            }
            assert!(Instant::now() < deadline, "the revoked request shows {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        technician.refresh().await.unwrap();
        wait_for(&technician, "#state").await;
        assert_eq!(technician.find(Locator::Css("#state")).await.unwrap().text().await.unwrap(), "ended");
        assert!(technician.find_all(Locator::Css(".remote-active")).await.unwrap().is_empty(), "the banner stayed");
        shot(&technician, "access-5-ended").await;
        technician.close().await.unwrap();
        approver.close().await.unwrap();
    });
    let actions = portal.actions();
    for expected in ["access.requested", "access.approved", "access.revoked"] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected}: {actions:?}"
        );
    }
}

#[test]
fn the_api_lists_machines_and_the_requests_the_caller_may_see() {
    let portal = Portal::start("");
    portal.setup_admin();
    let org = organisation(&portal);
    let actor = appliance::Actor::System("test".into());
    let (audit, config) = (&portal.app.audit, &portal.app.config);
    let policy = |allowlist: &str| access::PolicyChange {
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
        &policy("192.168.50.10/32"),
        now_us(),
    )
    .unwrap();
    SitePolicy::set(
        audit,
        &actor,
        config,
        &hall_b,
        &policy("192.168.50.20/32"),
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
    let tom = person(&portal, &org, "Tom", Role::Technician);
    let ann = person(&portal, &org, "Ann", Role::Approver);
    let carla = person(&portal, &org, "Carla", Role::Approver);
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

    let (status, machines) = portal.api(Some(&token_for(&tom)), "/api/v1/machines");
    assert_eq!(status, 200, "{machines}");
    assert_eq!(machines[0]["name"], "Press 1");
    assert_eq!(machines[0]["address"], "192.168.50.10");
    assert_eq!(machines[0]["agents"][1]["ports"], "tcp/5900");

    let (status, seen) = portal.api(Some(&token_for(&ann)), "/api/v1/access-requests");
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen.as_array().unwrap().len(), 1);
    assert_eq!(seen[0]["id"], request.id.0);
    assert_eq!(seen[0]["state"], "pending");
    assert_eq!(seen[0]["requester_addr"], "10.1.0.5");
    // An approver of another site sees none of it.
    let (_, unseen) = portal.api(
        Some(&token_for(&carla)),
        "/api/v1/access-requests?state=all",
    );
    assert_eq!(unseen, serde_json::json!([]));
    // Bad parameters get the API's error shape; a token without the scope gets 403.
    let (status, error) = portal.api(
        Some(&token_for(&ann)),
        "/api/v1/access-requests?state=maybe",
    );
    assert_eq!(status, 400, "{error}");
    let (other, _) = portal.token(&["audit:read"], 30, 0);
    assert_eq!(portal.api(Some(&other), "/api/v1/machines").0, 403);
    // The administrator exports every request of the organisation, audited.
    portal.login("admin", EMAIL, PASSWORD);
    let csv = portal.get(Some("admin"), "/access/export?format=csv");
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
    let jsonl = portal.get(Some("admin"), "/access/export?format=jsonl");
    let first: serde_json::Value =
        serde_json::from_str(jsonl.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["reason"], "HMI frozen");
    assert_eq!(
        portal
            .get(Some("admin"), "/access/export?format=xml")
            .status,
        400
    );
    assert!(portal.actions().iter().any(|a| a == "access.exported"));
}

#[test]
fn the_devices_page_shows_state_and_active_alerts_at_the_users_sites_only() {
    use appliance::alerts::{AlertKind, AlertRule, Measure, RuleRequest, RuleScope};
    use appliance::devices::{Device, DeviceKind, DeviceRequest};
    let portal = Portal::start("");
    portal.setup_admin();
    let org = organisation(&portal);
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

    let viewer = person(&portal, &org, "Vic", Role::Viewer);
    portal.login("viewer", &viewer.email, PASSWORD);
    let page = portal.get(Some("viewer"), "/devices");
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
