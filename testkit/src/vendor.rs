//! A test vendor for signed bundles: key holders with long-lived anchors and short-lived
//! signing keys, the anchor set a box ships, and signed bundles (appliance updates and
//! field-device firmware). Real keys and real CMS signatures through the updater's own
//! vendor code, so what the tests verify is exactly what a vendor would ship.

use std::path::{Path, PathBuf};

use updater::bundle::{self, BundleSpec};
use updater::container::Envelope;
use updater::pki::{self, FileSigner, KeyPair};
use updater::progress::NoProgress;
use updater::trust;

pub const DAY: i64 = 86_400;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The vendor: `n` key holders, each with a long-lived anchor and a short-lived signing key.
#[derive(Debug)]
pub struct Vendor {
    pub anchors: Vec<KeyPair>,
    pub signers: Vec<KeyPair>,
}

impl Vendor {
    pub fn new(n: usize, name: &str) -> Vendor {
        let anchors: Vec<KeyPair> = (0..n)
            .map(|i| {
                pki::new_anchor(
                    &format!("{name} anchor {i}"),
                    now() - 365 * DAY,
                    now() + 20 * 365 * DAY,
                )
                .expect("anchor")
            })
            .collect();
        let signers = anchors
            .iter()
            .enumerate()
            .map(|(i, anchor)| {
                pki::issue_signing_cert(
                    anchor,
                    &format!("{name} signer {i}"),
                    now() - 30 * DAY,
                    now() + 60 * DAY,
                )
                .expect("signing cert")
            })
            .collect();
        Vendor { anchors, signers }
    }

    pub fn anchor_set(&self, version: u64, threshold: usize) -> Envelope {
        let certs: Vec<_> = self.anchors.iter().map(|a| a.cert.clone()).collect();
        trust::anchor_set_envelope(version, threshold, now(), &certs).expect("anchor set")
    }

    /// Writes the anchor set a box ships (version 1) to `path`.
    pub fn write_anchor_set(&self, path: &Path, threshold: usize) -> PathBuf {
        trust::write_anchor_set(&self.anchor_set(1, threshold), path).expect("anchor set file");
        path.to_owned()
    }
}

/// Deterministic, distinct payload content.
pub fn payload_file(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 11) as u8))
        .collect();
    std::fs::write(&path, bytes).expect("payload");
    path
}

/// Creates the bundle and signs it with each signer given.
pub fn make_bundle(spec: &BundleSpec, out: &Path, signers: &[&KeyPair]) -> PathBuf {
    bundle::create(spec, out, &NoProgress).expect("create bundle");
    for signer in signers {
        bundle::sign(out, &FileSigner::from_pair(signer)).expect("sign bundle");
    }
    out.to_owned()
}

/// A firmware release for device model `model`: target `device:MODEL`, the model as its
/// hardware, one payload, valid for 30 days from a minute ago.
pub fn firmware_spec(
    model: &str,
    version: &str,
    security_version: u64,
    payload: &Path,
) -> BundleSpec {
    BundleSpec {
        product: "plantgate".into(),
        target: format!("device:{model}"),
        version: version.parse().expect("semver"),
        hardware: vec![model.into()],
        min_installed_version: "1.0.0".parse().expect("semver"),
        security_version,
        created_at: now() - 60,
        expires_at: now() + 30 * DAY,
        payloads: vec![("firmware".into(), payload.to_owned())],
    }
}
