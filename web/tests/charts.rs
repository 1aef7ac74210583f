//! A device's chart, from a known series: two stretches of readings with a gap between
//! them, two readings in each bucket, a threshold rule and an alert raised and cleared in
//! the range. Real Chromium renders the chart page from the real `plantgate-web` (the
//! screenshot goes to `test-output/browser/`), and the SVG it got is checked point by point
//! against the readings: one line per stretch, each point at its bucket's middle and mean,
//! the band at its minimum and maximum, the threshold and the two alert markers where they
//! happened. The CSV of the shown range holds exactly its readings.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use common::*;

use std::path::PathBuf;
use std::time::Duration;

use appliance::access::short_time;
use appliance::alerts::{self, AlertChange, AlertKind, AlertRule, Measure, RuleRequest, RuleScope};
use appliance::devices::{Device, DeviceKind};
use appliance::models::{Organisation, Site};
use appliance::readings::{self, NewReading};
use appliance::time::{format_us, now_us};
use testkit::store::register_device;

const MINUTE: i64 = 60_000_000;

fn attribute(tag: &str, name: &str) -> String {
    let start = tag
        .find(&format!(" {name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + name.len()
        + 3;
    tag[start..].split('"').next().unwrap().to_owned()
}

/// Every opening tag `<{name} class="{class}"...>` in `svg`.
fn tags<'a>(svg: &'a str, name: &str, class: &str) -> Vec<&'a str> {
    let opening = format!("<{name} class=\"{class}\"");
    svg.match_indices(&opening)
        .map(|(i, _)| &svg[i..i + svg[i..].find('>').unwrap()])
        .collect()
}

