//! The device registry: monitors, data loggers and gateways that post telemetry, and their
//! credentials.
//!
//! A device secret is 32 random bytes from openssl's CSPRNG, shown once and stored as its
//! SHA-256 only. A slow password hash (argon2) defends guessable human passwords; a 256-bit
//! random secret cannot be guessed, so one SHA-256 is as strong and lets the ingest check
//! every request without spending tens of milliseconds of CPU on it. The hash is unique,
//! so a secret alone names its device.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::{Error, Result};
pub use crate::ids::DeviceId;
use crate::ids::{OrganisationId, SiteId};
use crate::schema::{audit_append_lock, device_certificates, devices, sites};
use crate::store::DbConnection;
use crate::store::on_backend;

const SECRET_PREFIX: &str = "pgd_";
const MAX_SERIAL_LEN: usize = 64;
const MAX_MODEL_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A mold or machine monitor (cycle counts, cycle times, temperature).
    Monitor,
    DataLogger,
    /// Relays readings for the devices registered behind it.
    Gateway,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Monitor => "monitor",
            DeviceKind::DataLogger => "data_logger",
            DeviceKind::Gateway => "gateway",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<DeviceKind> {
        match s {
            "monitor" => Ok(DeviceKind::Monitor),
            "data_logger" | "data-logger" => Ok(DeviceKind::DataLogger),
            "gateway" => Ok(DeviceKind::Gateway),
            other => Err(Error::invalid(
                "kind",
                format!("{other:?} is not a device kind; allowed: monitor, data_logger, gateway"),
            )),
        }
    }
}

/// A device row, without its secret hash.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = devices)]
pub struct Device {
    pub id: DeviceId,
    pub organisation_id: OrganisationId,
    pub site_id: SiteId,
    pub serial: String,
    pub kind: String,
    pub gateway_id: Option<DeviceId>,
    pub created_at_us: i64,
    pub revoked_at_us: Option<i64>,
    pub firmware_version: Option<String>,
    pub battery_pct: Option<f64>,
    pub signal_dbm: Option<f64>,
    pub last_seen_at_us: Option<i64>,
    /// The model, for firmware bundles that target `device:MODEL`.
    pub model: Option<String>,
}

/// A device secret as handed to a person or a device: shown once, never stored.
#[derive(PartialEq, Eq)]
pub struct DeviceSecret(String);

impl DeviceSecret {
    fn generate() -> Result<DeviceSecret> {
        let mut bytes = [0u8; 32];
        openssl::rand::rand_bytes(&mut bytes)?;
        Ok(DeviceSecret(format!(
            "{SECRET_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret(..)")
    }
}

/// The stored form of a secret.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    openssl::sha::sha256(secret.as_bytes()).to_vec()
}

/// What `plantgate device add` asks for.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    pub serial: String,
    pub kind: DeviceKind,
    pub site: SiteId,
    /// The serial of the gateway this device sits behind, if any.
    pub gateway: Option<String>,
    /// The device's model, which decides the firmware it may receive.
    pub model: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = devices)]
struct NewDevice<'a> {
    organisation_id: OrganisationId,
    site_id: SiteId,
    serial: &'a str,
    kind: &'a str,
    gateway_id: Option<DeviceId>,
    secret_hash: Option<Vec<u8>>,
    created_at_us: i64,
    model: Option<&'a str>,
}

/// Serials are printable ASCII without spaces or MQTT topic characters (`/`, `+`, `#`).
pub fn clean_serial(raw: &str) -> Result<String> {
    let serial = raw.trim();
    let valid = !serial.is_empty()
        && serial.len() <= MAX_SERIAL_LEN
        && serial
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '+' | '#'));
    if valid {
        Ok(serial.to_owned())
    } else {
        Err(Error::invalid(
            "serial",
            format!(
                "{raw:?} is not a serial: 1-{MAX_SERIAL_LEN} printable ASCII characters, no spaces, '/', '+' or '#'"
            ),
        ))
    }
}

/// Models are 1-64 of `A-Z a-z 0-9 . _ -`, so that `device:MODEL` is unambiguous.
pub fn clean_model(raw: &str) -> Result<String> {
    let model = raw.trim();
    let valid = !model.is_empty()
        && model.len() <= MAX_MODEL_LEN
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(model.to_owned())
    } else {
        Err(Error::invalid(
            "model",
            format!("{raw:?} is not a model: 1-{MAX_MODEL_LEN} of A-Z a-z 0-9 . _ -"),
        ))
    }
}

