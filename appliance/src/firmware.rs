//! Firmware for field devices: verified bundles (the file lives under
//! `{data_dir}/firmware/`, its facts here), staged rollouts to a chosen set of devices of the
//! bundle's model, and each device's progress. A rollout stops by itself once too many of
//! its devices fail (hawkBit's error threshold).
//!
//! The core never checks signatures: `updater` verifies a bundle before `Firmware::record`
//! stores it, and devices verify it again themselves against their own anchors.

use std::fmt;
use std::str::FromStr;

use diesel::prelude::*;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::devices::Device;
pub use crate::devices::clean_model;
use crate::error::{Error, Result};
use crate::ids::OrganisationId;
pub use crate::ids::{FirmwareId, RolloutId};
use crate::schema::{devices, firmware, firmware_rollout_devices, firmware_rollouts};
use crate::store::DbConnection;
use crate::store::on_backend;

/// Detail a device may attach to a status report.
pub const MAX_DETAIL_LEN: usize = 500;

/// A stored, verified firmware bundle.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = firmware)]
pub struct Firmware {
    pub id: FirmwareId,
    pub model: String,
    pub version: String,
    pub security_version: i64,
    /// Under `{data_dir}/firmware/`.
    pub file_name: String,
    /// The signed header (magic, manifest, signatures) is bytes `[0, payload_offset)`.
    pub payload_offset: i64,
    pub payload_size: i64,
    pub payload_sha256: String,
    /// The trust anchors whose signatures met the threshold, comma-separated.
    pub signed_by: String,
    pub uploaded_at_us: i64,
}

/// What the updater found in a bundle it verified; `Firmware::record` stores it.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = firmware)]
pub struct NewFirmware {
    pub model: String,
    pub version: String,
    pub security_version: i64,
    pub file_name: String,
    pub payload_offset: i64,
    pub payload_size: i64,
    pub payload_sha256: String,
    pub signed_by: String,
    pub uploaded_at_us: i64,
}

impl Firmware {
    /// Stores a verified bundle's facts, audited `firmware.uploaded` in the same transaction.
    pub fn record(audit: &Audit, actor: &Actor, new: NewFirmware) -> Result<Firmware> {
        Firmware::record_from(audit, actor, "local", new)
    }

    /// As [`Firmware::record`], for an upload from `source` (the portal's client address).
    pub fn record_from(
        audit: &Audit,
        actor: &Actor,
        source: &str,
        new: NewFirmware,
    ) -> Result<Firmware> {
        clean_model(&new.model)?;
        audit.record_with(|conn| {
            let row = on_backend!(conn, c => diesel::insert_into(firmware::table)
                .values(&new)
                .returning(Firmware::as_returning())
                .get_result(c))
            .map_err(|err| match err {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => Error::Conflict(format!(
                    "firmware {} for model {} is already stored",
                    new.version, new.model
                )),
                other => other.into(),
            })?;
            let event = AuditEvent::new(actor.clone(), "firmware.uploaded")
                .source(source)
                .target(row.id)
                .details(serde_json::json!({
                    "model": row.model,
                    "version": row.version,
                    "security_version": row.security_version,
                    "payload_size": row.payload_size,
                    "payload_sha256": row.payload_sha256,
                    "signed_by": row.signed_by,
                    "file": row.file_name,
                }));
            Ok((row, vec![event]))
        })
    }

    pub fn find(conn: &mut DbConnection, id: FirmwareId) -> Result<Option<Firmware>> {
        Ok(firmware::table
            .find(id)
            .select(Firmware::as_select())
            .first(conn)
            .optional()?)
    }

    pub fn list(conn: &mut DbConnection) -> Result<Vec<Firmware>> {
        Ok(firmware::table
            .order(firmware::id)
            .select(Firmware::as_select())
            .load(conn)?)
    }

    pub fn for_model(conn: &mut DbConnection, model: &str) -> Result<Vec<Firmware>> {
        Ok(firmware::table
            .filter(firmware::model.eq(model))
            .order(firmware::id)
            .select(Firmware::as_select())
            .load(conn)?)
    }
}

/// Where a rollout stands. Only a running rollout offers its firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused,
    /// Stopped by the failure threshold; it is not resumed.
    Stopped,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Stopped => "stopped",
        }
    }
}

