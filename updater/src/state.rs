//! What the updater remembers across boots, in `{data_dir}/updater/state.json`: the version
//! in each slot, the floor no bundle may go below, and the install waiting for its trial boot.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdaterError};
use crate::slots::SlotId;
use crate::verify::Floor;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotContent {
    pub version: semver::Version,
    pub security_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdaterState {
    pub a: Option<SlotContent>,
    pub b: Option<SlotContent>,
    /// Raised only when a slot is marked good, so a failed update never blocks the rollback.
    pub floor: Floor,
    /// The slot installed last and not yet marked good or rolled back.
    pub pending: Option<SlotId>,
}

impl UpdaterState {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("updater").join("state.json")
    }

    /// The saved state, or the factory state: the booted slot holds the factory version.
    pub fn load(
        data_dir: &Path,
        booted: SlotId,
        factory: &semver::Version,
    ) -> Result<UpdaterState> {
        let path = UpdaterState::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| UpdaterError::Config(format!("{}: {err}", path.display()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut state = UpdaterState {
                    a: None,
                    b: None,
                    floor: Floor {
                        version: factory.clone(),
                        security_version: 0,
                    },
                    pending: None,
                };
                state.set_slot(
                    booted,
                    Some(SlotContent {
                        version: factory.clone(),
                        security_version: 0,
                    }),
                );
                Ok(state)
            }
            Err(err) => Err(UpdaterError::io(path)(err)),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|err| UpdaterError::Config(err.to_string()))?;
        crate::fsutil::write_atomic(&UpdaterState::path(data_dir), &bytes)
    }

    pub fn slot(&self, slot: SlotId) -> Option<&SlotContent> {
        match slot {
            SlotId::A => self.a.as_ref(),
            SlotId::B => self.b.as_ref(),
        }
    }

    pub fn set_slot(&mut self, slot: SlotId, content: Option<SlotContent>) {
        match slot {
            SlotId::A => self.a = content,
            SlotId::B => self.b = content,
        }
    }
}