impl Device {
    pub fn kind(&self) -> Result<DeviceKind> {
        self.kind.parse()
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at_us.is_some()
    }

    /// Whether this device may post readings on behalf of `other`: itself, or, for a
    /// gateway, a device registered behind it.
    pub fn may_post_for(&self, other: &Device) -> bool {
        self.id == other.id
            || (self.kind == DeviceKind::Gateway.as_str() && other.gateway_id == Some(self.id))
    }

    /// Registers a device as of `now` and issues its secret, audited `device.enrolled` and
    /// `device.credential.issued` in the same transaction.
    pub fn register(
        audit: &Audit,
        actor: &Actor,
        request: &DeviceRequest,
        now: i64,
    ) -> Result<(Device, DeviceSecret)> {
        let serial = clean_serial(&request.serial)?;
        let model = request.model.as_deref().map(clean_model).transpose()?;
        let secret = DeviceSecret::generate()?;
        let hash = secret_hash(secret.reveal());
        let device = audit.record_with(|conn| {
            let organisation: OrganisationId = sites::table
                .find(request.site)
                .select(sites::organisation_id)
                .first(conn)
                .optional()?
                .ok_or(Error::NotFound("site"))?;
            let gateway_id = match &request.gateway {
                None => None,
                Some(gateway) => {
                    let gateway =
                        Device::find_by_serial(conn, gateway)?.ok_or(Error::NotFound("gateway"))?;
                    if gateway.kind()? != DeviceKind::Gateway {
                        return Err(Error::invalid(
                            "gateway",
                            format!("{} is a {}, not a gateway", gateway.serial, gateway.kind),
                        ));
                    }
                    if gateway.organisation_id != organisation {
                        return Err(Error::invalid(
                            "gateway",
                            format!("{} belongs to another organisation", gateway.serial),
                        ));
                    }
                    Some(gateway.id)
                }
            };
            let device = on_backend!(conn, c => diesel::insert_into(devices::table)
                .values(NewDevice {
                    organisation_id: organisation,
                    site_id: request.site,
                    serial: &serial,
                    kind: request.kind.as_str(),
                    gateway_id,
                    secret_hash: Some(hash.clone()),
                    created_at_us: now,
                    model: model.as_deref(),
                })
                .returning(Device::as_returning())
                .get_result(c))
            .map_err(|err| match err {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => Error::Conflict(format!("a device with serial {serial:?} already exists")),
                other => other.into(),
            })?;
            let events = vec![
                AuditEvent::new(actor.clone(), "device.enrolled")
                    .target(device.id)
                    .details(serde_json::json!({
                        "serial": device.serial,
                        "kind": device.kind,
                        "site": device.site_id,
                        "gateway": request.gateway,
                        "model": device.model,
                    })),
                AuditEvent::new(actor.clone(), "device.credential.issued")
                    .target(device.id)
                    .details(
                        serde_json::json!({ "serial": device.serial, "credential": "secret" }),
                    ),
            ];
            Ok((device, events))
        })?;
        Ok((device, secret))
    }

    /// Replaces a device's secret; the old one stops working at once.
    pub fn rotate_secret(audit: &Audit, actor: &Actor, serial: &str) -> Result<DeviceSecret> {
        let secret = DeviceSecret::generate()?;
        let hash = secret_hash(secret.reveal());
        audit.record_with(|conn| {
            let device = Device::find_by_serial(conn, serial)?.ok_or(Error::NotFound("device"))?;
            diesel::update(devices::table.find(device.id))
                .set((
                    devices::secret_hash.eq(Some(hash.clone())),
                    devices::revoked_at_us.eq(None::<i64>),
                ))
                .execute(conn)?;
            let event = AuditEvent::new(actor.clone(), "device.credential.rotated")
                .target(device.id)
                .details(serde_json::json!({ "serial": device.serial }));
            Ok(((), vec![event]))
        })?;
        Ok(secret)
    }