/// A device's progress, as it reports it (`assigned` until its first report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Assigned,
    Downloading,
    Downloaded,
    Verified,
    Installing,
    Updated,
    Failed,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Assigned => "assigned",
            DeviceStatus::Downloading => "downloading",
            DeviceStatus::Downloaded => "downloaded",
            DeviceStatus::Verified => "verified",
            DeviceStatus::Installing => "installing",
            DeviceStatus::Updated => "updated",
            DeviceStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceStatus {
    type Err = Error;
    /// What a device may report; `assigned` is the appliance's, not the device's.
    fn from_str(s: &str) -> Result<DeviceStatus> {
        match s {
            "downloading" => Ok(DeviceStatus::Downloading),
            "downloaded" => Ok(DeviceStatus::Downloaded),
            "verified" => Ok(DeviceStatus::Verified),
            "installing" => Ok(DeviceStatus::Installing),
            "updated" => Ok(DeviceStatus::Updated),
            "failed" => Ok(DeviceStatus::Failed),
            other => Err(Error::invalid(
                "status",
                format!(
                    "{other:?} is not a status; allowed: downloading, downloaded, verified, installing, updated, failed"
                ),
            )),
        }
    }
}

/// Which devices of the firmware's model a rollout reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// This share (1-100) of the model's active devices, chosen by a stable hash of the
    /// serial, so that a bigger share later reaches a superset.
    Percent(u8),
    /// Exactly these serials; each must be an active device of the model.
    Serials(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RolloutRequest {
    pub firmware: FirmwareId,
    pub selection: Selection,
    /// Stop once more than this share (0-100) of the rollout's devices failed.
    pub failure_threshold_pct: u8,
    /// Only this organisation's devices (the portal: an administrator's own); `None` for
    /// every organisation's (the command line, run by root on the box).
    pub organisation: Option<OrganisationId>,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = firmware_rollouts)]
pub struct Rollout {
    pub id: RolloutId,
    pub firmware_id: FirmwareId,
    /// `percent:N` or `serials`.
    pub selection: String,
    pub failure_threshold_pct: i32,
    pub state: String,
    pub stop_reason: Option<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = firmware_rollouts)]
struct NewRollout<'a> {
    firmware_id: FirmwareId,
    selection: &'a str,
    failure_threshold_pct: i32,
    state: &'a str,
    created_at_us: i64,
    updated_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = firmware_rollout_devices)]
pub struct RolloutDevice {
    pub rollout_id: RolloutId,
    pub device_id: crate::ids::DeviceId,
    pub status: String,
    pub detail: String,
    pub updated_at_us: i64,
}

/// A rollout with its devices' progress, for `rollout list`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutSummary {
    pub rollout: Rollout,
    pub firmware: Firmware,
    /// (serial, status, detail), by serial.
    pub devices: Vec<(String, String, String)>,
}

impl RolloutSummary {
    pub fn count(&self, status: DeviceStatus) -> usize {
        self.devices
            .iter()
            .filter(|(_, s, _)| s == status.as_str())
            .count()
    }
}

/// What a device is offered: the firmware, and the rollout that offers it.
#[derive(Debug, Clone)]
pub struct Offer {
    pub firmware: Firmware,
    pub rollout: Rollout,
    pub member: RolloutDevice,
}

/// The answer to a device's status report.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReceipt {
    pub status: DeviceStatus,
    pub rollout: RolloutId,
    pub rollout_state: String,
}

fn stable_rank(firmware: FirmwareId, serial: &str) -> [u8; 32] {
    openssl::sha::sha256(format!("{}:{serial}", firmware.0).as_bytes())
}

impl Rollout {
    pub fn state(&self) -> RolloutState {
        match self.state.as_str() {
            "running" => RolloutState::Running,
            "paused" => RolloutState::Paused,
            _ => RolloutState::Stopped,
        }
    }

    /// Chooses the devices and starts offering them the firmware as of `now`, audited
    /// `firmware.rollout.created` with every chosen serial.
    pub fn create(
        audit: &Audit,
        actor: &Actor,
        request: &RolloutRequest,
        now: i64,
    ) -> Result<Rollout> {
        Rollout::create_from(audit, actor, "local", request, now)
    }

