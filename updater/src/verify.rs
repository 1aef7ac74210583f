//! Verifying a bundle file: everything is checked, in one read-only pass, before the
//! installer opens a slot.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use openssl::sha::Sha256;

use crate::container::{Envelope, Kind};
use crate::error::{Rejection, Result, UpdaterError};
use crate::manifest::{Manifest, format_time};
use crate::progress::Progress;
use crate::trust::TrustSet;

/// A manifest may be valid for at most this long. This bounds what a stolen signing key
/// is worth after its short-lived certificate expires: it can only backdate a manifest to
/// the certificate's lifetime, and such a manifest expires this long after that.
pub const MAX_VALIDITY_DAYS: i64 = 400;
/// Clock skew tolerated between the vendor's signing host and the box.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;
/// Read and hash in chunks of this size: constant memory for any payload size.
pub const CHUNK: usize = 1 << 20;

/// Opens a bundle, which must be a regular file: it is read more than once (its header and
/// length, then its payloads to verify, then again to install), and its length is checked
/// against the manifest, none of which a pipe allows. Standard input (`-`, `/dev/stdin`)
/// and other pipes or devices are refused with a message saying so, rather than being read
/// as an empty file.
pub fn open_bundle(path: &Path) -> Result<File> {
    let refuse = |what: &str| {
        UpdaterError::Usage(format!(
            "{}: {what}; a bundle must be a regular file (it is read more than once: to verify it, \
             then to install it), so standard input and pipes are not supported: save it to a file first",
            path.display()
        ))
    };
    if path.as_os_str() == "-" {
        return Err(refuse("standard input"));
    }
    let file = File::open(path).map_err(UpdaterError::io(path))?;
    let kind = file.metadata().map_err(UpdaterError::io(path))?.file_type();
    if !kind.is_file() {
        return Err(refuse(if kind.is_fifo() {
            "a pipe"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        }));
    }
    Ok(file)
}

/// What the box is and has, against which a bundle is judged.
#[derive(Debug, Clone)]
pub struct Policy {
    pub product: String,
    pub target: String,
    pub hardware: String,
    pub installed: semver::Version,
    /// The highest version and security version ever marked good on this box.
    pub floor: Floor,
    /// Unix seconds.
    pub now: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Floor {
    pub version: semver::Version,
    pub security_version: u64,
}

/// A bundle that passed every check. `payload_offset` is where its first payload starts.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub payload_offset: u64,
    pub signed_by: Vec<String>,
}

/// Reads the header and checks signatures, trust, freshness, hardware and versions:
/// everything except the payload bytes.
pub fn check_header(
    path: &Path,
    trust: &TrustSet,
    policy: &Policy,
) -> Result<(Envelope, Manifest, Vec<String>, u64)> {
    check_header_with(path, trust, &|manifest| check_policy(manifest, policy))
}

/// As [`check_header`], with the manifest's claims judged by `claims` (the appliance's
/// [`check_policy`], or a device model's policy for firmware).
pub fn check_header_with(
    path: &Path,
    trust: &TrustSet,
    claims: &dyn Fn(&Manifest) -> Result<(), Rejection>,
) -> Result<(Envelope, Manifest, Vec<String>, u64)> {
    let file = open_bundle(path)?;
    let file_len = file.metadata().map_err(UpdaterError::io(path))?.len();
    let envelope = Envelope::read(&mut BufReader::new(file), Kind::Bundle)?;
    if envelope.signatures.is_empty() {
        return Err(Rejection::Unsigned.into());
    }
    let manifest = Manifest::parse(&envelope.body)?;
    let created_at = manifest.created_at_unix().unwrap_or(i64::MAX);
    let report = trust.verify(&envelope.body, &envelope.signatures, created_at)?;
    claims(&manifest)?;
    let expected_len = envelope
        .header_len()
        .checked_add(manifest.payload_total().unwrap_or(u64::MAX))
        .ok_or_else(|| Rejection::Malformed {
            expected: "bundle manifest",
            problem: "payload sizes overflow".into(),
        })?;
    if file_len < expected_len {
        return Err(Rejection::Truncated(format!(
            "{} bytes, the manifest says {expected_len}",
            file_len
        ))
        .into());
    }
    if file_len > expected_len {
        return Err(Rejection::Oversized {
            extra: file_len - expected_len,
        }
        .into());
    }
    let offset = envelope.header_len();
    Ok((envelope, manifest, report.anchors, offset))
}

