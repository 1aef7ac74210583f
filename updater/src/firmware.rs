//! Firmware for field devices: an uploaded bundle is verified with the same envelope, trust
//! anchors and checks as an appliance update, judged against a device model instead of this
//! box, and only then stored (the file under `{data_dir}/firmware/`, its facts in the store).
//! Devices fetch the original bytes, so they can verify the signatures themselves.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use appliance::firmware::{Firmware, NewFirmware, clean_model};
use appliance::time::now_us;
use appliance::{Actor, Appliance, AuditEvent, Outcome};
use serde_json::json;
use tempfile::NamedTempFile;

use crate::error::{Rejection, Result, UpdaterError};
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::trust::TrustStore;
use crate::verify::{Floor, check_target_and_freshness, verify_bundle_with};

/// The target a firmware bundle for `model` names.
pub fn device_target(model: &str) -> String {
    format!("device:{model}")
}

/// What a firmware bundle is judged against.
#[derive(Debug, Clone)]
pub struct FirmwarePolicy {
    pub product: String,
    pub model: String,
    /// The newest version and the highest security version stored for the model.
    pub floor: Option<Floor>,
    /// Unix seconds.
    pub now: i64,
}

/// Target `device:MODEL`, freshness, the model among `hardware`, exactly one payload, and
/// no downgrade against what is already stored for the model. The devices' installed
/// versions are theirs to check (`min_installed_version`).
pub fn check_firmware(manifest: &Manifest, policy: &FirmwarePolicy) -> Result<(), Rejection> {
    check_target_and_freshness(
        manifest,
        &policy.product,
        &device_target(&policy.model),
        policy.now,
    )?;
    if !manifest.hardware.contains(&policy.model) {
        return Err(Rejection::WrongHardware {
            actual: policy.model.clone(),
            supported: manifest.hardware.clone(),
        });
    }
    if manifest.payloads.len() != 1 {
        return Err(Rejection::Malformed {
            expected: "firmware bundle",
            problem: format!(
                "{} payloads; firmware carries exactly one",
                manifest.payloads.len()
            ),
        });
    }
    if let Some(floor) = &policy.floor {
        if manifest.version <= floor.version {
            return Err(Rejection::Downgrade {
                offered: manifest.version.to_string(),
                than: format!(
                    "firmware {} for {} is already stored",
                    floor.version, policy.model
                ),
            });
        }
        if manifest.security_version < floor.security_version {
            return Err(Rejection::SecurityReplay {
                offered: manifest.security_version,
                floor: floor.security_version,
            });
        }
    }
    Ok(())
}

/// Where stored bundles live.
pub fn firmware_dir(app: &Appliance) -> PathBuf {
    app.config.data_dir.join("firmware")
}

/// The newest version and highest security version stored for `model`.
pub fn stored_floor(app: &Appliance, model: &str) -> Result<Option<Floor>> {
    let stored = Firmware::for_model(&mut *app.store.conn()?, model)?;
    let mut floor: Option<Floor> = None;
    for fw in stored {
        let Ok(version) = fw.version.parse::<semver::Version>() else {
            continue;
        };
        let security_version = u64::try_from(fw.security_version).unwrap_or(0);
        floor = Some(match floor {
            None => Floor {
                version,
                security_version,
            },
            Some(f) => Floor {
                version: f.version.max(version),
                security_version: f.security_version.max(security_version),
            },
        });
    }
    Ok(floor)
}

/// Who hands a bundle in, and from where, as the audit records name them.
#[derive(Debug, Clone)]
pub struct Uploader<'a> {
    pub actor: &'a Actor,
    /// The client's address, or `local` for the command line.
    pub source: &'a str,
    /// What the uploader called the file (a path, or a browser's file name).
    pub file: &'a str,
}

/// Audits a refused upload, `firmware.rejected`, with the refusal's code and reason. The
/// portal calls it for refusals of its own (too large, cut off) before anything is verified.
pub fn audit_rejection(
    app: &Appliance,
    uploader: &Uploader<'_>,
    model: &str,
    code: &str,
    reason: &str,
) -> Result<()> {
    let event = AuditEvent::new(uploader.actor.clone(), "firmware.rejected")
        .source(uploader.source)
        .target(format!("firmware-model:{model}"))
        .outcome(Outcome::Denied)
        .details(json!({
            "file": uploader.file,
            "model": model,
            "code": code,
            "reason": reason,
        }));
    app.audit.record(event)?;
    Ok(())
}