    /// As [`Rollout::create`], asked from `source` (the portal's client address).
    pub fn create_from(
        audit: &Audit,
        actor: &Actor,
        source: &str,
        request: &RolloutRequest,
        now: i64,
    ) -> Result<Rollout> {
        if request.failure_threshold_pct > 100 {
            return Err(Error::invalid(
                "failure_threshold_pct",
                format!(
                    "{} is not a percentage (0-100)",
                    request.failure_threshold_pct
                ),
            ));
        }
        audit.record_with(|conn| {
            let fw = Firmware::find(conn, request.firmware)?.ok_or(Error::NotFound("firmware"))?;
            let mut query = devices::table
                .filter(devices::model.eq(&fw.model))
                .filter(devices::revoked_at_us.is_null())
                .select(Device::as_select())
                .into_boxed();
            if let Some(organisation) = request.organisation {
                query = query.filter(devices::organisation_id.eq(organisation));
            }
            let candidates: Vec<Device> = query.load(conn)?;
            let (selection, chosen) = match &request.selection {
                Selection::Percent(pct) => {
                    if !(1..=100).contains(pct) {
                        return Err(Error::invalid(
                            "percent",
                            format!("{pct} is not a share of devices (1-100)"),
                        ));
                    }
                    let mut ranked = candidates;
                    ranked.sort_by_key(|d| stable_rank(fw.id, &d.serial));
                    let take = (ranked.len() * usize::from(*pct)).div_ceil(100);
                    ranked.truncate(take);
                    (format!("percent:{pct}"), ranked)
                }
                Selection::Serials(serials) => {
                    let mut chosen = Vec::new();
                    for serial in serials {
                        let device =
                            candidates
                                .iter()
                                .find(|d| &d.serial == serial)
                                .ok_or_else(|| {
                                    Error::invalid(
                                        "serial",
                                        format!(
                                            "{serial} is not an active device of model {}",
                                            fw.model
                                        ),
                                    )
                                })?;
                        if !chosen.contains(device) {
                            chosen.push(device.clone());
                        }
                    }
                    ("serials".to_owned(), chosen)
                }
            };
            if chosen.is_empty() {
                return Err(Error::invalid(
                    "selection",
                    format!("it reaches no active device of model {}", fw.model),
                ));
            }
            let rollout = on_backend!(conn, c => diesel::insert_into(firmware_rollouts::table)
                .values(NewRollout {
                    firmware_id: fw.id,
                    selection: &selection,
                    failure_threshold_pct: i32::from(request.failure_threshold_pct),
                    state: RolloutState::Running.as_str(),
                    created_at_us: now,
                    updated_at_us: now,
                })
                .returning(Rollout::as_returning())
                .get_result(c))?;
            let members: Vec<RolloutDevice> = chosen
                .iter()
                .map(|d| RolloutDevice {
                    rollout_id: rollout.id,
                    device_id: d.id,
                    status: DeviceStatus::Assigned.as_str().into(),
                    detail: String::new(),
                    updated_at_us: now,
                })
                .collect();
            on_backend!(conn, c => diesel::insert_into(firmware_rollout_devices::table)
                .values(&members)
                .execute(c))?;
            let serials: Vec<&str> = chosen.iter().map(|d| d.serial.as_str()).collect();
            let event = AuditEvent::new(actor.clone(), "firmware.rollout.created")
                .source(source)
                .target(rollout.id)
                .details(serde_json::json!({
                    "firmware": fw.id,
                    "model": fw.model,
                    "version": fw.version,
                    "selection": selection,
                    "failure_threshold_pct": request.failure_threshold_pct,
                    "devices": serials,
                }));
            Ok((rollout, vec![event]))
        })
    }

    /// Pauses (`running` -> `paused`) or resumes (`paused` -> `running`) a rollout as of
    /// `now`, audited. A rollout stopped by its failure threshold stays stopped.
    pub fn set_paused(
        audit: &Audit,
        actor: &Actor,
        id: RolloutId,
        paused: bool,
        now: i64,
    ) -> Result<Rollout> {
        Rollout::set_paused_from(audit, actor, "local", id, paused, now)
    }

