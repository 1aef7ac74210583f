//! Remote access in a real browser: a real Chromium, against the real `plantgate-web` binary
//! over real TLS, walks request → approval in a second browser session → the banner →
//! revoke. Sites and machines set up from the portal are `sites_and_machines.rs`; the
//! firewall side has its own end-to-end test (firewall/tests/remote_access.rs). Here no
//! controller runs, so grants stay in the store.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::people::{organisation, person};
use common::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use appliance::access::{self, Machine, NewMachine, SitePolicy};
use appliance::models::{Role, Site};
use appliance::time::now_us;

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
    let org = organisation(&portal.app);
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
    let tom = person(&portal.app, &org, "Tom", Role::Technician);
    let ann = person(&portal.app, &org, "Ann", Role::Approver);
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
