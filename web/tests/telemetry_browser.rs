//! An administrator's telemetry journey in a real browser: a real Chromium, against the real
//! `plantgate-web` and `plantgate-ingest` binaries over real TLS, with a real SMTP server.
//! They register a device in the portal and copy the secret it shows once; the device posts
//! readings with it; they test a threshold rule over the past week, create it, see the
//! alert raised on the device page and its email arrive, see it cleared, and remove the
//! rule. A viewer sees the same pages without a single control that changes anything.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::people::person;
use common::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use appliance::models::{Organisation, Role, Site};
use appliance::time::now_us;

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A reading of `mold_c` with sequence number `seq`, measured now.
fn reading(seq: i64, value: f64) -> String {
    serde_json::json!({ "readings": [
        { "metric": "mold_c", "value": value, "seq": seq, "ts": now_us() / 1000 }
    ]})
    .to_string()
}

#[test]
fn an_administrator_registers_a_device_sets_a_rule_and_sees_its_alert_raised_emailed_and_cleared() {
    use fantoccini::{Client, ClientBuilder, Locator};
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "\n*** {tool} is missing: scripts/deps test installs chromium and chromium-driver\n"
        );
    }
    let mail = testkit::MailCatcher::start();
    let portal = Portal::start(&format!(
        "logins_per_minute = 100\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\
         from = \"plantgate@plant.example\"\n[ingest]\nhttps_listen = \"127.0.0.1:0\"\n\
         mqtt_listen = \"127.0.0.1:0\"\n",
        mail.port()
    ));
    portal.setup_admin();
    let ingest = portal.start_ingest();
    let org = Organisation::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let actor = appliance::Actor::System("test".into());
    let hall = Site::create(&portal.app.audit, &actor, org.id, "Hall 3", "", now_us()).unwrap();
    let vera = person(&portal.app, &org, "Vera", Role::Viewer);

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
                             "--ignore-certificate-errors", "--window-size=1200,1400", format!("--user-data-dir={}", dir.display())],
                }));
                caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
                ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{driver_port}")).await.expect("a WebDriver session")
            }
        };
        let wait_for = |browser: &Client, css: String| {
            let browser = browser.clone();
            async move {
                browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(&css)).await.unwrap_or_else(|_| panic!("no {css}"))
            }
        };
        let fill = |browser: &Client, css: &'static str, value: String| {
            let browser = browser.clone();
            async move {
                let field = browser.find(Locator::Css(css)).await.unwrap();
                field.clear().await.unwrap();
                field.send_keys(&value).await.unwrap()
            }
        };
        let choose = |browser: &Client, css: String| {
            let browser = browser.clone();
            async move { browser.find(Locator::Css(&css)).await.unwrap().click().await.unwrap() }
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
        // Reloads the page until `css` shows, as a person would press reload: the ingest
        // decides alerts as it stores, a moment after the reading was acknowledged.
        let reload_until = |browser: &Client, css: &'static str| {
            let browser = browser.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    browser.refresh().await.unwrap();
                    if browser.find(Locator::Css(css)).await.is_ok() {
                        return;
                    }
                    assert!(Instant::now() < deadline, "{css} never showed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };

        // Register a device; its secret is shown once.
        let admin = open("ada-profile").await;
        login(&admin, EMAIL.into()).await;
        admin.find(Locator::LinkText("Devices")).await.unwrap().click().await.unwrap();
        wait_for(&admin, "form[action='/devices']".into()).await;
        fill(&admin, "#serial", "MM-0042".into()).await;
        choose(&admin, "#kind option[value=monitor]".into()).await;
        choose(&admin, format!("#site option[value='{}']", hall.id.0)).await;
        shot(&admin, "telemetry-1-register").await;
        admin.find(Locator::Css("#register")).await.unwrap().click().await.unwrap();
        let secret = wait_for(&admin, "#device-secret".into()).await.text().await.unwrap();
        assert!(secret.starts_with("pgd_"), "{secret}");
        shot(&admin, "telemetry-2-secret-once").await;

        // The device posts a cool reading with it.
        let (status, body) = ingest.post(&secret, &reading(1, 60.0));
        assert_eq!(status, 200, "{body}");

        // Test a threshold rule over the past week, then create it.
        admin.find(Locator::LinkText("Alert rules")).await.unwrap().click().await.unwrap();
        wait_for(&admin, "form[action='/alert-rules']".into()).await;
        fill(&admin, "#rule-name", "Mold too hot".into()).await;
        fill(&admin, "#rule-device", "MM-0042".into()).await;
        choose(&admin, "#rule-kind option[value=above]".into()).await;
        fill(&admin, "#rule-metric", "mold_c".into()).await;
        fill(&admin, "#rule-threshold", "80".into()).await;
        fill(&admin, "#rule-hysteresis", "2".into()).await;
        fill(&admin, "#rule-notify", "shift-lead@plant.example".into()).await;
        admin.find(Locator::Css("#test-rule")).await.unwrap().click().await.unwrap();
        let test = wait_for(&admin, "#rule-test".into()).await.text().await.unwrap();
        assert!(test.contains("would have raised 0 alert(s)") && test.contains("1 readings of 1 device(s)"), "{test}");
        admin.find(Locator::Css("#create-rule")).await.unwrap().click().await.unwrap();
        wait_for(&admin, "tr.rule".into()).await;
        let rules = admin.find(Locator::Css("tr.rule")).await.unwrap().text().await.unwrap();
        assert!(rules.contains("Mold too hot") && rules.contains("mold_c above 80") && rules.contains("MM-0042"), "{rules}");
        shot(&admin, "telemetry-3-rule").await;

        // Too hot: the alert shows on the device page and its email arrives.
        let (status, body) = ingest.post(&secret, &reading(2, 91.5));
        assert_eq!(status, 200, "{body}");
        admin.find(Locator::LinkText("Devices")).await.unwrap().click().await.unwrap();
        admin.find(Locator::LinkText("MM-0042")).await.unwrap().click().await.unwrap();
        reload_until(&admin, "#active-alerts").await;
        let active = admin.find(Locator::Css("#active-alerts")).await.unwrap().text().await.unwrap();
        assert!(active.contains("Mold too hot") && active.contains("91.5"), "{active}");
        shot(&admin, "telemetry-4-alert-raised").await;
        let raised = mail.wait_for_message("shift-lead@plant.example", &["alert RAISED: Mold too hot on MM-0042"]);
        assert!(raised.contains("91.5"), "{raised}");

        // Back to normal: cleared, in the device's history, and emailed.
        let (status, body) = ingest.post(&secret, &reading(3, 70.0));
        assert_eq!(status, 200, "{body}");
        reload_until(&admin, "#cleared-alerts").await;
        assert!(admin.find(Locator::Css("#no-active-alerts")).await.is_ok());
        let cleared = admin.find(Locator::Css("#cleared-alerts")).await.unwrap().text().await.unwrap();
        assert!(cleared.contains("Mold too hot") && cleared.contains("(70)"), "{cleared}");
        shot(&admin, "telemetry-5-alert-cleared").await;
        mail.wait_for_message("shift-lead@plant.example", &["alert cleared: Mold too hot on MM-0042"]);

        // The viewer reads the same pages and finds nothing to change.
        let viewer = open("vera-profile").await;
        login(&viewer, vera.email.clone()).await;
        for path in ["/devices", "/alert-rules", "/connectors"] {
            viewer.goto(&format!("{origin}{path}")).await.unwrap();
            wait_for(&viewer, "main h1".into()).await;
            let forms = viewer.find_all(Locator::Css("main form")).await.unwrap();
            assert!(forms.is_empty(), "{path}: a viewer is offered {} form(s)", forms.len());
        }
        viewer.goto(&format!("{origin}/alert-rules")).await.unwrap();
        wait_for(&viewer, "tr.rule".into()).await;
        viewer.find(Locator::LinkText("Mold too hot")).await.unwrap().click().await.unwrap();
        wait_for(&viewer, "main h1".into()).await;
        assert!(viewer.find_all(Locator::Css("main form")).await.unwrap().is_empty(), "a viewer may change a rule");
        viewer.close().await.unwrap();

        // Remove the rule.
        admin.goto(&format!("{origin}/alert-rules")).await.unwrap();
        admin.find(Locator::LinkText("Mold too hot")).await.unwrap().click().await.unwrap();
        wait_for(&admin, "#remove-rule".into()).await.click().await.unwrap();
        wait_for(&admin, "form[action='/alert-rules']".into()).await;
        assert!(admin.find_all(Locator::Css("tr.rule")).await.unwrap().is_empty(), "the rule is still listed");
        shot(&admin, "telemetry-6-rule-removed").await;
        admin.close().await.unwrap();
    });
    let actions = portal.actions();
    for expected in [
        "device.enrolled",
        "device.credential.issued",
        "alert.rule.created",
        "alert.raised",
        "alert.cleared",
        "alert.rule.removed",
    ] {
        assert_eq!(count(&actions, expected), 1, "{expected}: {actions:?}");
    }
    drop(ingest);
}
