//! Bundle verification throughput against `sha256sum` on the same file, in the same run.
//!
//! `cargo bench -p plantgate-updater --bench verify` uses a 500 MB payload; under
//! `cargo test` the same code runs on 8 MB, so it cannot rot. The files live in a temp
//! directory that is removed at the end.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use updater::bundle::{self, BundleSpec};
use updater::pki::{self, FileSigner};
use updater::progress::NoProgress;
use updater::trust::{TrustSet, anchor_set_envelope};
use updater::verify::{Floor, Policy, verify_bundle};

#[allow(clippy::print_stdout)]
fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let megabytes: usize = if full { 500 } else { 8 };
    let dir = tempfile::tempdir().expect("tempdir");
    let now = chrono::Utc::now().timestamp();

    let payload = dir.path().join("rootfs.img");
    let mut file = std::fs::File::create(&payload).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..megabytes {
        for (j, byte) in block.iter_mut().enumerate() {
            *byte = (i as u8) ^ (j as u8).wrapping_mul(13);
        }
        file.write_all(&block).unwrap();
    }
    drop(file);

    let anchor = pki::new_anchor("bench anchor", now - 86_400, now + 86_400 * 365).unwrap();
    let signer =
        pki::issue_signing_cert(&anchor, "bench signer", now - 86_400, now + 86_400).unwrap();
    let envelope = anchor_set_envelope(1, 1, now, std::slice::from_ref(&anchor.cert)).unwrap();
    let (trust, _) = TrustSet::from_body(&envelope.body).unwrap();
    let spec = BundleSpec {
        product: "plantgate".into(),
        target: "appliance".into(),
        version: "2.0.0".parse().unwrap(),
        hardware: vec!["bench".into()],
        min_installed_version: "0.0.0".parse().unwrap(),
        security_version: 1,
        created_at: now - 60,
        expires_at: now + 86_400,
        payloads: vec![("rootfs".into(), payload.clone())],
    };
    let bundle_path = dir.path().join("bench.pgb");
    bundle::create(&spec, &bundle_path, &NoProgress).unwrap();
    bundle::sign(&bundle_path, &FileSigner::from_pair(&signer)).unwrap();
    std::fs::remove_file(&payload).unwrap();
    let policy = Policy {
        product: "plantgate".into(),
        target: "appliance".into(),
        hardware: "bench".into(),
        installed: "1.0.0".parse().unwrap(),
        floor: Floor {
            version: "1.0.0".parse().unwrap(),
            security_version: 0,
        },
        now,
    };
    let bytes = std::fs::metadata(&bundle_path).unwrap().len() as f64;
    let mb = bytes / 1e6;

    // Warm the page cache for both readers alike, then time each twice and keep the best.
    verify_bundle(&bundle_path, &trust, &policy, &NoProgress).expect("verifies");
    let mut ours = f64::MAX;
    let mut theirs = f64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        verify_bundle(&bundle_path, &trust, &policy, &NoProgress).expect("verifies");
        ours = ours.min(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let out = Command::new("sha256sum")
            .arg(&bundle_path)
            .output()
            .expect("sha256sum runs");
        assert!(out.status.success());
        theirs = theirs.min(started.elapsed().as_secs_f64());
    }
    println!(
        "bundle verification, {mb:.0} MB bundle (signature, trust chain, policy, SHA-256 of the payload):"
    );
    println!(
        "  plantgate-updater verify: {:>8.1} MB/s ({ours:.3} s)",
        mb / ours
    );
    println!(
        "  sha256sum, same file:     {:>8.1} MB/s ({theirs:.3} s)",
        mb / theirs
    );
    println!(
        "  ratio: {:.0}% of sha256sum (target: at least 80%)",
        100.0 * theirs / ours
    );
}
