//! The box side: verify, install into the inactive slot, check health at boot, mark good or
//! record the rollback. Every step is audited through the core library.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use appliance::{Actor, Appliance, AuditEvent, Outcome};
use openssl::sha::Sha256;
use serde_json::json;

use crate::bootenv::{BootEnv, BootState, booted_slot};
use crate::config::UpdaterConfig;
use crate::container::Envelope;
use crate::error::{Result, UpdaterError};
use crate::health::HealthCheck;
use crate::manifest::{APPLIANCE_TARGET, ROOTFS_PAYLOAD};
use crate::progress::Progress;
use crate::slots::{DeviceSlots, SlotId, Slots};
use crate::state::{SlotContent, UpdaterState};
use crate::trust::{TrustSet, TrustStore};
use crate::verify::{CHUNK, Floor, Policy, VerifiedBundle, verify_bundle};

pub struct Updater {
    pub app: Appliance,
    pub config: UpdaterConfig,
    pub slots: Box<dyn Slots>,
    pub env: Box<dyn BootEnv>,
    pub trust: TrustStore,
    pub actor: Actor,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("config", &self.config)
            .field("env", &self.env.describe())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub slot: SlotId,
    pub version: semver::Version,
    pub tries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub booted: SlotId,
    /// The booted slot was on its trial boots.
    pub trial: bool,
    pub marked_good: bool,
    /// `(check, problem)` for each failed check.
    pub failures: Vec<(String, String)>,
    /// The slot that ran out of trial boots, found on this boot.
    pub rolled_back_from: Option<SlotId>,
}

