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