/// A private, empty file in the firmware directory for an upload to be written into; it
/// disappears unless [`store_staged`] keeps it.
pub fn staging_file(app: &Appliance) -> Result<NamedTempFile> {
    let dir = firmware_dir(app);
    std::fs::create_dir_all(&dir).map_err(UpdaterError::io(&dir))?;
    tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(&dir)
        .map_err(UpdaterError::io(&dir))
}

/// Verifies the bundle at `path` for `model` and stores it. The file is copied first and
/// the copy verified, so what is stored is exactly what passed. A refusal is audited
/// `firmware.rejected` with its code and reason, and leaves nothing stored.
pub fn upload(
    app: &Appliance,
    trust: &TrustStore,
    product: &str,
    actor: &Actor,
    path: &Path,
    model: &str,
    progress: &dyn Progress,
) -> Result<Firmware> {
    let file = path.display().to_string();
    let uploader = Uploader {
        actor,
        source: "local",
        file: &file,
    };
    let staged = staging_file(app).and_then(|mut copy| {
        let mut source = File::open(path).map_err(UpdaterError::io(path))?;
        std::io::copy(&mut source, copy.as_file_mut()).map_err(UpdaterError::io(copy.path()))?;
        Ok(copy)
    });
    match staged {
        Ok(copy) => store_staged(app, trust, product, &uploader, copy, model, progress),
        Err(err) => {
            audit_rejection(app, &uploader, model, err.code(), &err.to_string())?;
            Err(err)
        }
    }
}

/// Verifies a bundle already written to a [`staging_file`] and, if every check passes,
/// keeps that very file and records it (`firmware.uploaded`). A refusal is audited
/// `firmware.rejected` with its code and reason, and the staged file is deleted.
pub fn store_staged(
    app: &Appliance,
    trust: &TrustStore,
    product: &str,
    uploader: &Uploader<'_>,
    staged: NamedTempFile,
    model: &str,
    progress: &dyn Progress,
) -> Result<Firmware> {
    let result = store_inner(app, trust, product, uploader, staged, model, progress);
    if let Err(err) = &result {
        audit_rejection(app, uploader, model, err.code(), &err.to_string())?;
    }
    result
}

fn store_inner(
    app: &Appliance,
    trust: &TrustStore,
    product: &str,
    uploader: &Uploader<'_>,
    copy: NamedTempFile,
    model: &str,
    progress: &dyn Progress,
) -> Result<Firmware> {
    let model = clean_model(model)?;
    let dir = firmware_dir(app);
    copy.as_file()
        .sync_all()
        .map_err(UpdaterError::io(copy.path()))?;
    let policy = FirmwarePolicy {
        product: product.to_owned(),
        model: model.clone(),
        floor: stored_floor(app, &model)?,
        now: chrono::Utc::now().timestamp(),
    };
    let verified = verify_bundle_with(
        copy.path(),
        &trust.current()?,
        &|manifest| check_firmware(manifest, &policy),
        progress,
    )?;
    let manifest = &verified.manifest;
    let payload = manifest
        .payloads
        .first()
        .ok_or_else(|| Rejection::Malformed {
            expected: "firmware bundle",
            problem: "no payload".into(),
        })?;
    // The ingest service, another user of the same group, serves the file to devices;
    // whoever uploads (root at the console, or the portal's user), it must be able to read it.
    copy.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o640))
        .map_err(UpdaterError::io(copy.path()))?;
    let file_name = format!("{model}-{}-{}.pgb", manifest.version, &payload.sha256[..16]);
    let stored_path = dir.join(&file_name);
    copy.persist_noclobber(&stored_path)
        .map_err(|err| UpdaterError::io(&stored_path)(err.error))?;
    let new = NewFirmware {
        model: model.clone(),
        version: manifest.version.to_string(),
        security_version: i64::try_from(manifest.security_version).unwrap_or(i64::MAX),
        file_name,
        payload_offset: i64::try_from(verified.payload_offset).unwrap_or(i64::MAX),
        payload_size: i64::try_from(payload.size).unwrap_or(i64::MAX),
        payload_sha256: payload.sha256.clone(),
        signed_by: verified.signed_by.join(", "),
        uploaded_at_us: now_us(),
    };
    Firmware::record_from(&app.audit, uploader.actor, uploader.source, new).map_err(|err| {
        let _ = std::fs::remove_file(&stored_path);
        err.into()
    })
}
