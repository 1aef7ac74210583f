//! The updater's own settings, `/etc/plantgate/updater.toml` in the image (or
//! `--updater-config` / `PLANTGATE_UPDATER_CONFIG`). They describe the hardware, so they
//! ship with the image rather than living in `plantgate.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bootenv::{
    BootEnv, GrubEnv, MAX_TRIES, UBOOT_MAX_SIZE, UBOOT_MIN_SIZE, UbootCopy, UbootEnv,
};
use crate::error::{Result, UpdaterError};
use crate::trust::TrustStore;

pub const SYSTEM_UPDATER_CONFIG: &str = "/etc/plantgate/updater.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdaterConfig {
    #[serde(default = "default_product")]
    pub product: String,
    /// This box's hardware identifier, matched against a manifest's `hardware` list.
    pub hardware: String,
    /// The version the image was built as; the running version until an update is marked good.
    pub factory_version: semver::Version,
    /// The anchor set shipped in the read-only image.
    pub trust_anchors: PathBuf,
    /// Trial boots of a new slot before the bootloader falls back (1..=3).
    #[serde(default = "default_boot_attempts")]
    pub boot_attempts: u32,
    pub slots: SlotsConfig,
    pub boot: BootConfig,
    #[serde(default)]
    pub health: HealthConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsConfig {
    pub a: PathBuf,
    pub b: PathBuf,
}

/// Where the bootloader keeps its environment, and where the booted slot is read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawBootConfig", into = "RawBootConfig")]
pub struct BootConfig {
    pub env: BootEnvConfig,
    /// Where `plantgate.slot=A|B` is read from.
    pub cmdline: PathBuf,
}

/// The bootloader environment backend (`bootenv` in `[boot]`).
#[derive(Debug, Clone, PartialEq)]
pub enum BootEnvConfig {
    /// A GRUB environment block file (`grubenv`).
    Grub { path: PathBuf },
    /// A U-Boot environment (`[boot.uboot]`), as `fw_printenv`/`fw_setenv` read and write it.
    Uboot(UbootConfig),
}

impl BootEnvConfig {
    /// The backend these settings describe.
    pub fn open(&self) -> Box<dyn BootEnv> {
        match self {
            BootEnvConfig::Grub { path } => Box::new(GrubEnv { path: path.clone() }),
            BootEnvConfig::Uboot(uboot) => Box::new(UbootEnv {
                primary: UbootCopy {
                    path: uboot.path.clone(),
                    offset: uboot.offset,
                },
                redundant: uboot.redundant.clone(),
                size: uboot.size,
            }),
        }
    }
}

/// A U-Boot environment: what `fw_env.config` says (device, offset, size), one line per copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UbootConfig {
    /// A file or a raw partition (e.g. `/dev/disk/by-partlabel/ubootenv`).
    pub path: PathBuf,
    /// Where in it the environment starts (U-Boot's `CONFIG_ENV_OFFSET`).
    #[serde(default)]
    pub offset: u64,
    /// The environment's size in bytes, CRC included (U-Boot's `CONFIG_ENV_SIZE`, e.g. 0x4000).
    pub size: u64,
    /// The second copy of a redundant environment (`CONFIG_ENV_OFFSET_REDUND`).
    #[serde(default)]
    pub redundant: Option<UbootCopy>,
}

/// The `[boot]` table as written, before the backend is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBootConfig {
    /// `grub` (the default) or `uboot`.
    #[serde(default = "default_bootenv")]
    bootenv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grubenv: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uboot: Option<UbootConfig>,
    #[serde(default = "default_cmdline")]
    cmdline: PathBuf,
}

fn default_bootenv() -> String {
    "grub".into()
}

impl TryFrom<RawBootConfig> for BootConfig {
    type Error = String;

