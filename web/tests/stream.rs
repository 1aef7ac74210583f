//! Readings through the REST API with real curl: the CSV export and the live stream
//! (Server-Sent Events), each limited to the caller's own organisation.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use appliance::Actor;
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::models::{Organisation, Site};
use appliance::readings::{NewReading, insert_new};
use common::Portal;

/// The portal with one device in the caller's organisation (MM-1, in the returned site) and
/// one in another organisation (MM-9).
fn portal_with_devices() -> (Portal, Site, Device, Device) {
    let portal = Portal::start("");
    portal.setup_admin();
    let actor = Actor::System("test".into());
    let own = Organisation::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let other = Organisation::create(
        &portal.app.audit,
        &actor,
        "Other Plant",
        appliance::time::now_us(),
    )
    .unwrap();
    let mut made = Vec::new();
    for (org, serial) in [(own.id, "MM-1"), (other.id, "MM-9")] {
        let site = Site::create(
            &portal.app.audit,
            &actor,
            org,
            "Hall 3",
            "",
            appliance::time::now_us(),
        )
        .unwrap();
        let request = DeviceRequest {
            serial: serial.into(),
            kind: DeviceKind::Monitor,
            site: site.id,
            gateway: None,
            model: None,
        };
        let (device, _) = Device::register(
            &portal.app.audit,
            &actor,
            &request,
            appliance::time::now_us(),
        )
        .unwrap();
        made.push((site, device));
    }
    let (other_site, other_device) = made.pop().unwrap();
    let _ = other_site;
    let (site, device) = made.pop().unwrap();
    (portal, site, device, other_device)
}

fn store(portal: &Portal, device: &Device, seqs: std::ops::RangeInclusive<i64>) {
    let t0 = 1_795_334_400_000_000;
    let rows: Vec<NewReading> = seqs
        .map(|i| NewReading {
            device_id: device.id,
            seq: i,
            metric: "temperature_c".into(),
            value: 70.0 + i as f64,
            measured_at_us: t0 + i * 1_000_000,
            received_at_us: t0 + i * 1_000_000,
        })
        .collect();
    insert_new(&mut portal.app.store.conn().unwrap(), &rows).unwrap();
}

