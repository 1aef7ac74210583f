//! Firmware in the portal and the API, against the real `plantgate-web` with curl: signed
//! bundles made with real keys (testkit's vendor) are verified on upload and listed; bundles
//! signed by an untrusted key, for another model, or cut short are refused with the reason
//! beside the file field (or as the API's error), store nothing and are audited; only
//! administrators get there; a rollout started from the portal is offered to the device.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appliance::Actor;
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::firmware::{Firmware, FirmwareId, Offer};
use appliance::models::{Organisation, Role, Site, User};
use common::{EMAIL, PASSWORD, Portal, Reply};
use testkit::vendor::{Vendor, firmware_spec, make_bundle, payload_file};

const MODEL: &str = "MX-100";

/// A portal whose updater settings trust one vendor's anchor, with its admin signed in.
struct Setup {
    portal: Portal,
    vendor: Vendor,
    work: tempfile::TempDir,
}

impl Setup {
    fn new(web_settings: &str) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let vendor = Vendor::new(1, "MX vendor");
        let anchors = vendor.write_anchor_set(&work.path().join("anchors.pgtrust"), 1);
        let updater_toml = work.path().join("updater.toml");
        // Slots and boot environment are the updater's business; the portal reads only the
        // product and the trust anchors, but the file is the one the image ships, whole.
        std::fs::write(
            &updater_toml,
            format!(
                "hardware = \"plantgate-vm-x86_64\"\nfactory_version = \"1.0.0\"\ntrust_anchors = {:?}\n\
                 [slots]\na = \"/dev/null-a\"\nb = \"/dev/null-b\"\n[boot]\ngrubenv = \"/nonexistent/grubenv\"\n",
                anchors.display().to_string()
            ),
        )
        .unwrap();
        let portal = Portal::start(&format!(
            "updater_config = {:?}\nlogins_per_minute = 1000\n{web_settings}",
            updater_toml.display().to_string()
        ));
        portal.setup_admin();
        assert_eq!(portal.login("admin", EMAIL, PASSWORD).status, 303);
        Setup {
            portal,
            vendor,
            work,
        }
    }

    /// A firmware bundle for `model`, signed by `vendor`.
    fn bundle(&self, vendor: &Vendor, name: &str, model: &str, version: &str) -> PathBuf {
        let payload = payload_file(self.work.path(), &format!("{name}.bin"), 300_000, 7);
        make_bundle(
            &firmware_spec(model, version, 1, &payload),
            &self.work.path().join(format!("{name}.pgb")),
            &[&vendor.signers[0]],
        )
    }

    fn firmware_dir(&self) -> PathBuf {
        self.portal.dir.path().join("data/firmware")
    }

    /// Every file in the firmware directory, hidden staging files included.
    fn stored_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.firmware_dir()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn rows(&self) -> Vec<Firmware> {
        Firmware::list(&mut self.portal.app.store.conn().unwrap()).unwrap()
    }

    /// Posts the upload form as a browser does (multipart, Origin set), as `jar`.
    fn post_form(&self, jar: &str, model: &str, bundle: &Path) -> Reply {
        let page = self.portal.get(Some(jar), "/firmware");
        let csrf = if page.status == 200 {
            self.portal.csrf_from(&page.body)
        } else {
            self.portal.csrf(jar)
        };
        let origin = format!("Origin: {}", self.portal.origin());
        let url = format!("{}/firmware", self.portal.origin());
        self.portal.curl(
            Some(jar),
            &[
                // No `Expect: 100-continue` (curl's habit above 1 MiB): one response to read.
                "-H",
                "Expect:",
                "-H",
                &origin,
                "-F",
                &format!("csrf={csrf}"),
                "-F",
                &format!("model={model}"),
                "-F",
                &format!("bundle=@{}", bundle.display()),
                &url,
            ],
        )
    }

    /// Uploads through the portal form and follows the progress page to its result.
    fn upload(&self, model: &str, bundle: &Path) -> Reply {
        let posted = self.post_form("admin", model, bundle);
        assert_eq!(posted.status, 303, "{}", posted.body);
        let job = posted.header("location").unwrap().to_owned();
        assert!(job.starts_with("/firmware/uploads/"), "{job}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let reply = self.portal.get(Some("admin"), &job);
            if !reply.body.contains("This page refreshes itself") {
                return reply;
            }
            assert!(
                reply.body.contains("http-equiv=\"refresh\""),
                "the progress page refreshes itself without JavaScript"
            );
            assert!(Instant::now() < deadline, "verification never finished");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `(actor, source, outcome, details)` of each audit record with `action`, in order.
    fn audited(&self, action: &str) -> Vec<(String, String, String, serde_json::Value)> {
        let mut found = Vec::new();
        let mut conn = self.portal.app.store.conn().unwrap();
        appliance::audit::export::for_each_record(&mut conn, &Default::default(), |r| {
            if r.action == action {
                found.push((
                    format!("{}:{}", r.actor_kind, r.actor_id),
                    r.source.clone(),
                    r.outcome.clone(),
                    serde_json::from_str(&r.details).unwrap(),
                ));
            }
            Ok(true)
        })
        .unwrap();
        found
    }

    fn admin_actor(&self) -> String {
        let admin = User::find_by_email(&mut self.portal.app.store.conn().unwrap(), EMAIL)
            .unwrap()
            .unwrap();
        format!("user:{}", admin.id.0)
    }
}

/// The text of the field error beside the bundle input.
fn bundle_error(body: &str) -> String {
    let at = body
        .find("id=\"bundle-error\"")
        .unwrap_or_else(|| panic!("no error beside the bundle field:\n{body}"));
    let rest = &body[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest.find("</p>").unwrap();
    rest[start..end].to_owned()
}

#[test]
fn a_signed_bundle_uploads_through_the_portal_is_verified_listed_and_audited() {
    let s = Setup::new("");
    let bundle = s.bundle(&s.vendor, "good", MODEL, "2.0.0");
    let result = s.upload(MODEL, &bundle);
    assert_eq!(result.status, 200, "{}", result.body);
    assert!(
        result
            .body
            .contains("Stored firmware 1: MX-100 version 2.0.0 (security version 1), 300000 bytes"),
        "{}",
        result.body
    );

    let page = s.portal.get(Some("admin"), "/firmware");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<td>MX-100</td><td>2.0.0</td><td>1</td>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("MX vendor anchor 0"), "signers listed");
    let rows = s.rows();
    assert_eq!(rows.len(), 1);
    assert!(page.body.contains(&rows[0].payload_sha256));
    // The stored file is the one verified, readable by the ingest's user (same group).
    assert_eq!(s.stored_files(), [rows[0].file_name.clone()]);
    let mode = std::fs::metadata(s.firmware_dir().join(&rows[0].file_name))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert_eq!(
        std::fs::read(s.firmware_dir().join(&rows[0].file_name)).unwrap(),
        std::fs::read(&bundle).unwrap()
    );

    let uploaded = s.audited("firmware.uploaded");
    assert_eq!(uploaded.len(), 1);
    let (actor, source, outcome, details) = &uploaded[0];
    assert_eq!(actor, &s.admin_actor());
    assert_eq!(source, "127.0.0.1");
    assert_eq!(outcome, "success");
    assert_eq!(details["version"], "2.0.0");

    // The page serves its upload script, allowed by this page's CSP only.
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    let js = s.portal.get(None, "/static/firmware-upload.js");
    assert_eq!(js.status, 200);
    assert!(js.body.contains("xhr.upload.addEventListener(\"progress\""));
}

#[test]
fn bad_bundles_are_refused_beside_the_field_store_nothing_and_are_audited() {
    let s = Setup::new("");
    let stranger = Vendor::new(1, "someone else");
    let untrusted = s.bundle(&stranger, "untrusted", MODEL, "2.0.0");
    let other_model = s.bundle(&s.vendor, "other", "MX-200", "2.0.0");
    let good = s.bundle(&s.vendor, "good", MODEL, "2.0.0");
    let bytes = std::fs::read(&good).unwrap();
    let truncated = s.work.path().join("truncated.pgb");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();

    for (bundle, code, says) in [
        (
            &untrusted,
            "bundle.untrusted_signer",
            "is not from a trusted key",
        ),
        (
            &other_model,
            "bundle.wrong_target",
            "it is for plantgate device:MX-200, this box needs plantgate device:MX-100",
        ),
        (&truncated, "bundle.truncated", "the file is truncated"),
    ] {
        let result = s.upload(MODEL, bundle);
        assert_eq!(result.status, 422, "{code}: {}", result.body);
        let shown = bundle_error(&result.body);
        assert!(
            shown.contains(code) && shown.contains(says),
            "{code}: {shown}"
        );
        assert!(
            s.stored_files().is_empty(),
            "{code} left {:?}",
            s.stored_files()
        );
        assert!(s.rows().is_empty(), "{code} stored a row");
    }
    let rejected = s.audited("firmware.rejected");
    let codes: Vec<&str> = rejected
        .iter()
        .map(|(_, _, _, d)| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "bundle.untrusted_signer",
            "bundle.wrong_target",
            "bundle.truncated"
        ]
    );
    for (actor, source, outcome, details) in &rejected {
        assert_eq!(actor, &s.admin_actor());
        assert_eq!(source, "127.0.0.1");
        assert_eq!(outcome, "denied");
        assert_eq!(details["model"], MODEL);
        assert!(!details["reason"].as_str().unwrap().is_empty());
    }
    assert!(s.audited("firmware.uploaded").is_empty());

    // A model that cannot be one is refused beside its field, before any file is kept.
    let reply = s.post_form("admin", "MX 100; rm", &good);
    assert_eq!(reply.status, 422);
    assert!(reply.body.contains("id=\"model-error\""), "{}", reply.body);
    assert!(s.stored_files().is_empty());
}

