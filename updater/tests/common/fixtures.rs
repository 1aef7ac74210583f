//! Updater fixtures: a vendor with anchors and signing keys, and a box with file-backed
//! slots, a real grubenv file and a kernel command line file, on top of a test appliance.

use std::path::{Path, PathBuf};
use std::process::Command;

use updater::bootenv::{BootEnv, BootState, simulate_boot};
use updater::bundle::BundleSpec;
use updater::config::UpdaterConfig;
use updater::health::{CommandCheck, HealthCheck, StoreMigrated};
use updater::progress::NoProgress;
use updater::slots::SlotId;
use updater::trust;
use updater::{Updater, UpdaterError};

use super::{Backend, TestAppliance};

pub use testkit::vendor::{DAY, Vendor, make_bundle, now, payload_file};

pub const HARDWARE: &str = "plantgate-vm-x86_64";
pub const SLOT_A_IMAGE: &[u8] = b"factory image 1.0.0 in slot A";
pub const SLOT_B_IMAGE: &[u8] =
    b"leftovers of an older image in slot B, never to be touched by a refused bundle";

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

/// Which bootloader environment a test box keeps: the same A/B logic runs on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Env {
    /// A GRUB environment block file.
    Grub,
    /// A single-copy U-Boot environment of 0x4000 bytes in a file.
    Uboot,
    /// A redundant U-Boot environment: two 0x4000-byte copies in one file.
    UbootRedundant,
}

impl Env {
    /// The `[boot]` settings for an environment in `file`.
    fn boot_settings(self, file: &Path) -> String {
        let file = file.display().to_string();
        match self {
            Env::Grub => format!("grubenv = {file:?}\n"),
            Env::Uboot => {
                format!("bootenv = \"uboot\"\n[boot.uboot]\npath = {file:?}\nsize = 0x4000\n")
            }
            Env::UbootRedundant => format!(
                "bootenv = \"uboot\"\n[boot.uboot]\npath = {file:?}\nsize = 0x4000\n\
                 [boot.uboot.redundant]\npath = {file:?}\noffset = 0x4000\n"
            ),
        }
    }

    /// `fw_env.config` for u-boot-tools, describing the same environment.
    pub fn fw_env_config(self, file: &Path) -> String {
        let file = file.display();
        match self {
            Env::Grub => String::new(),
            Env::Uboot => format!("{file} 0x0000 0x4000\n"),
            Env::UbootRedundant => format!("{file} 0x0000 0x4000\n{file} 0x4000 0x4000\n"),
        }
    }
}

/// A box: an appliance plus file-backed slots, a boot environment file (GRUB or U-Boot), a
/// command-line file and the shipped anchor set, all in the appliance's temp dir.
pub struct TestBox {
    pub t: TestAppliance,
    pub updater: Updater,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    /// The boot environment's file, whichever the backend.
    pub env_file: PathBuf,
    pub env_kind: Env,
    pub cmdline: PathBuf,
    pub updater_config: PathBuf,
    pub work: PathBuf,
}

impl TestBox {
    pub fn new(backend: Backend, vendor: &Vendor, threshold: usize) -> TestBox {
        TestBox::with_slot_b(backend, Env::Grub, vendor, threshold, None)
    }

    pub fn with_env(backend: Backend, env: Env, vendor: &Vendor, threshold: usize) -> TestBox {
        TestBox::with_slot_b(backend, env, vendor, threshold, None)
    }

    /// `slot_b`: a path to use as slot B instead of a fresh file (a FIFO, in the kill test).
    pub fn with_slot_b(
        backend: Backend,
        env_kind: Env,
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
        let env_file = root.join(match env_kind {
            Env::Grub => "grubenv",
            Env::Uboot | Env::UbootRedundant => "uboot.env",
        });
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
                 [slots]\na = {:?}\nb = {:?}\n[boot]\ncmdline = {:?}\n{}",
                anchors.display().to_string(),
                slot_a.display().to_string(),
                slot_b.display().to_string(),
                cmdline.display().to_string(),
                env_kind.boot_settings(&env_file),
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
            env_file,
            env_kind,
            cmdline,
            updater_config,
            work,
        }
    }

    /// The boot environment as the updater's config describes it.
    pub fn env(&self) -> Box<dyn BootEnv> {
        self.updater.config.boot.env.open()
    }

    pub fn boot_state(&self) -> BootState {
        BootState::load(self.env().as_ref()).expect("boot state")
    }

    /// Power cycle: the bootloader picks a slot as grub.cfg (or boot.cmd) does, the kernel
    /// gets its name.
    pub fn reboot(&self) -> SlotId {
        let slot = simulate_boot(self.env().as_ref()).expect("boot");
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