fn points(tag: &str) -> Vec<(f64, f64)> {
    attribute(tag, "points")
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

#[test]
fn a_chart_draws_the_readings_gaps_threshold_and_alerts_as_they_are() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "\n*** {tool} is missing: scripts/deps test installs chromium and chromium-driver\n"
        );
    }
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    let app = &portal.app;
    let actor = appliance::Actor::System("test".into());
    let org = Organisation::list(&mut app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let hall = Site::create(&app.audit, &actor, org.id, "Hall 3", "", now_us()).unwrap();
    let device = register_device(app, hall.id, "MM-0042", DeviceKind::Monitor);
    let rule = AlertRule::create(
        &app.audit,
        &actor,
        org.id,
        &RuleRequest {
            scope: RuleScope::Device(device.id),
            name: "Mold too hot".into(),
            kind: AlertKind::Above,
            metric: "mold_c".into(),
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

    // Eight hours from a whole minute a day ago: 480 buckets of exactly one minute. Readings
    // in minutes 0-99 and 200-299, two in each: at +10 s (v) and +40 s (v + 4).
    let from = (now_us() - 24 * 60 * MINUTE) / MINUTE * MINUTE;
    let to = from + 480 * MINUTE;
    let value = |minute: i64| 50.0 + (minute % 10) as f64;
    let mut rows = Vec::new();
    for minute in (0..100).chain(200..300) {
        for (offset, extra) in [(10_000_000, 0.0), (40_000_000, 4.0)] {
            rows.push(NewReading {
                device_id: device.id,
                seq: rows.len() as i64 + 1,
                metric: "mold_c".into(),
                value: value(minute) + extra,
                measured_at_us: from + minute * MINUTE + offset,
                received_at_us: from + minute * MINUTE + offset,
            });
        }
    }
    // And one outside the range on each side, which the chart must leave out.
    for (seq, at) in [(10_001, from - MINUTE), (10_002, to)] {
        rows.push(NewReading {
            device_id: device.id,
            seq,
            metric: "mold_c".into(),
            value: 500.0,
            measured_at_us: at,
            received_at_us: at,
        });
    }
    readings::insert_new(&mut app.store.conn().unwrap(), &rows).unwrap();
    let (raised_at, cleared_at) = (from + 250 * MINUTE, from + 280 * MINUTE);
    let change = |raise: bool, value: f64| {
        let (rule, device, value) = (rule.id, device.id, Some(value));
        if raise {
            AlertChange::Raise {
                rule,
                device,
                value,
            }
        } else {
            AlertChange::Clear {
                rule,
                device,
                value,
            }
        }
    };
    alerts::apply(&app.audit, &actor, &[change(true, 91.0)], raised_at).unwrap();
    alerts::apply(&app.audit, &actor, &[change(false, 70.0)], cleared_at).unwrap();

    let path = format!(
        "/devices/{}/chart?metric=mold_c&range=custom&from={}&to={}",
        device.id.0,
        format_us(from).replace(':', "%3A"),
        format_us(to).replace(':', "%3A")
    );
    let driver = ChromeDriver::start();
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/browser");
    std::fs::create_dir_all(&shots).unwrap();
    let origin = portal.origin();
    let profile = portal.dir.path().join("chart-profile");
    let source = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        use fantoccini::{ClientBuilder, Locator};
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--ignore-certificate-errors", "--window-size=1200,900", format!("--user-data-dir={}", profile.display())],
        }));
        caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
        let browser = ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{}", driver.port)).await.expect("a WebDriver session");
        browser.goto(&format!("{origin}/login")).await.unwrap();
        browser.find(Locator::Css("input[name=email]")).await.unwrap().send_keys(EMAIL).await.unwrap();
        browser.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
        browser.find(Locator::Css("main button[type=submit]")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("main h1.welcome")).await.unwrap();
        // From the device page, as a person gets there.
        browser.goto(&format!("{origin}/devices/{}", device.id.0)).await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::LinkText("mold_c")).await.unwrap();
        browser.goto(&format!("{origin}{path}")).await.unwrap();
        let chart = browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("svg.chart")).await.unwrap();
        // Chromium laid the SVG out: it has a size on the page.
        let (_, _, width, height) = chart.rectangle().await.unwrap();
        assert!(width > 500.0 && height > 150.0, "the chart is {width}x{height}");
        std::fs::write(shots.join("chart-mold-with-gap-and-alert.png"), browser.screenshot().await.unwrap()).unwrap();
        let source = browser.source().await.unwrap();
        browser.close().await.unwrap();
        source
    });

    let svg = &source[source.find("<svg class=\"chart\"").expect("an SVG chart")..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    let root = &svg[..svg.find('>').unwrap()];
    let number = |name: &str| attribute(root, name).parse::<f64>().unwrap();
    assert_eq!(
        (number("data-from-us") as i64, number("data-to-us") as i64),
        (from, to)
    );
    let (low, high, left, top) = (
        number("data-low"),
        number("data-high"),
        number("data-left"),
        number("data-top"),
    );
    let (width, height) = (number("data-plot-width"), number("data-plot-height"));
    let x = |at: i64| left + (at - from) as f64 / (to - from) as f64 * width;
    let y = |v: f64| top + (high - v) / (high - low) * height;
    let near = |got: (f64, f64), want: (f64, f64)| {
        (got.0 - want.0).abs() <= 0.06 && (got.1 - want.1).abs() <= 0.06
    };
    // The axis holds the readings and the threshold, and not the two outside the range.
    assert!(low < 50.0 && high > 91.0 && high < 100.0, "{low}..{high}");

    // One line per stretch: the gap breaks it.
    let lines = tags(svg, "polyline", "series");
    assert_eq!(lines.len(), 2, "{svg}");
    for (line, first_minute) in lines.iter().zip([0, 200]) {
        let points = points(line);
        assert_eq!(points.len(), 100);
        for (i, point) in points.iter().enumerate() {
            let minute = first_minute + i as i64;
            let middle = from + minute * MINUTE + MINUTE / 2;
            assert!(
                near(*point, (x(middle), y(value(minute) + 2.0))),
                "minute {minute}: {point:?}"
            );
        }
    }
    // The band spans each bucket's minimum and maximum.
    let bands = tags(svg, "polygon", "band");
    assert_eq!(bands.len(), 2);
    let band = points(bands[0]);
    assert!(
        near(band[0], (x(from + MINUTE / 2), y(value(0) + 4.0))),
        "{:?}",
        band[0]
    );
    assert!(
        near(*band.last().unwrap(), (x(from + MINUTE / 2), y(value(0)))),
        "{:?}",
        band.last()
    );

    // The rule's threshold, and the alert where it was raised and where it cleared.
    let thresholds = tags(svg, "g", "threshold");
    assert_eq!(thresholds.len(), 1);
    assert_eq!(attribute(thresholds[0], "data-value"), "80");
    let raised = tags(svg, "g", "alert-raised");
    let cleared = tags(svg, "g", "alert-cleared");
    assert_eq!((raised.len(), cleared.len()), (1, 1), "{svg}");
    assert_eq!(
        (
            attribute(raised[0], "data-at-us").parse::<i64>().unwrap(),
            attribute(raised[0], "data-value")
        ),
        (raised_at, "91".into())
    );
    assert_eq!(
        (
            attribute(cleared[0], "data-at-us").parse::<i64>().unwrap(),
            attribute(cleared[0], "data-value")
        ),
        (cleared_at, "70".into())
    );
    assert!(
        svg.contains("<title>Mold too hot raised"),
        "a marker says what it is"
    );

    // The CSV of the shown range: its 400 readings, not the two outside it.
    portal.login("admin", EMAIL, PASSWORD);
    let csv_link = source[source
        .find("id=\"chart-csv\"")
        .map(|i| source[..i].rfind("href=\"").unwrap() + 6)
        .unwrap()..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let csv = portal.get(Some("admin"), &csv_link);
    assert_eq!(csv.status, 200, "{csv_link}: {}", csv.body);
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines.len(), 1 + 400, "{csv_link}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with("MM-0042,") && !l.contains(",500,"))
    );
    assert!(portal.actions().iter().any(|a| a == "readings.exported"));

    // A metric that is not one is a clear refusal; another organisation's device is not found.
    assert_eq!(
        portal
            .get(
                Some("admin"),
                &format!("/devices/{}/chart?metric=Not%20One", device.id.0)
            )
            .status,
        400
    );
    let elsewhere = Organisation::create(&app.audit, &actor, "Elsewhere", now_us()).unwrap();
    let their_site =
        Site::create(&app.audit, &actor, elsewhere.id, "Their hall", "", now_us()).unwrap();
    let their_device = register_device(app, their_site.id, "THEIRS", DeviceKind::Monitor);
    assert_eq!(
        portal
            .get(
                Some("admin"),
                &format!("/devices/{}/chart?metric=mold_c", their_device.id.0)
            )
            .status,
        404
    );
}

