//! Every attack from the TUF/Uptane list that applies to a box installing its own update.
//! Each bundle is refused with a clear reason, the refusal is audited, and the inactive
//! slot is byte-for-byte what it was: nothing was written.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::Backend;
use common::fixtures::*;
use testkit::on_both_backends;
use updater::slots::SlotId;

const PAYLOAD_LEN: usize = 256 * 1024;

/// Installs `bundle` on a box and checks that it is refused with `code` and a message
/// containing `says`, that slot B is untouched, and that the refusal is in the audit log.
fn assert_refused(tb: &TestBox, bundle: &Path, code: &str, says: &str) {
    let before_a = tb.slot_bytes(SlotId::A);
    let before_env = std::fs::read(&tb.env_file).ok();
    let err = tb.install(bundle).expect_err("the bundle must be refused");
    assert_eq!(err.code(), code, "{err}");
    let message = err.to_string();
    assert!(message.contains(says), "{message:?} should say {says:?}");
    assert_eq!(tb.slot_bytes(SlotId::B), SLOT_B_IMAGE, "slot B was written");
    assert_eq!(tb.slot_bytes(SlotId::A), before_a, "slot A was written");
    assert_eq!(
        std::fs::read(&tb.env_file).ok(),
        before_env,
        "the boot environment changed"
    );
    let (action, outcome, details) = tb.audit_trail().pop().expect("an audit record");
    assert_eq!(action, "updater.bundle.rejected");
    assert_eq!(outcome, "denied");
    assert_eq!(details["code"], code);
    assert!(details["reason"].as_str().unwrap().contains(says));
    assert!(
        !tb.actions()
            .iter()
            .any(|a| a.starts_with("updater.install"))
    );
}

fn setup(backend: Backend, anchors: usize, threshold: usize) -> (Vendor, TestBox, PathBuf) {
    let vendor = Vendor::new(anchors, "vendor");
    let tb = TestBox::new(backend, &vendor, threshold);
    let payload = payload_file(&tb.work, "rootfs.img", PAYLOAD_LEN, 7);
    (vendor, tb, payload)
}

fn unsigned_bundle_is_refused(backend: Backend) {
    let (_, tb, payload) = setup(backend, 1, 1);
    let bundle = make_bundle(&spec("2.0.0", 2, &payload), &tb.work.join("b.pgb"), &[]);
    assert_refused(&tb, &bundle, "bundle.unsigned", "unsigned");
}

fn tampered_manifest_fails_its_signature(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    // Raise the security version in the signed manifest, keeping its length.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let field = b"\"security_version\": 2";
    let at = bytes
        .windows(field.len())
        .position(|w| w == field)
        .expect("field in manifest");
    bytes[at + field.len() - 1] = b'9';
    std::fs::write(&bundle, bytes).unwrap();
    assert_refused(&tb, &bundle, "bundle.bad_signature", "tampered");
}

fn bundle_signed_by_an_unknown_key_is_refused(backend: Backend) {
    let (_, tb, payload) = setup(backend, 1, 1);
    let stranger = Vendor::new(1, "stranger");
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&stranger.signers[0]],
    );
    assert_refused(
        &tb,
        &bundle,
        "bundle.untrusted_signer",
        "not from a trusted key",
    );
}

fn one_signature_of_two_required_is_refused(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 2, 2);
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    assert_refused(
        &tb,
        &bundle,
        "bundle.below_threshold",
        "only 1 of the 2 required",
    );
}

fn two_keys_from_one_stolen_anchor_count_once(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 2, 2);
    // Whoever holds anchor 0's key can mint signing certificates at will.
    let minted =
        updater::pki::issue_signing_cert(&vendor.anchors[0], "minted", now() - DAY, now() + DAY)
            .unwrap();
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0], &minted],
    );
    assert_refused(
        &tb,
        &bundle,
        "bundle.below_threshold",
        "only 1 of the 2 required",
    );
}

fn expired_manifest_is_refused(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let mut old = spec("2.0.0", 2, &payload);
    old.created_at = now() - 20 * DAY;
    old.expires_at = now() - DAY;
    let bundle = make_bundle(&old, &tb.work.join("b.pgb"), &[&vendor.signers[0]]);
    assert_refused(&tb, &bundle, "bundle.expired", "expired at");
}

