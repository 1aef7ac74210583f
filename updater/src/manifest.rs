//! The manifest: what a bundle is, for whom, and the exact size and SHA-256 of each payload.
//! The signatures cover its exact bytes as stored in the bundle.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Rejection;

pub const FORMAT_VERSION: u32 = 1;
/// The target of an appliance self-update; field-device firmware names `device:MODEL`.
pub const APPLIANCE_TARGET: &str = "appliance";
/// The one payload an appliance bundle carries: the root filesystem image for a slot.
pub const ROOTFS_PAYLOAD: &str = "rootfs";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub product: String,
    /// `appliance`, or `device:MODEL` for field-device firmware.
    pub target: String,
    pub version: semver::Version,
    /// Hardware identifiers this bundle may be installed on.
    pub hardware: Vec<String>,
    /// The box must already run at least this version.
    pub min_installed_version: semver::Version,
    /// Raised by the vendor when a release fixes a vulnerability; never goes down on a box.
    pub security_version: u64,
    /// RFC 3339. Certificates are checked as of this time.
    pub created_at: String,
    /// RFC 3339. A bundle is refused after this time (freeze attacks).
    pub expires_at: String,
    pub payloads: Vec<PayloadEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadEntry {
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and checks the manifest's own consistency (not yet whether to trust it).
    pub fn parse(body: &[u8]) -> Result<Manifest, Rejection> {
        let malformed = |problem: String| Rejection::Malformed {
            expected: "bundle manifest",
            problem,
        };
        let manifest: Manifest =
            serde_json::from_slice(body).map_err(|err| malformed(err.to_string()))?;
        if manifest.format != FORMAT_VERSION {
            return Err(malformed(format!(
                "format {} is not supported (this updater reads {FORMAT_VERSION})",
                manifest.format
            )));
        }
        manifest.created_at_unix().map_err(malformed)?;
        manifest.expires_at_unix().map_err(malformed)?;
        if manifest.payloads.is_empty() {
            return Err(malformed("no payloads".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for payload in &manifest.payloads {
            if !names.insert(payload.name.as_str()) {
                return Err(malformed(format!("payload {:?} twice", payload.name)));
            }
            if payload.sha256.len() != 64
                || !payload
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(malformed(format!(
                    "payload {:?}: sha256 is not 64 lowercase hex digits",
                    payload.name
                )));
            }
        }
        manifest
            .payload_total()
            .ok_or_else(|| malformed("payload sizes overflow".into()))?;
        Ok(manifest)
    }

    pub fn payload_total(&self) -> Option<u64> {
        self.payloads
            .iter()
            .try_fold(0u64, |total, p| total.checked_add(p.size))
    }

    pub fn created_at_unix(&self) -> Result<i64, String> {
        parse_time("created_at", &self.created_at)
    }

    pub fn expires_at_unix(&self) -> Result<i64, String> {
        parse_time("expires_at", &self.expires_at)
    }
}

pub fn parse_time(field: &str, raw: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp())
        .map_err(|err| format!("{field} {raw:?} is not an RFC 3339 time ({err})"))
}

pub fn format_time(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("@{unix}"))
}