    fn try_from(raw: RawBootConfig) -> std::result::Result<BootConfig, String> {
        let env = match (raw.bootenv.as_str(), raw.grubenv, raw.uboot) {
            ("grub", Some(path), None) => BootEnvConfig::Grub { path },
            ("grub", None, _) => return Err("boot.grubenv: needed for bootenv = \"grub\"".into()),
            ("uboot", None, Some(uboot)) => {
                if !(UBOOT_MIN_SIZE..=UBOOT_MAX_SIZE).contains(&uboot.size) {
                    return Err(format!(
                        "boot.uboot.size = {}: must be between {UBOOT_MIN_SIZE} and {UBOOT_MAX_SIZE} bytes",
                        uboot.size
                    ));
                }
                if let Some(copy) = &uboot.redundant
                    && copy.path == uboot.path
                    && copy.offset.abs_diff(uboot.offset) < uboot.size
                {
                    return Err("boot.uboot.redundant: overlaps the first copy".into());
                }
                BootEnvConfig::Uboot(uboot)
            }
            ("uboot", None, None) => {
                return Err("boot.uboot: needed for bootenv = \"uboot\" (path, size)".into());
            }
            ("grub" | "uboot", _, _) => {
                return Err(format!(
                    "boot: bootenv = {:?} takes only its own settings (grubenv for grub, [boot.uboot] for uboot)",
                    raw.bootenv
                ));
            }
            (other, _, _) => {
                return Err(format!(
                    "boot.bootenv = {other:?}: allowed: \"grub\", \"uboot\""
                ));
            }
        };
        Ok(BootConfig {
            env,
            cmdline: raw.cmdline,
        })
    }
}

impl From<BootConfig> for RawBootConfig {
    fn from(config: BootConfig) -> RawBootConfig {
        let (bootenv, grubenv, uboot) = match config.env {
            BootEnvConfig::Grub { path } => ("grub", Some(path), None),
            BootEnvConfig::Uboot(uboot) => ("uboot", None, Some(uboot)),
        };
        RawBootConfig {
            bootenv: bootenv.into(),
            grubenv,
            uboot,
            cmdline: config.cmdline,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// systemd units that must be active (`systemctl is-active`).
    #[serde(default)]
    pub units: Vec<String>,
    /// Further checks: a command that exits 0 when healthy.
    #[serde(default)]
    pub command: Vec<CommandCheckConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandCheckConfig {
    pub name: String,
    pub argv: Vec<String>,
}

fn default_product() -> String {
    "plantgate".into()
}

fn default_boot_attempts() -> u32 {
    MAX_TRIES
}

fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

impl UpdaterConfig {
    /// The trust store of this box: the anchor set shipped in the image (`trust_anchors`)
    /// advanced by the rotations kept under `{data_dir}/updater/trust/`.
    pub fn trust_store(&self, data_dir: &Path) -> TrustStore {
        TrustStore {
            shipped: self.trust_anchors.clone(),
            rotations: data_dir.join("updater").join("trust"),
        }
    }

    pub fn load(path: &Path) -> Result<UpdaterConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| UpdaterError::Config(format!("{}: {err}", path.display())))?;
        let config: UpdaterConfig = toml::from_str(&text).map_err(|err| {
            UpdaterError::Config(format!(
                "{}: {}",
                path.display(),
                err.to_string().lines().collect::<Vec<_>>().join(" ")
            ))
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_TRIES).contains(&self.boot_attempts) {
            return Err(UpdaterError::Config(format!(
                "boot_attempts = {}: must be between 1 and {MAX_TRIES}",
                self.boot_attempts
            )));
        }
        if self.hardware.trim().is_empty() {
            return Err(UpdaterError::Config("hardware: must not be empty".into()));
        }
        if self.slots.a == self.slots.b {
            return Err(UpdaterError::Config(
                "slots.a and slots.b name the same device".into(),
            ));
        }
        for check in &self.health.command {
            if check.argv.is_empty() {
                return Err(UpdaterError::Config(format!(
                    "health.command {:?}: argv is empty",
                    check.name
                )));
            }
        }
        Ok(())
    }
}