#[test]
fn the_api_uploads_lists_and_refuses_with_the_rejection_code() {
    let s = Setup::new("");
    let (token, _) = s.portal.token(&["firmware:read", "firmware:write"], 30, 0);
    let post = |path: &Path, model: &str, token: &str| {
        let reply = s.portal.curl(
            None,
            &[
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{}", path.display()),
                &format!("{}/api/v1/firmware?model={model}", s.portal.origin()),
            ],
        );
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
        (reply.status, json)
    };

    let good = s.bundle(&s.vendor, "good", MODEL, "2.1.0");
    let (status, stored) = post(&good, MODEL, &token);
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["model"], MODEL);
    assert_eq!(stored["version"], "2.1.0");
    assert_eq!(stored["size"], 300_000);
    let (status, list) = s.portal.api(Some(&token), "/api/v1/firmware");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["sha256"], stored["sha256"]);

    // The same version again is a downgrade; an untrusted signer is named; nothing is kept.
    let (status, error) = post(&good, MODEL, &token);
    assert_eq!(
        (status, error["error"].as_str()),
        (422, Some("bundle.downgrade")),
        "{error}"
    );
    let stranger = Vendor::new(1, "someone else");
    let untrusted = s.bundle(&stranger, "untrusted", MODEL, "3.0.0");
    let (status, error) = post(&untrusted, MODEL, &token);
    assert_eq!(status, 422);
    assert_eq!(error["error"], "bundle.untrusted_signer");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not from a trusted key")
    );
    let (status, error) = post(&good, "no%20such%20model!", &token);
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("request.invalid"))
    );
    assert_eq!(s.rows().len(), 1);
    assert_eq!(s.stored_files().len(), 1);
    let rejected = s.audited("firmware.rejected");
    assert_eq!(rejected.len(), 3);
    assert_eq!(rejected[1].3["code"], "bundle.untrusted_signer");
    assert_eq!(rejected[1].0, s.admin_actor());
    assert_eq!(rejected[1].1, "127.0.0.1");

    // Scopes: a read-only token cannot upload, and no token cannot list.
    let (read_only, _) = s.portal.token(&["firmware:read"], 30, 0);
    let (status, error) = post(&good, MODEL, &read_only);
    assert_eq!(
        (status, error["error"].as_str()),
        (403, Some("auth.missing_scope"))
    );
    assert_eq!(s.portal.api(None, "/api/v1/firmware").0, 401);
    let (doc_status, doc) = s.portal.api(None, "/api/v1/openapi.json");
    assert_eq!(doc_status, 200);
    assert!(doc["paths"]["/api/v1/firmware"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/firmware"]["get"].is_object());
}

#[test]
fn only_administrators_with_a_fresh_password_manage_firmware() {
    let s = Setup::new("reauthenticate_seconds = 5");
    let org = Organisation::list(&mut s.portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let actor = Actor::System("test".into());
    let tech = User::create(
        &s.portal.app.audit,
        &actor,
        org.id,
        "Tess",
        "tess@plant.example",
        Role::Technician,
        appliance::time::now_us(),
    )
    .unwrap();
    appliance::accounts::set_password(
        &s.portal.app.audit,
        &actor,
        &tech,
        PASSWORD,
        appliance::accounts::PasswordPolicy { min_chars: 12 },
        0,
    )
    .unwrap();
    assert_eq!(
        s.portal
            .login("tech", "tess@plant.example", PASSWORD)
            .status,
        303
    );
    let good = s.bundle(&s.vendor, "good", MODEL, "2.0.0");
    assert_eq!(s.portal.get(Some("tech"), "/firmware").status, 403);
    assert_eq!(s.post_form("tech", MODEL, &good).status, 403);
    assert!(s.stored_files().is_empty() && s.rows().is_empty());
    assert!(
        !s.portal
            .get(Some("tech"), "/devices")
            .body
            .contains("href=\"/firmware\"")
    );

    // An administrator whose password is older than web.reauthenticate_seconds confirms
    // first. A fresh sign-in (the setup above may take longer than the window) passes.
    assert_eq!(s.portal.login("admin", EMAIL, PASSWORD).status, 303);
    assert_eq!(s.portal.get(Some("admin"), "/firmware").status, 200);
    // Once the window has passed (however long the machine takes to notice), the page asks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.portal.get(Some("admin"), "/firmware").header("location")
        != Some("/account/confirm?next=firmware")
    {
        assert!(
            Instant::now() < deadline,
            "a stale password was never asked for again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let posted = s.post_form("admin", MODEL, &good);
    assert_eq!(
        posted.header("location"),
        Some("/account/confirm?next=firmware")
    );
    assert!(s.stored_files().is_empty() && s.rows().is_empty());
    let csrf = s.portal.csrf("admin");
    let confirmed = s.portal.post(
        Some("admin"),
        "/account/confirm",
        &[
            ("csrf", &csrf),
            ("next", "firmware"),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(confirmed.header("location"), Some("/firmware"));
    assert_eq!(s.upload(MODEL, &good).status, 200);
}

#[test]
fn a_rollout_started_in_the_portal_is_offered_to_the_device_and_can_be_paused() {
    let s = Setup::new("");
    let actor = Actor::System("test".into());
    let app = &s.portal.app;
    let own = Organisation::list(&mut app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let other =
        Organisation::create(&app.audit, &actor, "Other Plant", appliance::time::now_us()).unwrap();
    let mut devices = Vec::new();
    for (org, serial) in [(own.id, "MX-1"), (own.id, "MX-2"), (other.id, "MX-9")] {
        let site = Site::create(
            &app.audit,
            &actor,
            org,
            &format!("Hall {serial}"),
            "",
            appliance::time::now_us(),
        )
        .unwrap();
        let (device, _) = Device::register(
            &app.audit,
            &actor,
            &DeviceRequest {
                serial: serial.into(),
                kind: DeviceKind::Monitor,
                site: site.id,
                gateway: None,
                model: Some(MODEL.into()),
            },
            appliance::time::now_us(),
        )
        .unwrap();
        devices.push(device);
    }
    let good = s.bundle(&s.vendor, "good", MODEL, "2.0.0");
    assert_eq!(s.upload(MODEL, &good).status, 200);
    let offered = |device: &Device| {
        Offer::find(&mut app.store.conn().unwrap(), device, FirmwareId(1))
            .unwrap()
            .is_some()
    };

    let csrf = s.portal.csrf("admin");
    let create = |fields: &[(&str, &str)]| {
        let mut all = vec![("csrf", csrf.as_str()), ("firmware", "1")];
        all.extend_from_slice(fields);
        s.portal.post(Some("admin"), "/firmware/rollouts", &all)
    };
    // Another organisation's device is not the administrator's to reach.
    let refused = create(&[("serials", "MX-9"), ("failure_threshold_pct", "10")]);
    assert_eq!(refused.status, 422);
    assert!(
        refused
            .body
            .contains("MX-9 is not an active device of model MX-100"),
        "{}",
        refused.body
    );
    let refused = create(&[("percent", "many")]);
    assert_eq!(refused.status, 422);

    // 100 % of the organisation's devices: both of its own, never the other's.
    let made = create(&[("percent", "100"), ("failure_threshold_pct", "10")]);
    assert_eq!(made.status, 303, "{}", made.body);
    assert!(offered(&devices[0]) && offered(&devices[1]));
    assert!(!offered(&devices[2]));
    let page = s.portal.get(Some("admin"), "/firmware");
    assert!(page.body.contains("assigned 2"), "{}", page.body);
    assert!(page.body.contains("/firmware/rollouts/1/pause"));

    let pause = s.portal.post(
        Some("admin"),
        "/firmware/rollouts/1/pause",
        &[("csrf", &csrf)],
    );
    assert_eq!(pause.status, 303);
    assert!(!offered(&devices[0]), "a paused rollout offers nothing");
    let again = s.portal.post(
        Some("admin"),
        "/firmware/rollouts/1/pause",
        &[("csrf", &csrf)],
    );
    assert_eq!(again.status, 422, "pausing twice says why");
    let resume = s.portal.post(
        Some("admin"),
        "/firmware/rollouts/1/resume",
        &[("csrf", &csrf)],
    );
    assert_eq!(resume.status, 303);
    assert!(offered(&devices[0]));
    assert_eq!(
        s.portal
            .post(
                Some("admin"),
                "/firmware/rollouts/99/pause",
                &[("csrf", &csrf)]
            )
            .status,
        404
    );

    let created = s.audited("firmware.rollout.created");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].0, s.admin_actor());
    assert_eq!(created[0].1, "127.0.0.1");
    let mut reached: Vec<String> = created[0].3["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    reached.sort();
    assert_eq!(reached, ["MX-1", "MX-2"]);
    for action in ["firmware.rollout.paused", "firmware.rollout.resumed"] {
        let steps = s.audited(action);
        assert_eq!(steps.len(), 1, "{action}");
        assert_eq!(
            (steps[0].0.as_str(), steps[0].1.as_str()),
            (s.admin_actor().as_str(), "127.0.0.1")
        );
    }
}

#[test]
fn an_upload_over_the_limit_or_cut_off_is_refused_and_leaves_no_file() {
    // The smallest limit allowed (1 MiB), and a good bundle a little over it.
    let s = Setup::new("max_firmware_bytes = 1048576");
    let (token, _) = s.portal.token(&["firmware:read", "firmware:write"], 30, 0);
    let payload = payload_file(s.work.path(), "big.bin", 1_200_000, 7);
    let good = make_bundle(
        &firmware_spec(MODEL, "2.1.0", 1, &payload),
        &s.work.path().join("big.pgb"),
        &[&s.vendor.signers[0]],
    );
    let over_api = s.portal.curl(
        None,
        &[
            "-H",
            "Expect:",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", good.display()),
            &format!("{}/api/v1/firmware?model={MODEL}", s.portal.origin()),
        ],
    );
    assert_eq!(over_api.status, 413, "{}", over_api.body);
    let error: serde_json::Value = serde_json::from_str(&over_api.body).unwrap();
    assert_eq!(error["error"], "bundle.too_large");
    let over_form = s.post_form("admin", MODEL, &good);
    assert!(
        [413, 422].contains(&over_form.status),
        "an upload over the limit got {}: {}",
        over_form.status,
        over_form.body
    );
    assert!(s.rows().is_empty());
    assert!(
        s.stored_files().is_empty(),
        "files left behind: {:?}",
        s.stored_files()
    );

    // A client that promises more than it sends and hangs up: nothing stays either.
    let page = s.portal.get(Some("admin"), "/firmware");
    let csrf = s.portal.csrf_from(&page.body);
    let boundary = "plantgate-cut";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{MODEL}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"cut.pgb\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let cut = s.work.path().join("cut-body");
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(7u8, 20_000));
    std::fs::write(&cut, &body).unwrap();
    let cookie = std::fs::read_to_string(s.portal.jar("admin")).unwrap();
    let session = cookie
        .lines()
        .find(|l| l.contains("__Host-plantgate"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap()
        .to_owned();
    // curl sends the declared length's first part, then gives up after a second.
    let _ = s.portal.curl(
        None,
        &[
            "--max-time",
            "2",
            "-H",
            &format!("Origin: {}", s.portal.origin()),
            "-H",
            &format!("Cookie: __Host-plantgate={session}"),
            "-H",
            &format!("Content-Type: multipart/form-data; boundary={boundary}"),
            "-H",
            "Content-Length: 90000",
            "--data-binary",
            &format!("@{}", cut.display()),
            &format!("{}/firmware", s.portal.origin()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.stored_files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "a cut-off upload left {:?}",
            s.stored_files()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.rows().is_empty());
}
