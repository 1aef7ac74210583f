//! Certificate expiry never locks a box out, and the anchors can be rotated by the current
//! threshold only.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::Backend;
use common::fixtures::*;
use testkit::on_both_backends;
use updater::pki::{FileSigner, issue_signing_cert};
use updater::progress::NoProgress;
use updater::trust;

/// A signing certificate valid from 200 to 100 days ago.
fn expired_signer(vendor: &Vendor) -> updater::pki::KeyPair {
    issue_signing_cert(
        &vendor.anchors[0],
        "last quarter's signer",
        now() - 200 * DAY,
        now() - 100 * DAY,
    )
    .unwrap()
}

fn bundle_signed_while_its_certificate_was_valid_still_installs(backend: Backend) {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::new(backend, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", 4096, 1);
    let mut release = spec("2.0.0", 2, &payload);
    release.created_at = now() - 150 * DAY;
    release.expires_at = now() + 30 * DAY;
    let bundle = make_bundle(
        &release,
        &tb.work.join("b.pgb"),
        &[&expired_signer(&vendor)],
    );
    tb.updater
        .verify(&bundle, &NoProgress)
        .expect("verified as of its signing time");
}

fn certificate_expired_at_signing_time_is_untrusted(backend: Backend) {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::new(backend, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", 4096, 1);
    let bundle = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("b.pgb"),
        &[&expired_signer(&vendor)],
    );
    let err = tb.install(&bundle).expect_err("refused");
    assert_eq!(err.code(), "bundle.untrusted_signer", "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
}

fn backdated_manifest_cannot_outlive_the_validity_cap(backend: Backend) {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::new(backend, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", 4096, 1);
    let mut release = spec("2.0.0", 2, &payload);
    release.created_at = now() - 150 * DAY;
    release.expires_at = now() + 300 * DAY;
    let bundle = make_bundle(
        &release,
        &tb.work.join("b.pgb"),
        &[&expired_signer(&vendor)],
    );
    let err = tb.install(&bundle).expect_err("refused");
    assert_eq!(err.code(), "bundle.validity_too_long", "{err}");
}

fn anchors_rotate_only_with_the_current_threshold(backend: Backend) {
    let old = Vendor::new(2, "old");
    let new = Vendor::new(3, "new");
    let tb = TestBox::new(backend, &old, 2);
    let path = tb.work.join("v2.pgtrust");

    // Signed by one of the two current key holders: refused.
    let mut rotation = new.anchor_set(2, 2);
    trust::sign_envelope(&mut rotation, &FileSigner::from_pair(&old.signers[0])).unwrap();
    trust::write_anchor_set(&rotation, &path).unwrap();
    let err = tb.updater.rotate_trust(&path).expect_err("below threshold");
    assert_eq!(err.code(), "bundle.below_threshold", "{err}");
    assert_eq!(tb.updater.current_trust().unwrap().version, 1);

    // Signed by both: accepted, and it survives a reload from disk.
    trust::sign_envelope(&mut rotation, &FileSigner::from_pair(&old.signers[1])).unwrap();
    trust::write_anchor_set(&rotation, &path).unwrap();
    let set = tb.updater.rotate_trust(&path).expect("rotation");
    assert_eq!((set.version, set.anchors.len(), set.threshold), (2, 3, 2));
    assert_eq!(tb.updater.current_trust().unwrap().version, 2);

    let payload = payload_file(&tb.work, "rootfs.img", 4096, 1);
    let by_old = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("old.pgb"),
        &[&old.signers[0], &old.signers[1]],
    );
    let err = tb
        .updater
        .verify(&by_old, &NoProgress)
        .expect_err("old keys are retired");
    assert_eq!(err.code(), "bundle.untrusted_signer", "{err}");
    let by_new = make_bundle(
        &spec("2.0.0", 2, &payload),
        &tb.work.join("new.pgb"),
        &[&new.signers[0], &new.signers[2]],
    );
    tb.updater
        .verify(&by_new, &NoProgress)
        .expect("new keys are trusted");

    // Replaying an older set, even properly signed by the new keys, is refused.
    let mut replay = old.anchor_set(2, 1);
    trust::sign_envelope(&mut replay, &FileSigner::from_pair(&new.signers[0])).unwrap();
    trust::sign_envelope(&mut replay, &FileSigner::from_pair(&new.signers[1])).unwrap();
    trust::write_anchor_set(&replay, &path).unwrap();
    let err = tb.updater.rotate_trust(&path).expect_err("replay");
    assert_eq!(err.code(), "trust.replay", "{err}");
    let actions = tb.actions();
    assert!(actions.contains(&"updater.trust.rotated".to_owned()));
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "updater.trust.rejected")
            .count(),
        2
    );
}

on_both_backends!(
    bundle_signed_while_its_certificate_was_valid_still_installs,
    certificate_expired_at_signing_time_is_untrusted,
    backdated_manifest_cannot_outlive_the_validity_cap,
    anchors_rotate_only_with_the_current_threshold,
);
