//! Firmware for field devices, end to end: signed bundles verified on upload (and refused
//! with the reason, storing nothing), the real `plantgate-ingest` serving the signed header
//! and the payload to curl (whole and resumed with `-r`), status reports, and a rollout that
//! stops itself. On SQLite and PostgreSQL.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use appliance::devices::DeviceKind;
use appliance::firmware::{Firmware, FirmwareId, Rollout, RolloutRequest, RolloutState, Selection};
use common::{Backend, TestIngest, actor};
use diesel::prelude::*;
use testkit::on_both_backends;
use updater::bundle::{self, BundleSpec};
use updater::container::{Envelope, Kind};
use updater::firmware::upload;
use updater::manifest::Manifest;
use updater::pki::{self, FileSigner, KeyPair};
use updater::progress::NoProgress;
use updater::trust::{self, TrustSet, TrustStore};

const DAY: i64 = 86_400;
const MODEL: &str = "MX-100";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The vendor (one anchor, one short-lived signing key) and the appliance's trust store.
struct Vendor {
    signer: KeyPair,
    trust: TrustStore,
    anchors: TrustSet,
    work: PathBuf,
}

impl Vendor {
    fn new(t: &TestIngest) -> Vendor {
        let anchor = pki::new_anchor("vendor anchor", now() - 365 * DAY, now() + 20 * 365 * DAY)
            .expect("anchor");
        let signer =
            pki::issue_signing_cert(&anchor, "vendor signer", now() - 60 * DAY, now() + 60 * DAY)
                .expect("signing cert");
        let work = t.dir.path().join("vendor");
        std::fs::create_dir_all(&work).unwrap();
        let shipped = work.join("anchors.pgtrust");
        let set =
            trust::anchor_set_envelope(1, 1, now(), std::slice::from_ref(&anchor.cert)).unwrap();
        trust::write_anchor_set(&set, &shipped).unwrap();
        let (anchors, _) = TrustSet::from_body(&set.body).unwrap();
        Vendor {
            signer,
            trust: TrustStore {
                shipped,
                rotations: t.dir.path().join("data/updater/trust"),
            },
            anchors,
            work,
        }
    }

    /// A signed firmware bundle of `len` payload bytes.
    fn bundle(
        &self,
        name: &str,
        target: &str,
        version: &str,
        len: usize,
        expired: bool,
    ) -> PathBuf {
        let payload = self.work.join(format!("{name}.bin"));
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 9) as u8))
            .collect();
        std::fs::write(&payload, bytes).unwrap();
        let (created_at, expires_at) = if expired {
            (now() - 40 * DAY, now() - DAY)
        } else {
            (now() - 60, now() + 30 * DAY)
        };
        let spec = BundleSpec {
            product: "plantgate".into(),
            target: target.into(),
            version: version.parse().unwrap(),
            hardware: vec![MODEL.into()],
            min_installed_version: "1.0.0".parse().unwrap(),
            security_version: 3,
            created_at,
            expires_at,
            payloads: vec![("firmware".into(), payload)],
        };
        let out = self.work.join(format!("{name}.pgb"));
        bundle::create(&spec, &out, &NoProgress).unwrap();
        bundle::sign(&out, &FileSigner::from_pair(&self.signer)).unwrap();
        out
    }

    fn upload(&self, t: &TestIngest, path: &Path) -> Result<Firmware, updater::UpdaterError> {
        upload(
            &t.app,
            &self.trust,
            "plantgate",
            &actor(),
            path,
            MODEL,
            &NoProgress,
        )
    }
}

