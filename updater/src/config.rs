//! The updater's own settings, `/etc/plantgate/updater.toml` in the image (or
//! `--updater-config` / `PLANTGATE_UPDATER_CONFIG`). They describe the hardware, so they
//! ship with the image rather than living in `plantgate.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bootenv::MAX_TRIES;
use crate::error::{Result, UpdaterError};

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// The GRUB environment block file.
    pub grubenv: PathBuf,
    /// Where `plantgate.slot=A|B` is read from.
    #[serde(default = "default_cmdline")]
    pub cmdline: PathBuf,
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