/// `curl -N` on the stream; its output lines arrive on the channel.
struct Stream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Stream {
    fn open(portal: &Portal, token: &str, query: &str, last_event_id: Option<i64>) -> Stream {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSkN", "--max-time", "120", "-H"])
            .arg(format!("Authorization: Bearer {token}"));
        if let Some(id) = last_event_id {
            cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = cmd
            .arg(format!(
                "{}/api/v1/readings/stream?{query}",
                portal.origin()
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Stream { child, lines }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the stream went quiet or ended")
    }

    /// Waits for the first line, which says the stream is open.
    fn wait_open(&self) {
        assert_eq!(self.next_line(), ": stream open");
    }

    /// The next `n` reading events' data, skipping comments and blank lines; checks each
    /// event's id is the reading's id.
    fn readings(&self, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut id = None;
        while out.len() < n {
            let line = self.next_line();
            if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.parse::<i64>().unwrap());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let data: serde_json::Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["id"].as_i64(), id, "{line}");
                out.push(data);
            } else if line.starts_with("event: ") {
                assert_eq!(line, "event: reading");
            }
        }
        out
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_sites_readings_stream_live_resume_after_last_event_id_and_stop_when_the_token_is_revoked() {
    let (portal, site, device, other) = portal_with_devices();
    store(&portal, &device, 1..=5); // before the stream opens: not sent
    let (token, token_id) = portal.token(&["readings:read"], 30, 0);

    let live = Stream::open(&portal, &token, &format!("site={}", site.id.0), None);
    live.wait_open();
    store(&portal, &other, 1..=3); // another organisation's device: never sent
    store(&portal, &device, 6..=8);
    let got = live.readings(3);
    let seqs: Vec<i64> = got.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [6, 7, 8]);
    assert!(got.iter().all(|r| r["device"] == "MM-1"));
    assert_eq!(got[0]["metric"], "temperature_c");
    assert_eq!(got[0]["value"], 76.0);
    assert_eq!(got[0]["measured_at"], "2026-11-22T08:00:06.000000Z");

    // A reconnect with Last-Event-ID gets what came after it, and then new readings.
    let resumed = Stream::open(
        &portal,
        &token,
        "device=MM-1&metric=temperature_c",
        got[0]["id"].as_i64(),
    );
    resumed.wait_open();
    let again: Vec<i64> = resumed
        .readings(2)
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(again, [7, 8]);
    store(&portal, &device, 9..=9);
    assert_eq!(resumed.readings(1)[0]["seq"], 9);
    assert_eq!(live.readings(1)[0]["seq"], 9);

    // Four streams per token: with two open, two more may open, a fifth is refused.
    let third = Stream::open(&portal, &token, "device=MM-1", None);
    let fourth = Stream::open(&portal, &token, "device=MM-1", None);
    third.wait_open();
    fourth.wait_open();
    let (status, body) = portal.api(Some(&token), "/api/v1/readings/stream?device=MM-1");
    assert_eq!(status, 429, "{body}");
    drop(third);
    // The slot frees once the service notices the client left (at its next write).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let fifth = loop {
        let stream = Stream::open(&portal, &token, "device=MM-1", None);
        if stream
            .lines
            .recv_timeout(Duration::from_secs(10))
            .as_deref()
            == Ok(": stream open")
        {
            break stream;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed stream kept its slot"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    drop((fourth, fifth));

    // Revoking the token ends the streams.
    appliance::tokens::revoke(
        &portal.app.audit,
        &Actor::System("test".into()),
        token_id,
        appliance::time::now_us(),
    )
    .unwrap();
    let end = loop {
        let line = live.next_line();
        if line.starts_with("event: end") {
            break live.next_line();
        }
    };
    assert!(end.contains("revoked"), "{end}");
}

#[test]
fn the_stream_and_the_export_refuse_other_organisations_bad_queries_and_missing_scopes() {
    let (portal, site, _, _) = portal_with_devices();
    let (token, _) = portal.token(&["readings:read"], 30, 0);
    let (no_scope, _) = portal.token(&["users:read"], 30, 0);
    for path in ["stream", "export"] {
        let url = |q: &str| format!("/api/v1/readings/{path}?{q}");
        let (status, body) = portal.api(Some(&token), &url("device=MM-9"));
        assert_eq!(status, 404, "{path}: another organisation's device: {body}");
        assert_eq!(portal.api(Some(&token), &url("device=NOPE")).0, 404);
        let (status, body) = portal.api(Some(&token), &url(&format!("site={}", site.id.0 + 1)));
        assert_eq!(status, 404, "{path}: another organisation's site: {body}");
        let (status, body) = portal.api(Some(&token), &url(""));
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "request.invalid");
        assert_eq!(portal.api(Some(&token), &url("site=x")).0, 400);
        assert_eq!(portal.api(Some(&no_scope), &url("device=MM-1")).0, 403);
        assert_eq!(portal.api(None, &url("device=MM-1")).0, 401);
    }
    let reply = portal.curl(
        None,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Last-Event-ID: yesterday",
            &format!("{}/api/v1/readings/stream?device=MM-1", portal.origin()),
        ],
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
}

#[test]
fn readings_export_as_csv_streamed_for_a_site_or_device_and_audited() {
    let (portal, site, device, other) = portal_with_devices();
    store(&portal, &device, 1..=12_000);
    store(&portal, &other, 1..=10);
    let (token, _) = portal.token(&["readings:read"], 30, 0);
    let reply = portal.curl(
        None,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!(
                "{}/api/v1/readings/export?site={}",
                portal.origin(),
                site.id.0
            ),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/csv")
    );
    // No cell here holds a comma or a quote, so a split reads it.
    let mut lines = reply.body.lines();
    assert_eq!(
        lines.next().unwrap(),
        "device,seq,metric,value,measured_at,measured_at_us,received_at_us"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 12_000, "every reading, no cap");
    assert!(rows.iter().all(|r| r[0] == "MM-1"));
    assert_eq!(
        rows[0][1..5],
        ["1", "temperature_c", "71", "2026-11-22T08:00:01.000000Z"]
    );

    // A window of one device as JSONL.
    let reply = portal.curl(
        None,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!(
                "{}/api/v1/readings/export?device=MM-1&format=jsonl&since=2026-11-22T08:01:40Z&until=2026-11-22T08:03:20Z",
                portal.origin()
            ),
        ],
    );
    assert_eq!(reply.status, 200);
    let lines: Vec<serde_json::Value> = reply
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[0]["seq"], 100);
    assert_eq!(
        portal
            .api(
                Some(&token),
                "/api/v1/readings/export?device=MM-1&format=xml"
            )
            .0,
        400
    );
    let exports = portal
        .actions()
        .into_iter()
        .filter(|a| a == "readings.exported")
        .count();
    assert_eq!(exports, 2);
}

#[test]
fn the_export_is_in_the_openapi_document() {
    let portal = Portal::start("");
    let (status, doc) = portal.api(None, "/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert!(
        doc["paths"]["/api/v1/readings/export"]["get"].is_object(),
        "{doc}"
    );
    assert!(doc["paths"]["/api/v1/readings"]["get"].is_object());
}