/// A mold's dashboard and its site's devices side by side, from readings whose figures are
/// known: cycles in all and in the last day, the last and the week's mean cycle time, the
/// temperature now; three charts; on the site's chart one line per device, each named.
#[test]
fn a_molds_dashboard_and_its_sites_devices_side_by_side_show_what_was_measured() {
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    let app = &portal.app;
    let actor = appliance::Actor::System("test".into());
    let org = Organisation::list(&mut app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let hall = Site::create(&app.audit, &actor, org.id, "Hall 3", "", now_us()).unwrap();
    let register = |serial: &str| register_device(app, hall.id, serial, DeviceKind::Monitor);
    let (mold, other) = (register("MOLD-7"), register("MOLD-8"));
    let now = now_us();
    let hour = 60 * MINUTE;
    let mut rows = Vec::new();
    let mut add = |device: &Device, metric: &str, at: i64, value: f64| {
        rows.push(NewReading {
            device_id: device.id,
            seq: rows.len() as i64 + 1,
            metric: metric.into(),
            value,
            measured_at_us: at,
            received_at_us: at,
        });
    };
    // A cycle every hour for three days: 72 cycles, the last 24 of them in the last day;
    // cycle times 20,000 ms for the first two days and 22,000 ms in the last; the mold at
    // 60 °C, 61 °C for the last reading.
    for h in 0..72 {
        let at = now - (71 - h) * hour - MINUTE;
        add(&mold, "cycle_count", at, (h + 1) as f64);
        add(
            &mold,
            "cycle_time_ms",
            at,
            if h < 48 { 20_000.0 } else { 22_000.0 },
        );
        add(
            &mold,
            "temperature_c",
            at,
            if h == 71 { 61.0 } else { 60.0 },
        );
        add(&other, "temperature_c", at, 45.0);
    }
    readings::insert_new(&mut app.store.conn().unwrap(), &rows).unwrap();

    portal.login("admin", EMAIL, PASSWORD);
    let page = portal.get(Some("admin"), &format!("/devices/{}/dashboard", mold.id.0));
    assert_eq!(page.status, 200, "{}", page.body);
    let figure = |id: &str| {
        let start = page
            .body
            .find(&format!("id=\"figure-{id}\">"))
            .unwrap_or_else(|| panic!("no figure {id}"))
            + id.len()
            + 13;
        page.body[start..].split('<').next().unwrap().to_owned()
    };
    assert_eq!(figure("cycles"), "72");
    assert_eq!(figure("cycles-today"), "24");
    assert_eq!(figure("cycle-time"), "22000 ms");
    // 72 readings in the week: 48 of 20,000 and 24 of 22,000.
    // (48 × 20,000 + 24 × 22,000) / 72 = 20,666.67, shown to a tenth.
    assert_eq!(figure("cycle-time-week"), "20666.7 ms");
    assert_eq!(figure("temperature"), "61 °C");
    assert_eq!(figure("active-alerts"), "0");
    assert_eq!(page.body.matches("<svg class=\"chart\"").count(), 3);
    assert!(
        !page.body.contains("No readings in this range"),
        "every panel has data"
    );

    // The site's temperatures side by side: a line per device, named, in the legend too.
    let site_chart = portal.get(
        Some("admin"),
        &format!("/sites/{}/chart?metric=temperature_c&range=week", hall.id.0),
    );
    assert_eq!(site_chart.status, 200, "{}", site_chart.body);
    for (series, serial) in [(0, "MOLD-7"), (1, "MOLD-8")] {
        assert!(
            site_chart.body.contains(&format!(
                "<polyline class=\"series\" data-series=\"{series}\""
            )),
            "series {series}"
        );
        assert!(
            site_chart
                .body
                .contains(&format!("<title>{serial}</title>")),
            "{serial} named"
        );
        assert!(
            site_chart.body.contains(&format!(
                "<span class=\"swatch\" data-series=\"{series}\"></span>{serial}"
            )),
            "{serial} in the legend"
        );
    }
    assert!(
        site_chart.body.contains("144 readings"),
        "both devices' 72 each"
    );
    let site_page = portal.get(Some("admin"), &format!("/sites/{}", hall.id.0));
    assert!(
        site_page
            .body
            .contains(&format!("/sites/{}/chart?metric=temperature_c", hall.id.0))
    );
    let csv = portal.get(
        Some("admin"),
        &format!(
            "/sites/{}/chart.csv?metric=temperature_c&range=week",
            hall.id.0
        ),
    );
    assert_eq!((csv.status, csv.body.lines().count()), (200, 1 + 144));

    // Real Chromium lays both out.
    let driver = ChromeDriver::start();
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../test-output/browser");
    std::fs::create_dir_all(&shots).unwrap();
    let (origin, profile) = (portal.origin(), portal.dir.path().join("dashboard-profile"));
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        use fantoccini::{ClientBuilder, Locator};
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--ignore-certificate-errors", "--window-size=1200,1600", format!("--user-data-dir={}", profile.display())],
        }));
        caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
        let browser = ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{}", driver.port)).await.expect("a WebDriver session");
        browser.goto(&format!("{origin}/login")).await.unwrap();
        browser.find(Locator::Css("input[name=email]")).await.unwrap().send_keys(EMAIL).await.unwrap();
        browser.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
        browser.find(Locator::Css("main button[type=submit]")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("main h1.welcome")).await.unwrap();
        browser.goto(&format!("{origin}/devices/{}", mold.id.0)).await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#dashboard-link")).await.unwrap().click().await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#figure-cycles")).await.unwrap();
        for chart in browser.find_all(Locator::Css("svg.chart")).await.unwrap() {
            let (_, _, width, height) = chart.rectangle().await.unwrap();
            assert!(width > 500.0 && height > 150.0, "a chart is {width}x{height}");
        }
        std::fs::write(shots.join("mold-dashboard.png"), browser.screenshot().await.unwrap()).unwrap();
        browser.goto(&format!("{origin}/sites/{}/chart?metric=temperature_c&range=week", hall.id.0)).await.unwrap();
        browser.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("svg.chart")).await.unwrap();
        std::fs::write(shots.join("site-side-by-side.png"), browser.screenshot().await.unwrap()).unwrap();
        browser.close().await.unwrap();
    });
}