    /// As [`Rollout::set_paused`], asked from `source` (the portal's client address).
    pub fn set_paused_from(
        audit: &Audit,
        actor: &Actor,
        source: &str,
        id: RolloutId,
        paused: bool,
        now: i64,
    ) -> Result<Rollout> {
        audit.record_with(|conn| {
            let rollout = Rollout::find(conn, id)?.ok_or(Error::NotFound("rollout"))?;
            let (from, to, action) = if paused {
                (
                    RolloutState::Running,
                    RolloutState::Paused,
                    "firmware.rollout.paused",
                )
            } else {
                (
                    RolloutState::Paused,
                    RolloutState::Running,
                    "firmware.rollout.resumed",
                )
            };
            if rollout.state() != from {
                return Err(Error::Conflict(format!(
                    "rollout {} is {}, not {}",
                    id.0,
                    rollout.state,
                    from.as_str()
                )));
            }
            diesel::update(firmware_rollouts::table.find(id))
                .set((
                    firmware_rollouts::state.eq(to.as_str()),
                    firmware_rollouts::updated_at_us.eq(now),
                ))
                .execute(conn)?;
            let rollout = Rollout::find(conn, id)?.ok_or(Error::NotFound("rollout"))?;
            let event = AuditEvent::new(actor.clone(), action)
                .source(source)
                .target(id)
                .details(serde_json::json!({ "firmware": rollout.firmware_id }));
            Ok((rollout, vec![event]))
        })
    }

    pub fn find(conn: &mut DbConnection, id: RolloutId) -> Result<Option<Rollout>> {
        Ok(firmware_rollouts::table
            .find(id)
            .select(Rollout::as_select())
            .first(conn)
            .optional()?)
    }

    /// The rollouts whose devices all belong to `organisation`: the ones its administrators
    /// see and steer in the portal. A rollout that also reaches another organisation's
    /// devices (made on the command line) is left to the command line.
    pub fn list_for_organisation(
        conn: &mut DbConnection,
        organisation: OrganisationId,
    ) -> Result<Vec<RolloutSummary>> {
        let outside: Vec<RolloutId> = firmware_rollout_devices::table
            .inner_join(devices::table)
            .filter(devices::organisation_id.ne(organisation))
            .select(firmware_rollout_devices::rollout_id)
            .distinct()
            .load(conn)?;
        Ok(Rollout::list(conn)?
            .into_iter()
            .filter(|summary| !outside.contains(&summary.rollout.id))
            .collect())
    }

    pub fn list(conn: &mut DbConnection) -> Result<Vec<RolloutSummary>> {
        let rows: Vec<(Rollout, Firmware)> = firmware_rollouts::table
            .inner_join(firmware::table)
            .order(firmware_rollouts::id)
            .select((Rollout::as_select(), Firmware::as_select()))
            .load(conn)?;
        let mut summaries = Vec::with_capacity(rows.len());
        for (rollout, firmware) in rows {
            let devices = firmware_rollout_devices::table
                .inner_join(devices::table)
                .filter(firmware_rollout_devices::rollout_id.eq(rollout.id))
                .order(devices::serial)
                .select((
                    devices::serial,
                    firmware_rollout_devices::status,
                    firmware_rollout_devices::detail,
                ))
                .load(conn)?;
            summaries.push(RolloutSummary {
                rollout,
                firmware,
                devices,
            });
        }
        Ok(summaries)
    }
}

/// The device's membership in the newest rollout of `firmware` that includes it, if the
/// device is of the firmware's model.
fn membership(
    conn: &mut DbConnection,
    device: &Device,
    firmware_id: FirmwareId,
) -> Result<Option<Offer>> {
    let Some(fw) = Firmware::find(conn, firmware_id)? else {
        return Ok(None);
    };
    if device.model.as_deref() != Some(fw.model.as_str()) {
        return Ok(None);
    }
    let found: Option<(Rollout, RolloutDevice)> = firmware_rollouts::table
        .inner_join(firmware_rollout_devices::table)
        .filter(firmware_rollouts::firmware_id.eq(firmware_id))
        .filter(firmware_rollout_devices::device_id.eq(device.id))
        .order(firmware_rollouts::id.desc())
        .select((Rollout::as_select(), RolloutDevice::as_select()))
        .first(conn)
        .optional()?;
    Ok(found.map(|(rollout, member)| Offer {
        firmware: fw,
        rollout,
        member,
    }))
}

impl Offer {
    /// The firmware `device` may fetch now: it is in a running rollout of it and of its model.
    pub fn find(
        conn: &mut DbConnection,
        device: &Device,
        firmware: FirmwareId,
    ) -> Result<Option<Offer>> {
        Ok(membership(conn, device, firmware)?
            .filter(|offer| offer.rollout.state() == RolloutState::Running))
    }

