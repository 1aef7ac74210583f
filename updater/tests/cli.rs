//! The vendor's and the box's commands end to end, through the real binary.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::fixtures::*;
use common::{Backend, stderr, stdout};

#[test]
fn vendor_signs_with_two_keys_and_the_box_verifies_installs_and_reports() {
    let vendor = Vendor::new(1, "unused");
    let tb = TestBox::new(Backend::Sqlite, &vendor, 1);
    let keys = tb.work.join("keys");
    let run = |args: &[&str]| {
        let out = tb.cli().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    };
    let k = keys.display().to_string();
    for holder in ["alice", "bob"] {
        run(&["key", "anchor", "--name", holder, "--out-dir", &k]);
        run(&[
            "key",
            "signing",
            "--anchor-cert",
            &format!("{k}/{holder}.anchor.pem"),
            "--anchor-key",
            &format!("{k}/{holder}.anchor.key"),
            "--name",
            &format!("{holder}-q1"),
            "--out-dir",
            &k,
        ]);
    }
    // The box ships the new 2-of-2 anchor set.
    let anchors =
        tb.t.dir
            .path()
            .join("anchors.pgtrust")
            .display()
            .to_string();
    run(&[
        "trust",
        "create",
        "--anchor",
        &format!("{k}/alice.anchor.pem"),
        "--anchor",
        &format!("{k}/bob.anchor.pem"),
        "--threshold",
        "2",
        "--version",
        "1",
        "--out",
        &anchors,
    ]);
    let payload = payload_file(&tb.work, "rootfs.img", 3 << 20, 2)
        .display()
        .to_string();
    let bundle = tb.work.join("release.pgb").display().to_string();
    run(&[
        "bundle",
        "create",
        "--version",
        "2.1.0",
        "--hardware",
        HARDWARE,
        "--security-version",
        "4",
        "--payload",
        &format!("rootfs={payload}"),
        "--out",
        &bundle,
    ]);
    let out = tb.cli().args(["verify", &bundle]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the bundle is unsigned"),
        "{}",
        stderr(&out)
    );
    run(&[
        "bundle",
        "sign",
        &bundle,
        "--cert",
        &format!("{k}/alice-q1.pem"),
        "--key",
        &format!("{k}/alice-q1.key"),
    ]);
    let out = tb.cli().args(["verify", &bundle]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only 1 of the 2 required"),
        "{}",
        stderr(&out)
    );
    // The same key again is refused, and the bundle keeps its one signature.
    let out = tb
        .cli()
        .args([
            "bundle",
            "sign",
            &bundle,
            "--cert",
            &format!("{k}/alice-q1.pem"),
            "--key",
            &format!("{k}/alice-q1.key"),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second signature by one key was accepted"
    );
    assert!(
        stderr(&out).contains("already signed by")
            && stderr(&out).contains("a second signature by the same key is refused"),
        "{}",
        stderr(&out)
    );
    assert!(run(&["bundle", "show", &bundle]).contains("signatures: 1"));
    run(&[
        "bundle",
        "sign",
        &bundle,
        "--cert",
        &format!("{k}/bob-q1.pem"),
        "--key",
        &format!("{k}/bob-q1.key"),
    ]);
    assert!(run(&["bundle", "show", &bundle]).contains("signatures: 2"));
    assert!(run(&["verify", &bundle]).contains("OK: plantgate appliance version 2.1.0"));
    assert!(run(&["install", &bundle]).contains("installed version 2.1.0 into slot B"));
    let status = run(&["status"]);
    assert!(status.contains("boot order: [B, A]"), "{status}");
    assert!(
        status.contains("trust: anchor set v1, 2 anchors, threshold 2"),
        "{status}"
    );

    tb.reboot();
    assert!(run(&["health"]).contains("slot B is healthy and marked good"));

    let out = tb
        .cli()
        .args([
            "bundle",
            "sign",
            &bundle,
            "--cert",
            &format!("{k}/bob-q1.pem"),
            "--key",
            "pkcs11:token=vendor",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PKCS#11 keys are not supported"),
        "{}",
        stderr(&out)
    );
}

/// A bundle piped on standard input (as `-` or `/dev/stdin`) is refused as such, with what
/// to do instead, never reported as a truncated bundle; nothing is written to a slot. The
/// same bundle saved to a file verifies.
#[test]
fn a_bundle_on_standard_input_is_refused_as_such() {
    use std::io::Write;
    use std::process::Stdio;
    use updater::slots::SlotId;

    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::new(Backend::Sqlite, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", 64 * 1024, 3);
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    let bytes = std::fs::read(&bundle).unwrap();
    for command in ["verify", "install"] {
        for arg in ["-", "/dev/stdin"] {
            let mut child = tb
                .cli()
                .args([command, arg])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let bytes = bytes.clone();
            // The command may stop before reading it all; a closed pipe is not a failure here.
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{command} {arg}: {err}");
            assert!(
                err.contains("standard input") && err.contains("save it to a file first"),
                "{command} {arg}: {err}"
            );
            assert!(!err.contains("truncated"), "{command} {arg}: {err}");
        }
    }
    assert_eq!(tb.slot_bytes(SlotId::B), SLOT_B_IMAGE, "slot B was written");
    let out = tb
        .cli()
        .args(["verify", &bundle.display().to_string()])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("OK: plantgate appliance version 2.0.0"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn health_exits_nonzero_and_names_the_failed_check() {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::new(Backend::Sqlite, &vendor, 1);
    let mut config = std::fs::read_to_string(&tb.updater_config).unwrap();
    config.push_str("[[health.command]]\nname = \"portal\"\nargv = [\"sh\", \"-c\", \"echo no answer on 443 >&2; exit 7\"]\n");
    std::fs::write(&tb.updater_config, config).unwrap();
    let out = tb.cli().arg("health").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("UNHEALTHY: portal:"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("no answer on 443"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn firmware_is_uploaded_verified_and_rolled_out_from_the_command_line() {
    use appliance::devices::{Device, DeviceKind, DeviceRequest};
    use appliance::models::{Organisation, Site};

    let vendor = Vendor::new(1, "firmware vendor");
    let tb = TestBox::new(Backend::Sqlite, &vendor, 1);
    let app = &tb.t.app;
    let org = Organisation::create(
        &app.audit,
        &common::test_actor(),
        "Plant",
        appliance::time::now_us(),
    )
    .unwrap();
    let site = Site::create(
        &app.audit,
        &common::test_actor(),
        org.id,
        "Hall",
        "",
        appliance::time::now_us(),
    )
    .unwrap();
    for serial in ["MX-1", "MX-2"] {
        Device::register(
            &app.audit,
            &common::test_actor(),
            &DeviceRequest {
                serial: serial.into(),
                kind: DeviceKind::Monitor,
                site: site.id,
                gateway: None,
                model: Some("MX-100".into()),
            },
            appliance::time::now_us(),
        )
        .unwrap();
    }
    let payload = payload_file(&tb.work, "fw.bin", 50_000, 7);
    let mut firmware = spec("2.0.0", 1, &payload);
    firmware.target = "device:MX-100".into();
    firmware.hardware = vec!["MX-100".into()];
    firmware.payloads = vec![("firmware".into(), payload.clone())];
    let good = make_bundle(&firmware, &tb.work.join("fw.pgb"), &[&vendor.signers[0]]);
    firmware.expires_at = now() - 60;
    firmware.created_at = now() - 10 * DAY;
    let expired = make_bundle(&firmware, &tb.work.join("old.pgb"), &[&vendor.signers[0]]);

    let out = tb
        .cli()
        .args(["firmware", "upload", "--model", "MX-100"])
        .arg(&expired)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    let run = |args: &[&str]| {
        let out = tb.cli().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let stored = run(&[
        "firmware",
        "upload",
        "--model",
        "MX-100",
        &good.display().to_string(),
    ]);
    assert!(
        stored.starts_with("stored firmware 1: MX-100 version 2.0.0"),
        "{stored}"
    );
    assert!(run(&["firmware", "list"]).contains("MX-100"));
    let id = run(&[
        "firmware",
        "rollout",
        "create",
        "--firmware",
        "1",
        "--serial",
        "MX-2",
        "--failure-threshold-pct",
        "10",
    ]);
    assert_eq!(id.trim(), "1");
    let list = run(&["firmware", "rollout", "list"]);
    assert!(
        list.contains("serials running threshold=10% devices=1"),
        "{list}"
    );
    assert!(list.contains("MX-2") && !list.contains("MX-1 "), "{list}");
    assert!(run(&["firmware", "rollout", "pause", "1"]).contains("paused"));
    assert!(run(&["firmware", "rollout", "resume", "1"]).contains("running"));
}