    /// Revokes a device's credential as of `now`: it can no longer post over HTTPS or MQTT.
    pub fn revoke(audit: &Audit, actor: &Actor, serial: &str, now: i64) -> Result<Device> {
        audit.record_with(|conn| {
            let device = Device::find_by_serial(conn, serial)?.ok_or(Error::NotFound("device"))?;
            diesel::update(devices::table.find(device.id))
                .set((
                    devices::secret_hash.eq(None::<Vec<u8>>),
                    devices::revoked_at_us.eq(Some(now)),
                ))
                .execute(conn)?;
            let event = AuditEvent::new(actor.clone(), "device.credential.revoked")
                .target(device.id)
                .details(serde_json::json!({ "serial": device.serial }));
            Ok((device, vec![event]))
        })
    }

    /// The device with this serial in `organisation`, or "not found" (another
    /// organisation's devices do not exist for it).
    pub fn find_in(
        conn: &mut DbConnection,
        organisation: OrganisationId,
        serial: &str,
    ) -> Result<Device> {
        Device::find_by_serial(conn, serial)?
            .filter(|device| device.organisation_id == organisation)
            .ok_or(Error::NotFound("device"))
    }

    pub fn find(conn: &mut DbConnection, id: DeviceId) -> Result<Option<Device>> {
        Ok(devices::table
            .find(id)
            .select(Device::as_select())
            .first(conn)
            .optional()?)
    }

    pub fn find_by_serial(conn: &mut DbConnection, serial: &str) -> Result<Option<Device>> {
        Ok(devices::table
            .filter(devices::serial.eq(serial))
            .select(Device::as_select())
            .first(conn)
            .optional()?)
    }

    /// The devices with these serials; unknown ones are simply absent.
    pub fn find_by_serials(conn: &mut DbConnection, serials: &[&str]) -> Result<Vec<Device>> {
        Ok(devices::table
            .filter(devices::serial.eq_any(serials))
            .select(Device::as_select())
            .load(conn)?)
    }

    /// The unrevoked device whose secret this is, if any.
    pub fn authenticate(conn: &mut DbConnection, secret: &str) -> Result<Option<Device>> {
        if !secret.starts_with(SECRET_PREFIX) || secret.len() > 128 {
            return Ok(None);
        }
        Ok(devices::table
            .filter(devices::secret_hash.eq(secret_hash(secret)))
            .filter(devices::revoked_at_us.is_null())
            .select(Device::as_select())
            .first(conn)
            .optional()?)
    }

    pub fn list(conn: &mut DbConnection) -> Result<Vec<Device>> {
        Ok(devices::table
            .order(devices::serial)
            .select(Device::as_select())
            .load(conn)?)
    }

    pub fn list_for_site(conn: &mut DbConnection, site: SiteId) -> Result<Vec<Device>> {
        Ok(devices::table
            .filter(devices::site_id.eq(site))
            .order(devices::serial)
            .select(Device::as_select())
            .load(conn)?)
    }
}

/// What a device proved itself with, as a connection keeps it to check it again later
/// (a revoke must reach connections that are already open): the SHA-256 of its secret, or
/// the SHA-256 fingerprint of its client certificate. Neither is secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Credential {
    Secret(Vec<u8>),
    Certificate(Vec<u8>),
}

/// Rows per `IN (...)` list, well below both backends' bound-parameter limits.
const CHECK_CHUNK: usize = 500;

impl Credential {
    pub fn of_secret(secret: &str) -> Credential {
        Credential::Secret(secret_hash(secret))
    }

    /// The credential of a client certificate (DER).
    pub fn of_certificate(der: &[u8]) -> Result<Credential> {
        let cert = openssl::x509::X509::from_der(der)?;
        Ok(Credential::Certificate(
            cert.digest(openssl::hash::MessageDigest::sha256())?
                .to_vec(),
        ))
    }