/// Product, target and freshness: the checks every bundle passes, for the appliance or a
/// device model alike.
pub fn check_target_and_freshness(
    manifest: &Manifest,
    product: &str,
    target: &str,
    now: i64,
) -> Result<(), Rejection> {
    if manifest.product != product || manifest.target != target {
        return Err(Rejection::WrongTarget {
            expected: format!("{product} {target}"),
            found: format!("{} {}", manifest.product, manifest.target),
        });
    }
    let created_at = manifest.created_at_unix().unwrap_or(i64::MAX);
    let expires_at = manifest.expires_at_unix().unwrap_or(i64::MIN);
    if created_at > now + MAX_CLOCK_SKEW_SECS {
        return Err(Rejection::NotYetValid {
            created_at: manifest.created_at.clone(),
            now: format_time(now),
        });
    }
    if now >= expires_at {
        return Err(Rejection::Expired {
            expires_at: manifest.expires_at.clone(),
            now: format_time(now),
        });
    }
    let days = (expires_at - created_at) / 86_400;
    if days > MAX_VALIDITY_DAYS {
        return Err(Rejection::ValidityTooLong {
            days,
            max_days: MAX_VALIDITY_DAYS,
        });
    }
    Ok(())
}

/// The manifest's claims against the box.
pub fn check_policy(manifest: &Manifest, policy: &Policy) -> Result<(), Rejection> {
    check_target_and_freshness(manifest, &policy.product, &policy.target, policy.now)?;
    if !manifest.hardware.contains(&policy.hardware) {
        return Err(Rejection::WrongHardware {
            actual: policy.hardware.clone(),
            supported: manifest.hardware.clone(),
        });
    }
    if manifest.version <= policy.installed {
        return Err(Rejection::Downgrade {
            offered: manifest.version.to_string(),
            than: format!("this box runs {}", policy.installed),
        });
    }
    if manifest.version < policy.floor.version {
        return Err(Rejection::Downgrade {
            offered: manifest.version.to_string(),
            than: format!(
                "version {} was already marked good here",
                policy.floor.version
            ),
        });
    }
    if manifest.security_version < policy.floor.security_version {
        return Err(Rejection::SecurityReplay {
            offered: manifest.security_version,
            floor: policy.floor.security_version,
        });
    }
    if policy.installed < manifest.min_installed_version {
        return Err(Rejection::InstalledTooOld {
            required: manifest.min_installed_version.to_string(),
            installed: policy.installed.to_string(),
        });
    }
    Ok(())
}

/// Every check, including a full read of each payload against its pinned SHA-256.
pub fn verify_bundle(
    path: &Path,
    trust: &TrustSet,
    policy: &Policy,
    progress: &dyn Progress,
) -> Result<VerifiedBundle> {
    verify_bundle_with(
        path,
        trust,
        &|manifest| check_policy(manifest, policy),
        progress,
    )
}

/// As [`verify_bundle`], with the manifest's claims judged by `claims`.
pub fn verify_bundle_with(
    path: &Path,
    trust: &TrustSet,
    claims: &dyn Fn(&Manifest) -> Result<(), Rejection>,
    progress: &dyn Progress,
) -> Result<VerifiedBundle> {
    let (_, manifest, signed_by, offset) = check_header_with(path, trust, claims)?;
    let mut file = open_bundle(path)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
        .map_err(UpdaterError::io(path))?;
    progress.start("verifying", manifest.payload_total().unwrap_or(0));
    let mut buf = vec![0u8; CHUNK];
    for payload in &manifest.payloads {
        let mut hasher = Sha256::new();
        let mut left = payload.size;
        while left > 0 {
            let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            let got = file
                .read(&mut buf[..want])
                .map_err(UpdaterError::io(path))?;
            if got == 0 {
                return Err(Rejection::Truncated(format!(
                    "payload {:?} ends {left} bytes early",
                    payload.name
                ))
                .into());
            }
            hasher.update(&buf[..got]);
            left -= got as u64;
            progress.advance(got as u64);
        }
        let actual = hex::encode(hasher.finish());
        if actual != payload.sha256 {
            return Err(Rejection::PayloadMismatch {
                name: payload.name.clone(),
                expected: payload.sha256.clone(),
                actual,
            }
            .into());
        }
    }
    progress.finish();
    Ok(VerifiedBundle {
        path: path.to_owned(),
        manifest,
        payload_offset: offset,
        signed_by,
    })
}