    /// Every firmware offered to `device` now, newest rollout first.
    pub fn all_for(conn: &mut DbConnection, device: &Device) -> Result<Vec<Offer>> {
        let ids: Vec<FirmwareId> = firmware_rollouts::table
            .inner_join(firmware_rollout_devices::table)
            .filter(firmware_rollout_devices::device_id.eq(device.id))
            .filter(firmware_rollouts::state.eq(RolloutState::Running.as_str()))
            .order(firmware_rollouts::id.desc())
            .select(firmware_rollouts::firmware_id)
            .load(conn)?;
        let mut offers: Vec<Offer> = Vec::new();
        for id in ids {
            if offers.iter().any(|o| o.firmware.id == id) {
                continue;
            }
            if let Some(offer) = Offer::find(conn, device, id)? {
                offers.push(offer);
            }
        }
        Ok(offers)
    }

    /// Records a device's report as of `now`, audited `firmware.device.status`. A failure
    /// that takes the rollout's failed share past its threshold stops the rollout in the same
    /// transaction, audited `firmware.rollout.stopped`. A device of a paused or stopped
    /// rollout may still report how its install ended.
    pub fn report(
        audit: &Audit,
        device: &Device,
        firmware_id: FirmwareId,
        status: DeviceStatus,
        detail: &str,
        source: &str,
        now: i64,
    ) -> Result<StatusReceipt> {
        if detail.chars().count() > MAX_DETAIL_LEN {
            return Err(Error::invalid(
                "detail",
                format!("at most {MAX_DETAIL_LEN} characters"),
            ));
        }
        let actor = Actor::Device(device.serial.clone());
        audit.record_with(|conn| {
            let offer =
                membership(conn, device, firmware_id)?.ok_or(Error::NotFound("firmware offer"))?;
            diesel::update(firmware_rollout_devices::table.find((offer.rollout.id, device.id)))
                .set((
                    firmware_rollout_devices::status.eq(status.as_str()),
                    firmware_rollout_devices::detail.eq(detail),
                    firmware_rollout_devices::updated_at_us.eq(now),
                ))
                .execute(conn)?;
            if status == DeviceStatus::Updated {
                diesel::update(devices::table.find(device.id))
                    .set(devices::firmware_version.eq(&offer.firmware.version))
                    .execute(conn)?;
            }
            let mut events = vec![
                AuditEvent::new(actor.clone(), "firmware.device.status")
                    .source(source)
                    .target(device.id)
                    .outcome(if status == DeviceStatus::Failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    })
                    .details(serde_json::json!({
                        "serial": device.serial,
                        "firmware": offer.firmware.id,
                        "version": offer.firmware.version,
                        "rollout": offer.rollout.id,
                        "status": status.as_str(),
                        "detail": detail,
                    })),
            ];
            let mut state = offer.rollout.state();
            if status == DeviceStatus::Failed && state != RolloutState::Stopped {
                let statuses: Vec<String> = firmware_rollout_devices::table
                    .filter(firmware_rollout_devices::rollout_id.eq(offer.rollout.id))
                    .select(firmware_rollout_devices::status)
                    .load(conn)?;
                let failed = statuses
                    .iter()
                    .filter(|s| *s == DeviceStatus::Failed.as_str())
                    .count();
                let threshold = usize::try_from(offer.rollout.failure_threshold_pct).unwrap_or(0);
                if failed * 100 > threshold * statuses.len() {
                    let reason = format!(
                        "{failed} of {} devices failed, more than the {threshold}% threshold",
                        statuses.len()
                    );
                    diesel::update(firmware_rollouts::table.find(offer.rollout.id))
                        .set((
                            firmware_rollouts::state.eq(RolloutState::Stopped.as_str()),
                            firmware_rollouts::stop_reason.eq(Some(&reason)),
                            firmware_rollouts::updated_at_us.eq(now),
                        ))
                        .execute(conn)?;
                    state = RolloutState::Stopped;
                    events.push(
                        AuditEvent::new(
                            Actor::System("rollout".into()),
                            "firmware.rollout.stopped",
                        )
                        .target(offer.rollout.id)
                        .outcome(Outcome::Failure)
                        .details(serde_json::json!({
                            "firmware": offer.firmware.id,
                            "failed": failed,
                            "devices": statuses.len(),
                            "failure_threshold_pct": threshold,
                            "reason": reason,
                            "last_failure": device.serial,
                        })),
                    );
                }
            }
            Ok((
                StatusReceipt {
                    status,
                    rollout: offer.rollout.id,
                    rollout_state: state.as_str().into(),
                },
                events,
            ))
        })
    }
}