fn older_version_is_refused_as_a_downgrade(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let bundle = make_bundle(
        &spec("0.9.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    assert_refused(&tb, &bundle, "bundle.downgrade", "this box runs 1.0.0");
}

fn replay_of_an_older_security_version_is_refused(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let good = make_bundle(
        &spec("2.0.0", 5, &payload),
        &tb.work.join("good.pgb"),
        &[&vendor.signers[0]],
    );
    tb.install(&good).expect("install 2.0.0");
    assert_eq!(tb.reboot(), SlotId::B);
    assert!(tb.updater.health(&tb.checks(true)).unwrap().marked_good);
    // A higher version number, but built from a branch without the security fixes.
    let replay_payload = payload_file(&tb.work, "old.img", PAYLOAD_LEN, 9);
    let replay = make_bundle(
        &spec("3.0.0", 4, &replay_payload),
        &tb.work.join("replay.pgb"),
        &[&vendor.signers[0]],
    );
    let slot_a = tb.slot_bytes(SlotId::A);
    let err = tb.install(&replay).expect_err("refused");
    assert_eq!(err.code(), "bundle.security_replay", "{err}");
    assert!(
        err.to_string()
            .contains("security version 4 is below this box's floor 5"),
        "{err}"
    );
    assert_eq!(
        tb.slot_bytes(SlotId::A),
        slot_a,
        "the inactive slot A was written"
    );
    assert_eq!(
        tb.audit_trail().last().unwrap().0,
        "updater.bundle.rejected"
    );
}

fn bundle_for_other_hardware_is_refused(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let mut other = spec("2.0.0", 2, &payload);
    other.hardware = vec!["plantgate-rack-arm64".into()];
    let bundle = make_bundle(&other, &tb.work.join("b.pgb"), &[&vendor.signers[0]]);
    assert_refused(
        &tb,
        &bundle,
        "bundle.wrong_hardware",
        "this box is \"plantgate-vm-x86_64\"",
    );
}

fn payload_swapped_from_another_bundle_is_refused(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let wanted = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("wanted.pgb"),
        &[&vendor.signers[0]],
    );
    let other_payload = payload_file(&tb.work, "other.img", PAYLOAD_LEN, 99);
    let other = make_bundle(
        &spec("1.5.0", 1, &other_payload),
        &tb.work.join("other.pgb"),
        &[&vendor.signers[0]],
    );
    // The signed header of one release, the payload of another of the same size.
    let wanted_bytes = std::fs::read(&wanted).unwrap();
    let other_bytes = std::fs::read(&other).unwrap();
    let mut mixed = wanted_bytes[..wanted_bytes.len() - PAYLOAD_LEN].to_vec();
    mixed.extend_from_slice(&other_bytes[other_bytes.len() - PAYLOAD_LEN..]);
    let bundle = tb.work.join("mixed.pgb");
    std::fs::write(&bundle, mixed).unwrap();
    assert_refused(
        &tb,
        &bundle,
        "bundle.payload_mismatch",
        "does not match the manifest's",
    );
}

fn truncated_bundle_is_refused(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    let len = std::fs::metadata(&bundle).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bundle)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    assert_refused(&tb, &bundle, "bundle.truncated", "the manifest says");
    // Cut inside the signed header too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bundle)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert_refused(&tb, &bundle, "bundle.truncated", "ends inside the manifest");
}

fn endless_data_after_the_payload_is_refused(backend: Backend) {
    let (vendor, tb, payload) = setup(backend, 1, 1);
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&bundle)
        .unwrap();
    let junk = vec![0x5a; 1 << 20];
    for _ in 0..8 {
        file.write_all(&junk).unwrap();
    }
    drop(file);
    assert_refused(
        &tb,
        &bundle,
        "bundle.oversized",
        "8388608 bytes longer than its manifest says",
    );
}

fn bundle_changed_after_verification_leaves_the_slot_marked_bad(backend: Backend) {
    let (vendor, mut tb, payload) = setup(backend, 1, 1);
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    // Someone with write access swaps payload bytes between the check and the copy.
    struct SwapThenWrite {
        inner: updater::slots::DeviceSlots,
        bundle: PathBuf,
    }
    impl updater::slots::Slots for SwapThenWrite {
        fn describe(&self, slot: SlotId) -> String {
            self.inner.describe(slot)
        }
        fn open_writer(
            &self,
            slot: SlotId,
        ) -> updater::Result<Box<dyn updater::slots::SlotWriter>> {
            let mut bytes = std::fs::read(&self.bundle).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&self.bundle, bytes).unwrap();
            self.inner.open_writer(slot)
        }
    }
    tb.updater.slots = Box::new(SwapThenWrite {
        inner: updater::slots::DeviceSlots {
            a: tb.slot_a.clone(),
            b: tb.slot_b.clone(),
        },
        bundle: bundle.clone(),
    });
    let err = tb.install(&bundle).expect_err("install must fail");
    assert_eq!(err.code(), "updater.install_failed", "{err}");
    assert!(err.to_string().contains("marked bad"), "{err}");
    let state = tb.boot_state();
    assert!(!state.ok(SlotId::B), "slot B must be marked bad");
    assert_eq!(tb.reboot(), SlotId::A, "the bad slot must never boot");
    assert_eq!(tb.slot_bytes(SlotId::A), SLOT_A_IMAGE);
    let (action, outcome, details) = tb.audit_trail().pop().unwrap();
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("updater.install.failed", "failure")
    );
    assert!(
        details["reason"]
            .as_str()
            .unwrap()
            .contains("changed after it was verified")
    );
}

on_both_backends!(
    unsigned_bundle_is_refused,
    tampered_manifest_fails_its_signature,
    bundle_signed_by_an_unknown_key_is_refused,
    one_signature_of_two_required_is_refused,
    two_keys_from_one_stolen_anchor_count_once,
    expired_manifest_is_refused,
    older_version_is_refused_as_a_downgrade,
    replay_of_an_older_security_version_is_refused,
    bundle_for_other_hardware_is_refused,
    payload_swapped_from_another_bundle_is_refused,
    truncated_bundle_is_refused,
    endless_data_after_the_payload_is_refused,
    bundle_changed_after_verification_leaves_the_slot_marked_bad,
);
