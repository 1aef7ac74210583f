//! Updater fixtures: a vendor with anchors and signing keys, and a box with file-backed
//! slots, a real grubenv file and a kernel command line file, on top of a test appliance.

use std::path::{Path, PathBuf};
use std::process::Command;

use updater::bootenv::{BootState, GrubEnv, simulate_boot};
use updater::bundle::{self, BundleSpec};
use updater::config::UpdaterConfig;
use updater::container::Envelope;
use updater::health::{CommandCheck, HealthCheck, StoreMigrated};
use updater::pki::{self, FileSigner, KeyPair};
use updater::progress::NoProgress;
use updater::slots::SlotId;
use updater::trust;
use updater::{Updater, UpdaterError};

use super::{Backend, TestAppliance};

pub const DAY: i64 = 86_400;
pub const HARDWARE: &str = "plantgate-vm-x86_64";
pub const SLOT_A_IMAGE: &[u8] = b"factory image 1.0.0 in slot A";
pub const SLOT_B_IMAGE: &[u8] =
    b"leftovers of an older image in slot B, never to be touched by a refused bundle";

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The vendor: `n` key holders, each with a long-lived anchor and a short-lived signing key.
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
}

/// A release: version 2.0.0, security version 2, for this hardware, valid for 30 days.
pub fn spec(version: &str, security_version: u64, payload: &Path) -> BundleSpec {
    BundleSpec {
        product: "plantgate".into(),
        target: "appliance".into(),
        version: version.parse().expect("semver"),
        hardware: vec![HARDWARE.into()],
        min_installed_version: "1.0.0".parse().expect("semver"),
        security_version,
        created_at: now() - 60,
        expires_at: now() + 30 * DAY,
        payloads: vec![("rootfs".into(), payload.to_owned())],
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

/// A box: an appliance plus file-backed slots, a grubenv file, a command-line file and
/// the shipped anchor set, all in the appliance's temp dir.
pub struct TestBox {
    pub t: TestAppliance,
    pub updater: Updater,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub grubenv: PathBuf,
    pub cmdline: PathBuf,
    pub updater_config: PathBuf,
    pub work: PathBuf,
}

impl TestBox {
    pub fn new(backend: Backend, vendor: &Vendor, threshold: usize) -> TestBox {
        TestBox::with_slot_b(backend, vendor, threshold, None)
    }

    /// `slot_b`: a path to use as slot B instead of a fresh file (a FIFO, in the kill test).
    pub fn with_slot_b(
        backend: Backend,
        vendor: &Vendor,
        threshold: usize,
        slot_b: Option<PathBuf>,
    ) -> TestBox {
        let t = TestAppliance::new(backend);
        let root = t.dir.path().to_owned();
        let work = root.join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let slot_a = root.join("slot-a.img");
        std::fs::write(&slot_a, SLOT_A_IMAGE).expect("slot a");
        let slot_b = slot_b.unwrap_or_else(|| {
            let path = root.join("slot-b.img");
            std::fs::write(&path, SLOT_B_IMAGE).expect("slot b");
            path
        });
        let grubenv = root.join("grubenv");
        let cmdline = root.join("cmdline");
        std::fs::write(&cmdline, "BOOT_IMAGE=/vmlinuz ro quiet plantgate.slot=A\n")
            .expect("cmdline");
        let anchors = root.join("anchors.pgtrust");
        trust::write_anchor_set(&vendor.anchor_set(1, threshold), &anchors).expect("anchors");
        let updater_config = root.join("updater.toml");
        std::fs::write(
            &updater_config,
            format!(
                "hardware = {HARDWARE:?}\nfactory_version = \"1.0.0\"\ntrust_anchors = {:?}\n\
                 [slots]\na = {:?}\nb = {:?}\n[boot]\ngrubenv = {:?}\ncmdline = {:?}\n",
                anchors.display().to_string(),
                slot_a.display().to_string(),
                slot_b.display().to_string(),
                grubenv.display().to_string(),
                cmdline.display().to_string(),
            ),
        )
        .expect("updater config");
        let config = UpdaterConfig::load(&updater_config).expect("updater config loads");
        let updater = Updater::open(t.app.clone(), config);
        TestBox {
            t,
            updater,
            slot_a,
            slot_b,
            grubenv,
            cmdline,
            updater_config,
            work,
        }
    }

    pub fn env(&self) -> GrubEnv {
        GrubEnv {
            path: self.grubenv.clone(),
        }
    }

    pub fn boot_state(&self) -> BootState {
        BootState::load(&self.env()).expect("boot state")
    }

    /// Power cycle: the bootloader picks a slot as grub.cfg does, the kernel gets its name.
    pub fn reboot(&self) -> SlotId {
        let slot = simulate_boot(&self.env()).expect("boot");
        std::fs::write(&self.cmdline, format!("ro quiet plantgate.slot={slot}\n"))
            .expect("cmdline");
        slot
    }

    pub fn slot_bytes(&self, slot: SlotId) -> Vec<u8> {
        std::fs::read(match slot {
            SlotId::A => &self.slot_a,
            SlotId::B => &self.slot_b,
        })
        .expect("read slot")
    }

    pub fn install(&self, bundle: &Path) -> Result<updater::updater::InstallReport, UpdaterError> {
        self.updater.install(bundle, &NoProgress)
    }

    /// The store check plus one command check that passes or fails.
    pub fn checks(&self, healthy: bool) -> Vec<Box<dyn HealthCheck>> {
        vec![
            Box::new(StoreMigrated {
                store: self.t.app.store.clone(),
            }),
            Box::new(CommandCheck {
                name: "portal".into(),
                argv: vec![if healthy { "true" } else { "false" }.into()],
            }),
        ]
    }

    /// `(action, outcome, details)` of every updater record in the audit log, in order.
    pub fn audit_trail(&self) -> Vec<(String, String, serde_json::Value)> {
        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        let rows: Vec<(String, String, String)> = audit_log
            .filter(action.like("updater.%"))
            .order(seq)
            .select((action, outcome, details))
            .load(&mut *self.t.conn())
            .expect("audit rows");
        rows.into_iter()
            .map(|(a, o, d)| (a, o, serde_json::from_str(&d).expect("details json")))
            .collect()
    }

    pub fn actions(&self) -> Vec<String> {
        self.audit_trail().into_iter().map(|(a, _, _)| a).collect()
    }

    /// The `plantgate-updater` binary, configured for this box.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_plantgate-updater"));
        cmd.env("PLANTGATE_CONFIG", &self.t.config_path)
            .env("PLANTGATE_UPDATER_CONFIG", &self.updater_config)
            .env("PLANTGATE_LOG__LEVEL", "warn");
        cmd
    }
}