    /// Inside a transaction: whether the credential still authenticates its device as of
    /// `now` (the secret is the device's current one and the device is not revoked; the
    /// certificate is issued, unrevoked, unexpired at `now`, and its device not revoked), and
    /// if so, holds it so until the transaction ends.
    ///
    /// It checks with writes that change nothing: on SQLite the first write takes the
    /// database's write lock (so call this before anything else in the transaction, which
    /// then never reads a snapshot a concurrent commit could make stale); on PostgreSQL each
    /// takes the row's lock, and a row a concurrent revoke changed is checked again as that
    /// revoke committed it. Either way a revoke, rotation or certificate revocation commits
    /// wholly before this check or wholly after the transaction.
    pub fn hold(&self, conn: &mut DbConnection, now: i64) -> Result<bool> {
        let device = match self {
            Credential::Secret(hash) => {
                let held = diesel::update(
                    devices::table
                        .filter(devices::secret_hash.eq(hash))
                        .filter(devices::revoked_at_us.is_null()),
                )
                .set(devices::revoked_at_us.eq(None::<i64>))
                .execute(conn)?;
                return Ok(held == 1);
            }
            Credential::Certificate(fingerprint) => {
                let held = diesel::update(
                    device_certificates::table
                        .filter(device_certificates::fingerprint.eq(fingerprint))
                        .filter(device_certificates::revoked_at_us.is_null())
                        .filter(device_certificates::not_after_us.gt(now)),
                )
                .set(device_certificates::revoked_at_us.eq(None::<i64>))
                .execute(conn)?;
                if held != 1 {
                    return Ok(false);
                }
                device_certificates::table
                    .filter(device_certificates::fingerprint.eq(fingerprint))
                    .select(device_certificates::device_id)
                    .first::<DeviceId>(conn)?
            }
        };
        let held = diesel::update(
            devices::table
                .find(device)
                .filter(devices::revoked_at_us.is_null()),
        )
        .set(devices::revoked_at_us.eq(None::<i64>))
        .execute(conn)?;
        Ok(held == 1)
    }
}

/// Of `credentials`, the ones that no longer authenticate as of `now`, by the same rules as
/// [`Device::authenticate`] and [`crate::device_ca::authenticate`]. Reads only.
pub fn revoked_among(
    conn: &mut DbConnection,
    credentials: &[Credential],
    now: i64,
) -> Result<Vec<Credential>> {
    let mut secrets = Vec::new();
    let mut certificates = Vec::new();
    for credential in credentials {
        match credential {
            Credential::Secret(hash) => secrets.push(hash.clone()),
            Credential::Certificate(fingerprint) => certificates.push(fingerprint.clone()),
        }
    }
    let mut live = std::collections::HashSet::new();
    for chunk in secrets.chunks(CHECK_CHUNK) {
        let hashes: Vec<Option<Vec<u8>>> = devices::table
            .filter(devices::secret_hash.eq_any(chunk))
            .filter(devices::revoked_at_us.is_null())
            .select(devices::secret_hash)
            .load(conn)?;
        live.extend(hashes.into_iter().flatten().map(Credential::Secret));
    }
    for chunk in certificates.chunks(CHECK_CHUNK) {
        let fingerprints: Vec<Vec<u8>> = device_certificates::table
            .inner_join(devices::table)
            .filter(device_certificates::fingerprint.eq_any(chunk))
            .filter(device_certificates::revoked_at_us.is_null())
            .filter(device_certificates::not_after_us.gt(now))
            .filter(devices::revoked_at_us.is_null())
            .select(device_certificates::fingerprint)
            .load(conn)?;
        live.extend(fingerprints.into_iter().map(Credential::Certificate));
    }
    Ok(credentials
        .iter()
        .filter(|credential| !live.contains(*credential))
        .cloned()
        .collect())
}

/// A number that moves whenever a device credential may have changed, for a process that
/// keeps connections open and polls it (one row, one read). Every change to a credential
/// (rotation, revocation, certificate revocation) is audited in its own transaction
/// ([`Audit::record_with`]), and every such transaction first counts itself in
/// `audit_append_lock.appends`: as long as the number has not moved, nothing was revoked.
/// It moves for every other audited change too, so it says "look again", not what changed.
pub fn credentials_generation(conn: &mut DbConnection) -> Result<i64> {
    Ok(audit_append_lock::table
        .select(audit_append_lock::appends)
        .first(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_refuse_topic_characters_and_spaces() {
        assert_eq!(clean_serial(" MM-0042 ").ok(), Some("MM-0042".to_owned()));
        for bad in ["", "a b", "a/b", "a+", "#", &"x".repeat(65), "é"] {
            assert!(clean_serial(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn secrets_are_random_and_hidden_from_debug() {
        let a = DeviceSecret::generate().expect("secret");
        let b = DeviceSecret::generate().expect("secret");
        assert_ne!(a, b);
        assert!(a.reveal().starts_with(SECRET_PREFIX));
        assert_eq!(format!("{a:?}"), "DeviceSecret(..)");
        assert_eq!(secret_hash(a.reveal()).len(), 32);
    }
}