impl HealthReport {
    pub fn healthy(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What `plantgate-updater status` shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub booted: SlotId,
    pub boot: BootState,
    pub state: UpdaterState,
    pub trust_version: u64,
    pub threshold: usize,
    pub anchors: usize,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Updater {
    /// The image's updater: slots and the boot environment (GRUB or U-Boot) as configured.
    pub fn open(app: Appliance, config: UpdaterConfig) -> Updater {
        let slots = DeviceSlots {
            a: config.slots.a.clone(),
            b: config.slots.b.clone(),
        };
        let env = config.boot.env.open();
        let trust = config.trust_store(&app.config.data_dir);
        Updater {
            app,
            config,
            slots: Box::new(slots),
            env,
            trust,
            actor: Actor::System("updater".into()),
        }
    }

    pub fn booted(&self) -> Result<SlotId> {
        booted_slot(&self.config.boot.cmdline)
    }

    pub fn state(&self, booted: SlotId) -> Result<UpdaterState> {
        UpdaterState::load(
            &self.app.config.data_dir,
            booted,
            &self.config.factory_version,
        )
    }

    pub fn policy(&self) -> Result<Policy> {
        let booted = self.booted()?;
        let state = self.state(booted)?;
        let installed = state
            .slot(booted)
            .map(|s| s.version.clone())
            .unwrap_or_else(|| self.config.factory_version.clone());
        Ok(Policy {
            product: self.config.product.clone(),
            target: APPLIANCE_TARGET.into(),
            hardware: self.config.hardware.clone(),
            installed,
            floor: state.floor,
            now: now(),
        })
    }

    pub fn current_trust(&self) -> Result<TrustSet> {
        self.trust.current()
    }

    fn audit(&self, event: AuditEvent) -> Result<()> {
        self.app.audit.record(event)?;
        Ok(())
    }

    fn event(&self, action: &str) -> AuditEvent {
        AuditEvent::new(self.actor.clone(), action)
    }

    /// Verifies a bundle and records the result (with the exact reason for a refusal).
    pub fn verify(&self, path: &Path, progress: &dyn Progress) -> Result<VerifiedBundle> {
        let result = self
            .current_trust()
            .and_then(|trust| verify_bundle(path, &trust, &self.policy()?, progress));
        let file = path.display().to_string();
        match &result {
            Ok(bundle) => self.audit(
                self.event("updater.bundle.verified")
                    .target(format!("bundle:{}", bundle.manifest.version))
                    .details(json!({
                        "file": file,
                        "version": bundle.manifest.version.to_string(),
                        "security_version": bundle.manifest.security_version,
                        "signed_by": bundle.signed_by,
                    })),
            )?,
            Err(err) => self.audit(
                self.event("updater.bundle.rejected")
                    .target(format!("bundle:{file}"))
                    .outcome(Outcome::Denied)
                    .details(
                        json!({ "file": file, "code": err.code(), "reason": err.to_string() }),
                    ),
            )?,
        }
        result
    }

    /// Verifies the bundle, then writes it to the inactive slot and arms that slot for
    /// `boot_attempts` trial boots. Nothing is written unless every check passed.
    pub fn install(&self, path: &Path, progress: &dyn Progress) -> Result<InstallReport> {
        let booted = self.booted()?;
        let mut boot = BootState::load(self.env.as_ref())?;
        if !boot.good(booted) {
            return Err(UpdaterError::Usage(format!(
                "slot {booted} is running on trial and is not marked good yet; an install now \
                 would overwrite the only fallback. Run `plantgate-updater health` first."
            )));
        }
        let bundle = self.verify(path, progress)?;
        let target = booted.other();
        let payload_offset = bundle.payload_offset;
        let mut offset = payload_offset;
        let mut rootfs = None;
        for payload in &bundle.manifest.payloads {
            if payload.name == ROOTFS_PAYLOAD {
                rootfs = Some((offset, payload.clone()));
            }
            offset += payload.size;
        }
        let Some((offset, payload)) = rootfs else {
            return Err(UpdaterError::Usage(format!(
                "the bundle has no {ROOTFS_PAYLOAD:?} payload to install"
            )));
        };
        let mut state = self.state(booted)?;
        let version = bundle.manifest.version.clone();
        self.audit(
            self.event("updater.install.started")
                .target(format!("slot:{target}"))
                .details(json!({
                    "slot": target.as_str(),
                    "device": self.slots.describe(target),
                    "version": version.to_string(),
                    "from_version": state.slot(booted).map(|s| s.version.to_string()),
                })),
        )?;
        // Unbootable before the first byte: a crash mid-write leaves the old slot in charge.
        boot.set(target, false, false, 0);
        boot.set_order(booted);
        boot.save(self.env.as_ref())?;
        state.set_slot(target, None);
        state.pending = None;
        state.save(&self.app.config.data_dir)?;

        if let Err(err) = self.stream_payload(path, offset, &payload, target, progress) {
            let reason = match &err {
                UpdaterError::InstallFailed { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            self.audit(
                self.event("updater.install.failed")
                    .target(format!("slot:{target}"))
                    .outcome(Outcome::Failure)
                    .details(json!({ "slot": target.as_str(), "version": version.to_string(), "reason": reason })),
            )?;
            return Err(UpdaterError::InstallFailed {
                slot: target.to_string(),
                reason,
            });
        }

        let tries = self.config.boot_attempts;
        boot.set(target, true, false, tries);
        boot.set_order(target);
        boot.save(self.env.as_ref())?;
        state.set_slot(
            target,
            Some(SlotContent {
                version: version.clone(),
                security_version: bundle.manifest.security_version,
            }),
        );
        state.pending = Some(target);
        state.save(&self.app.config.data_dir)?;
        self.audit(
            self.event("updater.install.completed")
                .target(format!("slot:{target}"))
                .details(json!({
                    "slot": target.as_str(),
                    "version": version.to_string(),
                    "security_version": bundle.manifest.security_version,
                    "trial_boots": tries,
                })),
        )?;
        Ok(InstallReport {
            slot: target,
            version,
            tries,
        })
    }

    /// Copies one payload to the slot, hashing as it goes, in constant memory. The bundle
    /// was verified a moment ago; this second hash catches a file changed since.
    fn stream_payload(
        &self,
        path: &Path,
        offset: u64,
        payload: &crate::manifest::PayloadEntry,
        slot: SlotId,
        progress: &dyn Progress,
    ) -> Result<()> {
        let failed = |reason: String| UpdaterError::InstallFailed {
            slot: slot.to_string(),
            reason,
        };
        let mut file = crate::verify::open_bundle(path)?;
        file.seek(SeekFrom::Start(offset))
            .map_err(UpdaterError::io(path))?;
        let mut source = file.take(payload.size);
        let mut writer = self.slots.open_writer(slot)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        progress.start(&format!("writing slot {slot}"), payload.size);
        loop {
            let got = source.read(&mut buf).map_err(UpdaterError::io(path))?;
            if got == 0 {
                break;
            }
            hasher.update(&buf[..got]);
            writer
                .write_all(&buf[..got])
                .map_err(|err| failed(format!("writing {}: {err}", self.slots.describe(slot))))?;
            written += got as u64;
            progress.advance(got as u64);
        }
        writer
            .finish(written)
            .map_err(|err| failed(format!("flushing {}: {err}", self.slots.describe(slot))))?;
        progress.finish();
        if written != payload.size {
            return Err(failed(format!(
                "the bundle ended after {written} of {} payload bytes; it changed after it was verified",
                payload.size
            )));
        }
        let actual = hex::encode(hasher.finish());
        if actual != payload.sha256 {
            return Err(failed(format!(
                "the payload written hashes to {actual}, the manifest pins {}; the bundle changed after it was verified",
                payload.sha256
            )));
        }
        Ok(())
    }

    /// Runs at every boot: records a rollback found, runs the checks, and marks a slot on
    /// trial good when all pass. A failing trial slot is left to the bootloader's counter.
    pub fn health(&self, checks: &[Box<dyn HealthCheck>]) -> Result<HealthReport> {
        let booted = self.booted()?;
        let mut boot = BootState::load(self.env.as_ref())?;
        let mut state = self.state(booted)?;
        let other = booted.other();
        let mut rolled_back_from = None;
        if boot.exhausted(other) {
            self.audit(
                self.event("updater.rollback")
                    .target(format!("slot:{other}"))
                    .outcome(Outcome::Failure)
                    .details(json!({
                        "failed_slot": other.as_str(),
                        "failed_version": state.slot(other).map(|s| s.version.to_string()),
                        "running_slot": booted.as_str(),
                        "running_version": state.slot(booted).map(|s| s.version.to_string()),
                        "reason": "the new slot used up its trial boots without passing the health check",
                    })),
            )?;
            boot.set(other, false, false, 0);
            boot.set_order(booted);
            boot.save(self.env.as_ref())?;
            state.set_slot(other, None);
            state.pending = None;
            state.save(&self.app.config.data_dir)?;
            rolled_back_from = Some(other);
        }

        let trial = !boot.good(booted);
        let version = state.slot(booted).map(|s| s.version.to_string());
        if trial {
            self.audit(
                self.event("updater.boot.trial")
                    .target(format!("slot:{booted}"))
                    .details(json!({
                        "slot": booted.as_str(),
                        "version": version,
                        "trial_boots_left": boot.tries(booted),
                    })),
            )?;
        }
        let failures: Vec<(String, String)> = checks
            .iter()
            .filter_map(|check| check.run().err().map(|problem| (check.name(), problem)))
            .collect();
        if !failures.is_empty() {
            self.audit(
                self.event("updater.health.failed")
                    .target(format!("slot:{booted}"))
                    .outcome(Outcome::Failure)
                    .details(json!({
                        "slot": booted.as_str(),
                        "version": version,
                        "trial": trial,
                        "trial_boots_left": boot.tries(booted),
                        "failures": failures.iter().map(|(check, problem)| json!({"check": check, "problem": problem})).collect::<Vec<_>>(),
                    })),
            )?;
        }
        let mut marked_good = false;
        if trial && failures.is_empty() {
            boot.set(booted, true, true, 0);
            boot.set_order(booted);
            boot.save(self.env.as_ref())?;
            if let Some(content) = state.slot(booted).cloned() {
                state.floor = Floor {
                    version: content.version.max(state.floor.version.clone()),
                    security_version: content.security_version.max(state.floor.security_version),
                };
            }
            state.pending = None;
            state.save(&self.app.config.data_dir)?;
            self.audit(
                self.event("updater.slot.marked_good")
                    .target(format!("slot:{booted}"))
                    .details(json!({
                        "slot": booted.as_str(),
                        "version": version,
                        "floor_version": state.floor.version.to_string(),
                        "floor_security_version": state.floor.security_version,
                    })),
            )?;
            marked_good = true;
        }
        Ok(HealthReport {
            booted,
            trial,
            marked_good,
            failures,
            rolled_back_from,
        })
    }

    pub fn status(&self) -> Result<Status> {
        let booted = self.booted()?;
        let trust = self.current_trust()?;
        Ok(Status {
            booted,
            boot: BootState::load(self.env.as_ref())?,
            state: self.state(booted)?,
            trust_version: trust.version,
            threshold: trust.threshold,
            anchors: trust.anchors.len(),
        })
    }

    /// Accepts a new anchor set signed by the current threshold, and records the result.
    pub fn rotate_trust(&self, path: &Path) -> Result<TrustSet> {
        let result = crate::trust::read_anchor_set(path)
            .and_then(|envelope: Envelope| self.trust.rotate(&envelope));
        match &result {
            Ok(set) => self.audit(
                self.event("updater.trust.rotated")
                    .target(format!("anchors:v{}", set.version))
                    .details(json!({ "version": set.version, "threshold": set.threshold, "anchors": set.anchors.len() })),
            )?,
            Err(err) => self.audit(
                self.event("updater.trust.rejected")
                    .target(format!("anchors:{}", path.display()))
                    .outcome(Outcome::Denied)
                    .details(json!({ "code": err.code(), "reason": err.to_string() })),
            )?,
        }
        result
    }
}
