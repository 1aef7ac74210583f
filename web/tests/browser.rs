//! A real browser (Chromium, through its WebDriver) walks the portal served by the real
//! `plantgate-web` binary over real TLS.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::*;

use std::path::PathBuf;
use std::time::Duration;

/// Where screenshots of the browser test go, for a person to look at.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_real_browser_walks_setup_login_second_factor_logout_login_and_creates_a_user() {
    use fantoccini::{ClientBuilder, Locator};
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "\n*** {tool} is missing: scripts/deps test installs chromium and chromium-driver\n"
        );
    }
    let portal = Portal::start("second_factor_roles = [\"admin\"]");
    let driver = ChromeDriver::start();
    let driver_port = driver.port;
    let profile = portal.dir.path().join("chromium-profile");
    let shots = screenshot_dir();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({
            "binary": "/usr/bin/chromium",
            // The flags keep Chromium off the network, which this machine does not have anyway.
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--ignore-certificate-errors", "--window-size=1200,900", format!("--user-data-dir={}", profile.display())],
        }));
        caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
        let browser = ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{driver_port}")).await.expect("a WebDriver session");
        let shot = |name: &'static str| {
            let browser = browser.clone();
            let shots = shots.clone();
            async move { std::fs::write(shots.join(format!("{name}.png")), browser.screenshot().await.unwrap()).unwrap() }
        };
        let fill = |field: &'static str, value: String| {
            let browser = browser.clone();
            async move { browser.find(Locator::Css(&format!("input[name={field}]"))).await.unwrap().send_keys(&value).await.unwrap() }
        };
        // Clicking does not wait for the next page; waiting for an element only it has does.
        let submit_then = |next: &'static str| {
            let browser = browser.clone();
            async move {
                browser.find(Locator::Css("main button[type=submit]")).await.unwrap().click().await.unwrap();
                browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(next)).await.unwrap_or_else(|_| panic!("no {next} after submit"));
            }
        };
        let welcome = "main h1.welcome";
        let login_form = "form[action='/login']";
        browser.goto(&format!("{}/", portal.origin())).await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("form[action='/setup']")).await.unwrap();
        shot("1-setup").await;
        fill("token", portal.token.clone()).await;
        fill("organisation", "Moulding Plant Nord".into()).await;
        fill("name", "Ada Admin".into()).await;
        fill("email", EMAIL.into()).await;
        fill("password", PASSWORD.into()).await;
        submit_then(login_form).await;
        shot("2-login").await;
        assert_eq!(browser.current_url().await.unwrap().path(), "/login");
        fill("email", EMAIL.into()).await;
        fill("password", PASSWORD.into()).await;
        submit_then("div.qr svg").await;
        assert_eq!(browser.current_url().await.unwrap().path(), "/account/second-factor");
        shot("3-enrol-totp").await;
        let secret = browser.find(Locator::Css("input[name=secret]")).await.unwrap().attr("value").await.unwrap().unwrap();
        let now = appliance::time::now_us();
        fill("code", appliance::second_factor::code_at(&secret, now).unwrap()).await;
        submit_then("ul.codes").await;
        let codes = browser.find_all(Locator::Css("ul.codes li")).await.unwrap();
        assert_eq!(codes.len(), 10, "ten recovery codes are shown: {}", browser.source().await.unwrap());
        shot("4-recovery-codes").await;
        browser.find(Locator::LinkText("Continue to the portal")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(welcome)).await.unwrap();
        assert!(browser.source().await.unwrap().contains("Welcome, Ada Admin"));
        shot("5-home").await;

        browser.find(Locator::Css("header button")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(login_form)).await.unwrap();
        assert!(browser.source().await.unwrap().contains("You are logged out"));
        fill("email", EMAIL.into()).await;
        fill("password", PASSWORD.into()).await;
        submit_then("form[action='/login/second-factor']").await;
        assert_eq!(browser.current_url().await.unwrap().path(), "/login/second-factor");
        shot("6-second-factor").await;
        // The code of the next 30-second step: the one used at enrolment may not come back.
        fill("code", appliance::second_factor::code_at(&secret, now + 30_000_000).unwrap()).await;
        submit_then(welcome).await;
        assert!(browser.source().await.unwrap().contains("Welcome, Ada Admin"), "login with the second factor failed");
        shot("7-signed-in-with-totp").await;

        browser.find(Locator::LinkText("Users")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("form[action='/users']")).await.unwrap();
        fill("name", "Tom Tech".into()).await;
        fill("email", "tom@vendor.example".into()).await;
        browser.find(Locator::Css("select[name=role] option[value=technician]")).await.unwrap().click().await.unwrap();
        fill("password", "Schalt-Schrank-2026".into()).await;
        browser.find(Locator::Css("form[action='/users'] button[type=submit]")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::XPath("//td[text()='tom@vendor.example']")).await.expect("the new user is listed");
        shot("8-user-created").await;
        // The appliance's own pages, for the operator's administrator.
        browser.find(Locator::LinkText("Organisations")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("form[action='/organisations']")).await.unwrap();
        for (id, value) in [("name", "Werkzeugbau Süd"), ("admin_name", "Bea Boss"), ("admin_email", "bea@werkzeug.example")] {
            browser.find(Locator::Id(id)).await.unwrap().send_keys(value).await.unwrap();
        }
        browser.find(Locator::Css("form[action='/organisations'] button[type=submit]")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::XPath("//div[@role='status'][contains(., 'bea@werkzeug.example was sent a link')]")).await.expect("the organisation is created");
        shot("9-organisation-created").await;
        browser.find(Locator::LinkText("Settings")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("dl#certificate")).await.expect("the certificate is shown");
        shot("10-settings").await;
        browser.close().await.unwrap();
    });
}