fn firmware_files(t: &TestIngest) -> Vec<String> {
    match std::fs::read_dir(t.dir.path().join("data/firmware")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// (action, outcome, details) of the audit records whose action starts with `prefix`.
fn audited(t: &TestIngest, prefix: &str) -> Vec<(String, String, serde_json::Value)> {
    use appliance::schema::audit_log::dsl::*;
    let rows: Vec<(String, String, String)> = audit_log
        .filter(action.like(format!("{prefix}%")))
        .order(seq)
        .select((action, outcome, details))
        .load(&mut *t.app.store.conn().unwrap())
        .unwrap();
    rows.into_iter()
        .map(|(a, o, d)| (a, o, serde_json::from_str(&d).unwrap()))
        .collect()
}

/// GET with curl; returns (status, body bytes).
fn get(t: &TestIngest, secret: &str, path: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "%{http_code}", "--cacert"])
        .arg(t.cert())
        .args(["-H", &format!("Authorization: Bearer {secret}")])
        .args(extra)
        .arg("-o")
        .arg(out.path())
        .arg(format!("https://127.0.0.1:{}{path}", t.https_port))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, std::fs::read(out.path()).unwrap())
}

fn report(t: &TestIngest, secret: &str, id: FirmwareId, status: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(t.cert())
        .args(["-H", &format!("Authorization: Bearer {secret}")])
        .args(["-H", "Content-Type: application/json"])
        .args([
            "--data",
            &format!(r#"{{"status":"{status}","detail":"{status} on the bench"}}"#),
        ])
        .arg(format!(
            "https://127.0.0.1:{}/v1/firmware/{}/status",
            t.https_port, id.0
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(bytes))
}

fn refused_uploads_store_nothing_and_are_audited_with_the_reason(backend: Backend) {
    let t = TestIngest::new(backend);
    let vendor = Vendor::new(&t);
    let target = format!("device:{MODEL}");

    let tampered = vendor.bundle("tampered", &target, "2.0.0", 4096, false);
    let mut bytes = std::fs::read(&tampered).unwrap();
    let field = b"\"security_version\": 3";
    let at = bytes.windows(field.len()).position(|w| w == field).unwrap();
    bytes[at + field.len() - 1] = b'9';
    std::fs::write(&tampered, bytes).unwrap();
    let other_model = vendor.bundle("other", "device:OTHER-7", "2.0.0", 4096, false);
    let expired = vendor.bundle("expired", &target, "2.0.0", 4096, true);

    for (path, code) in [
        (&tampered, "bundle.bad_signature"),
        (&other_model, "bundle.wrong_target"),
        (&expired, "bundle.expired"),
    ] {
        let err = vendor.upload(&t, path).expect_err("refused");
        assert_eq!(err.code(), code, "{err}");
    }
    assert!(firmware_files(&t).is_empty(), "{:?}", firmware_files(&t));
    assert!(
        Firmware::list(&mut t.app.store.conn().unwrap())
            .unwrap()
            .is_empty()
    );

    let rejected = audited(&t, "firmware.");
    let codes: Vec<&str> = rejected
        .iter()
        .map(|(action, outcome, details)| {
            assert_eq!(action, "firmware.rejected");
            assert_eq!(outcome, "denied");
            assert!(!details["reason"].as_str().unwrap().is_empty());
            details["code"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        codes,
        [
            "bundle.bad_signature",
            "bundle.wrong_target",
            "bundle.expired"
        ]
    );
    assert!(
        rejected[1].2["reason"]
            .as_str()
            .unwrap()
            .contains("device:OTHER-7")
    );

    // A good one is stored; the same version again is a downgrade, and refused.
    let good = vendor.bundle("good", &target, "2.0.0", 4096, false);
    vendor.upload(&t, &good).expect("stored");
    let err = vendor.upload(&t, &good).expect_err("same version again");
    assert_eq!(err.code(), "bundle.downgrade", "{err}");
    assert_eq!(firmware_files(&t).len(), 1);
}

fn a_device_in_the_rollout_fetches_the_signed_bundle_and_reports_its_progress(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let vendor = Vendor::new(&t);
    let in_rollout = t.register_model("MX-1", DeviceKind::Monitor, None, Some(MODEL));
    let left_out = t.register_model("MX-2", DeviceKind::Monitor, None, Some(MODEL));
    let other_model = t.register_model("OT-1", DeviceKind::Monitor, None, Some("OT-9"));
    let no_model = t.register("NM-1", DeviceKind::Monitor, None);
    let path = vendor.bundle("fw", &format!("device:{MODEL}"), "2.1.0", 700_001, false);
    let fw = vendor.upload(&t, &path).expect("upload");
    let rollout = Rollout::create(
        &t.app.audit,
        &actor(),
        &RolloutRequest {
            firmware: fw.id,
            selection: Selection::Serials(vec!["MX-1".into()]),
            failure_threshold_pct: 50,
            organisation: None,
        },
        appliance::time::now_us(),
    )
    .expect("rollout");
    t.start();
    let id = fw.id.0;

    let (status, list) = get(&t, &in_rollout.secret, "/v1/firmware", &[]);
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["firmware"][0]["id"], id);
    assert_eq!(list["firmware"][0]["version"], "2.1.0");

    // The manifest is the bundle's own signed header: the device verifies it against its
    // own anchors, trusting nothing from the appliance.
    let (status, header) = get(
        &t,
        &in_rollout.secret,
        &format!("/v1/firmware/{id}/manifest"),
        &[],
    );
    assert_eq!(status, 200);
    let original = std::fs::read(&path).unwrap();
    assert_eq!(header, original[..header.len()]);
    let envelope = Envelope::read(&mut header.as_slice(), Kind::Bundle).unwrap();
    let manifest = Manifest::parse(&envelope.body).unwrap();
    vendor
        .anchors
        .verify(
            &envelope.body,
            &envelope.signatures,
            manifest.created_at_unix().unwrap(),
        )
        .expect("the device verifies the vendor's signature");
    let expected = &manifest.payloads[0];

    let payload_url = format!("/v1/firmware/{id}/payload");
    let (status, whole) = get(&t, &in_rollout.secret, &payload_url, &[]);
    assert_eq!(status, 200);
    assert_eq!(whole.len() as u64, expected.size);
    assert_eq!(sha256_hex(&whole), expected.sha256);

    // Interrupted after 300,000 bytes, then resumed from there.
    let (status, first) = get(&t, &in_rollout.secret, &payload_url, &["-r", "0-299999"]);
    assert_eq!(status, 206);
    assert_eq!(first.len(), 300_000);
    let (status, rest) = get(&t, &in_rollout.secret, &payload_url, &["-r", "300000-"]);
    assert_eq!(status, 206);
    let reassembled = [first, rest].concat();
    assert_eq!(sha256_hex(&reassembled), expected.sha256);
    let (status, _) = get(&t, &in_rollout.secret, &payload_url, &["-r", "700001-"]);
    assert_eq!(status, 416);

    // Not in the rollout, another model, no model at all: nothing is offered.
    for device in [&left_out, &other_model, &no_model] {
        for url in [format!("/v1/firmware/{id}/manifest"), payload_url.clone()] {
            let (status, body) = get(&t, &device.secret, &url, &[]);
            assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
            assert!(String::from_utf8_lossy(&body).contains("firmware.not_offered"));
        }
        assert_eq!(report(&t, &device.secret, fw.id, "updated").0, 404);
    }
    assert_eq!(get(&t, "pgd_wrong", &payload_url, &[]).0, 401);

    for step in [
        "downloading",
        "downloaded",
        "verified",
        "installing",
        "updated",
    ] {
        let (status, body) = report(&t, &in_rollout.secret, fw.id, step);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = report(&t, &in_rollout.secret, fw.id, "exploded");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("firmware.bad_status"), "{body}");

    let summary = Rollout::list(&mut t.app.store.conn().unwrap()).unwrap();
    assert_eq!(
        summary[0].devices,
        [(
            "MX-1".into(),
            "updated".into(),
            "updated on the bench".into()
        )]
    );
    let device =
        appliance::devices::Device::find_by_serial(&mut t.app.store.conn().unwrap(), "MX-1")
            .unwrap()
            .unwrap();
    assert_eq!(device.firmware_version.as_deref(), Some("2.1.0"));
    let reports: Vec<String> = audited(&t, "firmware.device.status")
        .into_iter()
        .map(|(_, _, d)| d["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reports,
        [
            "downloading",
            "downloaded",
            "verified",
            "installing",
            "updated"
        ]
    );

    // Paused, the firmware is not offered; resumed, it is again.
    Rollout::set_paused(
        &t.app.audit,
        &actor(),
        rollout.id,
        true,
        appliance::time::now_us(),
    )
    .unwrap();
    assert_eq!(get(&t, &in_rollout.secret, &payload_url, &[]).0, 404);
    Rollout::set_paused(
        &t.app.audit,
        &actor(),
        rollout.id,
        false,
        appliance::time::now_us(),
    )
    .unwrap();
    assert_eq!(
        get(&t, &in_rollout.secret, &payload_url, &["-r", "0-9"]).0,
        206
    );
    let steps: Vec<String> = audited(&t, "firmware.rollout.")
        .into_iter()
        .map(|(a, _, _)| a)
        .collect();
    assert_eq!(
        steps,
        [
            "firmware.rollout.created",
            "firmware.rollout.paused",
            "firmware.rollout.resumed"
        ]
    );
}

fn a_rollout_stops_itself_when_failures_pass_the_threshold(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let vendor = Vendor::new(&t);
    let devices: Vec<_> = (1..=4)
        .map(|i| t.register_model(&format!("MX-{i}"), DeviceKind::Monitor, None, Some(MODEL)))
        .collect();
    let path = vendor.bundle("fw", &format!("device:{MODEL}"), "3.0.0", 10_000, false);
    let fw = vendor.upload(&t, &path).expect("upload");
    let rollout = Rollout::create(
        &t.app.audit,
        &actor(),
        &RolloutRequest {
            firmware: fw.id,
            selection: Selection::Percent(100),
            failure_threshold_pct: 25,
            organisation: None,
        },
        appliance::time::now_us(),
    )
    .expect("rollout");
    t.start();
    let manifest_url = format!("/v1/firmware/{}/manifest", fw.id.0);
    for device in &devices {
        assert_eq!(get(&t, &device.secret, &manifest_url, &[]).0, 200);
    }

    // One failure of four is 25%: not past the threshold.
    let (status, body) = report(&t, &devices[0].secret, fw.id, "failed");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""rollout_state":"running""#), "{body}");
    assert_eq!(get(&t, &devices[2].secret, &manifest_url, &[]).0, 200);

    // The second is 50%: the rollout stops, and no device is offered anything more.
    let (status, body) = report(&t, &devices[1].secret, fw.id, "failed");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""rollout_state":"stopped""#), "{body}");
    let stopped = Rollout::find(&mut t.app.store.conn().unwrap(), rollout.id)
        .unwrap()
        .unwrap();
    assert_eq!(stopped.state(), RolloutState::Stopped);
    assert!(
        stopped
            .stop_reason
            .unwrap()
            .contains("2 of 4 devices failed")
    );
    for device in &devices[2..] {
        assert_eq!(get(&t, &device.secret, &manifest_url, &[]).0, 404);
        let (_, list) = get(&t, &device.secret, "/v1/firmware", &[]);
        assert_eq!(String::from_utf8_lossy(&list), r#"{"firmware":[]}"#);
    }
    let stops = audited(&t, "firmware.rollout.stopped");
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].1, "failure");
    assert_eq!(stops[0].2["failed"], 2);
    // A stopped rollout is not resumed by accident.
    assert!(
        Rollout::set_paused(
            &t.app.audit,
            &actor(),
            rollout.id,
            false,
            appliance::time::now_us()
        )
        .is_err()
    );
}

on_both_backends!(
    refused_uploads_store_nothing_and_are_audited_with_the_reason,
    a_device_in_the_rollout_fetches_the_signed_bundle_and_reports_its_progress,
    a_rollout_stops_itself_when_failures_pass_the_threshold,
);