/// A year's chart is summed from the hourly rollups and says so; it still draws every
/// reading after the raw readings were pruned, while the CSV holds only what is kept.
#[test]
fn a_years_chart_is_summed_from_rollups_and_outlives_the_raw_readings() {
    let portal = Portal::start("logins_per_minute = 100");
    portal.setup_admin();
    let app = &portal.app;
    let actor = appliance::Actor::System("test".into());
    let org = Organisation::list(&mut app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let hall = Site::create(&app.audit, &actor, org.id, "Hall 4", "", now_us()).unwrap();
    let logger = register_device(app, hall.id, "LOGGER-1", DeviceKind::DataLogger);
    // Four readings a day for 360 days.
    let now = now_us();
    let rows: Vec<NewReading> = (0..360 * 4)
        .map(|i| NewReading {
            device_id: logger.id,
            seq: i + 1,
            metric: "temperature_c".into(),
            value: 10.0 + (i % 40) as f64 / 4.0,
            measured_at_us: now - (360 * 4 - i) * 6 * 60 * MINUTE,
            received_at_us: now - 1000 + i,
        })
        .collect();
    // A mold monitor counting cycles for 300 days: its dashboard's life chart.
    let mold = register_device(app, hall.id, "MOLD-1", DeviceKind::Monitor);
    let born = (now - 300 * 24 * 60 * MINUTE).div_euclid(60 * MINUTE) * 60 * MINUTE + 7 * MINUTE;
    let cycles: Vec<NewReading> = (0..300)
        .map(|i| NewReading {
            device_id: mold.id,
            seq: i + 1,
            metric: "cycle_count".into(),
            value: (i * 1000) as f64,
            measured_at_us: born + i * 24 * 60 * MINUTE,
            received_at_us: now - 1000 + i,
        })
        .collect();
    let mut conn = app.store.conn().unwrap();
    readings::insert_new(&mut conn, &cycles).unwrap();
    readings::insert_new(&mut conn, &rows).unwrap();
    // What the ingest does each second, then what retention does: all but the newest go.
    appliance::rollups::catch_up(&mut conn).unwrap();
    while appliance::retention::prune_by_age(&app.audit, &actor, 1, now + 2 * 24 * 60 * MINUTE)
        .unwrap()
        > 0
    {}
    assert_eq!(readings::count_for(&mut conn, logger.id).unwrap(), 1);
    assert_eq!(readings::count_for(&mut conn, mold.id).unwrap(), 0);
    drop(conn);

    portal.login("admin", EMAIL, PASSWORD);
    // The mold's life still starts at its first cycle's hour, which only the rollups keep.
    let dashboard = portal.get(Some("admin"), &format!("/devices/{}/dashboard", mold.id.0));
    assert_eq!(dashboard.status, 200, "{}", dashboard.body);
    let first_hour = short_time(born - 7 * MINUTE);
    assert!(
        dashboard
            .body
            .contains(&format!("Cycle count over its life, since {first_hour}")),
        "{}",
        dashboard.body
    );
    let chart = |range: &str| {
        let path = format!(
            "/devices/{}/chart?metric=temperature_c&range={range}",
            logger.id.0
        );
        let page = portal.get(Some("admin"), &path);
        assert_eq!(page.status, 200, "{}", page.body);
        page.body
    };
    let year = chart("year");
    assert!(year.contains("1440 readings from"), "every reading counted");
    assert!(year.contains("Summed from the hourly rollups"));
    let svg = &year[year.find("<svg class=\"chart\"").expect("an SVG chart")..];
    let line: usize = tags(svg, "polyline", "series")
        .iter()
        .map(|l| points(l).len())
        .sum();
    // 360 days in 480 buckets of 18.25 hours: each holds three or four readings, so every
    // bucket from the first reading on has a point.
    assert!(line >= 470, "{line} points");

    // A week is drawn from what is kept of the readings themselves: the newest one.
    let week = chart("week");
    assert!(week.contains("1 readings from"), "the newest kept");
    assert!(!week.contains("Summed from"));

    let csv = portal.get(
        Some("admin"),
        &format!(
            "/devices/{}/chart.csv?metric=temperature_c&range=year",
            logger.id.0
        ),
    );
    assert_eq!(csv.status, 200);
    assert_eq!(
        csv.body.lines().count(),
        2,
        "the header and the one kept reading"
    );
}
