//! Management-plane safety, as `netplan try` does it: a change that could lock admins out
//! (the uplink interface, the portal ports, SSH) is applied, and rolled back unless it is
//! confirmed in time. The last confirmed settings are kept in
//! `{data_dir}/firewall-confirmed.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ruleset::Policy;

/// The part of the policy that decides whether admins can still reach the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagementAccess {
    pub uplink: String,
    pub portal_ports: Vec<u16>,
    pub ssh: bool,
}

impl ManagementAccess {
    pub fn of(policy: &Policy) -> ManagementAccess {
        ManagementAccess {
            uplink: policy.uplink.clone(),
            portal_ports: policy.portal_ports.clone(),
            ssh: policy.ssh,
        }
    }

    /// `policy` with this management access in place of its own.
    pub fn applied_to(&self, policy: &Policy) -> Policy {
        Policy {
            uplink: self.uplink.clone(),
            portal_ports: self.portal_ports.clone(),
            ssh: self.ssh,
            ..policy.clone()
        }
    }
}

/// A change waiting for confirmation, and what to go back to.
#[derive(Debug, Clone)]
pub struct Pending {
    pub deadline: Instant,
    pub previous: ManagementAccess,
    pub proposed: ManagementAccess,
}

#[derive(Debug, Clone)]
pub struct ConfirmedFile {
    path: PathBuf,
}

impl ConfirmedFile {
    pub fn in_dir(data_dir: &Path) -> ConfirmedFile {
        ConfirmedFile {
            path: data_dir.join("firewall-confirmed.json"),
        }
    }

    pub fn read(&self) -> Option<ManagementAccess> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    pub fn write(&self, access: &ManagementAccess) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(access).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// What to do at start: `None` when the configured access is the confirmed one (or
    /// nothing was ever confirmed, as on first boot), else the change to try.
    pub fn check(
        &self,
        configured: &ManagementAccess,
        confirm_within: Duration,
    ) -> std::io::Result<Option<Pending>> {
        match self.read() {
            Some(confirmed) if &confirmed == configured => Ok(None),
            Some(confirmed) => Ok(Some(Pending {
                deadline: Instant::now() + confirm_within,
                previous: confirmed,
                proposed: configured.clone(),
            })),
            None => self.write(configured).map(|()| None),
        }
    }
}
