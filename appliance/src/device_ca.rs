//! Plantgate's own device CA: devices get client certificates by a one-time enrolment token
//! plus a CSR, renew with their current certificate, and lose them by revocation.
//!
//! The CA key lives in `{data_dir}/keys/device-ca.key` (0600), outside the store, like the
//! audit key: write access to the database cannot mint a device certificate. The store keeps
//! each issued certificate's SHA-256 fingerprint; the ingest accepts a certificate only if
//! it chains to the CA (checked in the handshake) and its fingerprint is issued, unrevoked
//! and unexpired (checked at the first request).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use diesel::prelude::*;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder, X509Req};

use crate::audit::{Actor, Audit, AuditEvent};
use crate::devices::Device;
use crate::enrolment::{self, EnrolmentToken};
use crate::error::{Error, Result};
use crate::ids::DeviceId;
use crate::schema::device_certificates;
use crate::store::DbConnection;
use crate::time::format_us;

const KEY_FILE: &str = "device-ca.key";
const CERT_FILE: &str = "device-ca.crt";
/// Issued certificates last a year; devices renew before that.
pub const CERTIFICATE_DAYS: u32 = 365;
/// An enrolment token is good for a week.
pub const TOKEN_VALIDITY_US: i64 = 7 * 24 * 3600 * 1_000_000;

fn ca_error(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::Key {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

pub struct DeviceCa {
    key: PKey<Private>,
    cert: X509,
    cert_path: PathBuf,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCa")
            .field("cert", &self.cert_path)
            .finish_non_exhaustive()
    }
}

pub fn enrolment_purpose(serial: &str) -> String {
    format!("device-certificate:{serial}")
}

impl DeviceCa {
    /// Makes the CA (P-256, ten years) in `keys_dir`: `plantgate init` does, once. Refuses
    /// to replace an existing key: every device certificate chains to it.
    pub fn generate(keys_dir: &Path) -> Result<()> {
        let key_path = keys_dir.join(KEY_FILE);
        let cert_path = keys_dir.join(CERT_FILE);
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let cert = make_ca(&key)?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .and_then(|mut file| {
                file.write_all(&key.private_key_to_pem_pkcs8()?)?;
                file.sync_all()
            })
            .map_err(|err| ca_error(&key_path, err))?;
        write_file(&cert_path, &cert.to_pem()?, 0o644)
    }

    /// Whether the CA's key exists (made by `plantgate init`).
    pub fn exists(keys_dir: &Path) -> bool {
        keys_dir.join(KEY_FILE).exists()
    }

    /// Loads the CA made by `plantgate init`; never makes one (a new CA would orphan every
    /// device certificate).
    pub fn load(keys_dir: &Path) -> Result<DeviceCa> {
        let key_path = keys_dir.join(KEY_FILE);
        let cert_path = keys_dir.join(CERT_FILE);
        let read = |path: &Path| {
            fs::read(path).map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => Error::NotInitialised {
                    what: "the device CA",
                    path: path.to_owned(),
                },
                _ => ca_error(path, err),
            })
        };
        let key =
            PKey::private_key_from_pem(&read(&key_path)?).map_err(|e| ca_error(&key_path, e))?;
        let cert = X509::from_pem(&read(&cert_path)?).map_err(|e| ca_error(&cert_path, e))?;
        if !cert.public_key()?.public_eq(&key) {
            return Err(ca_error(
                &cert_path,
                "does not belong to the CA key beside it",
            ));
        }
        Ok(DeviceCa {
            key,
            cert,
            cert_path,
        })
    }

    /// The CA certificate's file, for the TLS listener's client verification.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn cert_pem(&self) -> Result<Vec<u8>> {
        Ok(self.cert.to_pem()?)
    }

    /// A client certificate for `serial` with the CSR's public key. The CSR's own subject
    /// and extensions are ignored: the CA decides what the certificate says.
    /// A certificate for `serial`'s CSR, valid from `now` for `CERTIFICATE_DAYS`: the same
    /// dates the store records for it.
    fn sign(&self, csr_pem: &[u8], serial: &str, now: i64) -> Result<X509> {
        let csr = X509Req::from_pem(csr_pem).map_err(|err| {
            Error::invalid("csr", format!("not a PEM certificate request: {err}"))
        })?;
        let public = csr.public_key()?;
        if !csr.verify(&public).unwrap_or(false) {
            return Err(Error::invalid("csr", "its signature does not verify"));
        }
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, serial)?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Plantgate devices")?;
        let name = name.build();
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let mut number = BigNum::new()?;
        number.rand(127, MsbOption::MAYBE_ZERO, false)?;
        builder.set_serial_number(&*number.to_asn1_integer()?)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(self.cert.subject_name())?;
        builder.set_pubkey(&public)?;
        builder.set_not_before(&*Asn1Time::from_unix(now / 1_000_000)?)?;
        builder.set_not_after(&*Asn1Time::from_unix(not_after_us(now) / 1_000_000)?)?;
        builder.append_extension(BasicConstraints::new().critical().build()?)?;
        builder.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
        builder.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        let context = builder.x509v3_context(Some(&self.cert), None);
        let aki = AuthorityKeyIdentifier::new().keyid(true).build(&context)?;
        builder.append_extension(aki)?;
        builder.sign(&self.key, MessageDigest::sha256())?;
        Ok(builder.build())
    }
}

fn make_ca(key: &PKey<Private>) -> Result<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "Plantgate device CA")?;
    let name = name.build();
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let mut number = BigNum::new()?;
    number.rand(127, MsbOption::MAYBE_ZERO, false)?;
    builder.set_serial_number(&*number.to_asn1_integer()?)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(key)?;
    builder.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    builder.set_not_after(&*Asn1Time::days_from_now(3650)?)?;
    builder.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(ski)?;
    builder.sign(key, MessageDigest::sha256())?;
    Ok(builder.build())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|err| ca_error(&tmp, err))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|err| ca_error(path, err))
}

fn fingerprint(cert: &X509) -> Result<Vec<u8>> {
    Ok(cert.digest(MessageDigest::sha256())?.to_vec())
}

fn not_after_us(now: i64) -> i64 {
    now + i64::from(CERTIFICATE_DAYS) * 24 * 3600 * 1_000_000
}

#[derive(Insertable)]
#[diesel(table_name = device_certificates)]
struct NewCertificate<'a> {
    device_id: DeviceId,
    fingerprint: &'a [u8],
    issued_at_us: i64,
    not_after_us: i64,
}

/// Issues at `now` a one-time token with which the device `serial` may enrol a CSR
/// (replacing any earlier pending one).
pub fn issue_enrolment_token(
    audit: &Audit,
    actor: &Actor,
    serial: &str,
    now: i64,
) -> Result<EnrolmentToken> {
    let device = Device::find_by_serial(&mut *audit.store().conn()?, serial)?
        .ok_or(Error::NotFound("device"))?;
    if device.is_revoked() {
        return Err(Error::Conflict(format!("{serial} is revoked")));
    }
    Ok(enrolment::issue(
        audit,
        actor,
        &enrolment_purpose(serial),
        TOKEN_VALIDITY_US,
        now,
    )?
    .0)
}

fn store_certificate(
    conn: &mut DbConnection,
    device: &Device,
    cert: &X509,
    now: i64,
) -> Result<()> {
    diesel::insert_into(device_certificates::table)
        .values(NewCertificate {
            device_id: device.id,
            fingerprint: &fingerprint(cert)?,
            issued_at_us: now,
            not_after_us: not_after_us(now),
        })
        .execute(conn)?;
    Ok(())
}

/// First enrolment at `now`: spends the token issued for `serial` and returns the
/// certificate.
pub fn enrol(
    audit: &Audit,
    ca: &DeviceCa,
    serial: &str,
    token: &str,
    csr_pem: &[u8],
    now: i64,
) -> Result<(Device, X509)> {
    audit.record_with(|conn| {
        enrolment::redeem(conn, &enrolment_purpose(serial), token, now)?;
        let device = Device::find_by_serial(conn, serial)?.ok_or(Error::NotFound("device"))?;
        if device.is_revoked() {
            return Err(Error::Conflict(format!("{serial} is revoked")));
        }
        let cert = ca.sign(csr_pem, &device.serial, now)?;
        store_certificate(conn, &device, &cert, now)?;
        let event = AuditEvent::new(
            Actor::Device(device.serial.clone()),
            "device.certificate.issued",
        )
        .target(device.id)
        .details(serde_json::json!({
            "fingerprint": hex::encode(fingerprint(&cert)?),
            "expires": format_us(not_after_us(now)),
            "by": "enrolment token",
        }));
        Ok(((device, cert), vec![event]))
    })
}

/// Renewal at `now`: a device authenticated by its current certificate gets a new one for a
/// new CSR.
pub fn renew(
    audit: &Audit,
    ca: &DeviceCa,
    device: &Device,
    csr_pem: &[u8],
    now: i64,
) -> Result<X509> {
    let cert = ca.sign(csr_pem, &device.serial, now)?;
    audit.record_with(|conn| {
        store_certificate(conn, device, &cert, now)?;
        let event = AuditEvent::new(
            Actor::Device(device.serial.clone()),
            "device.certificate.renewed",
        )
        .target(device.id)
        .details(serde_json::json!({
            "fingerprint": hex::encode(fingerprint(&cert)?),
            "expires": format_us(not_after_us(now)),
        }));
        Ok((cert, vec![event]))
    })
}

/// Revokes every certificate of `serial` as of `now`; returns how many were live.
pub fn revoke_certificates(audit: &Audit, actor: &Actor, serial: &str, now: i64) -> Result<usize> {
    audit.record_with(|conn| {
        let device = Device::find_by_serial(conn, serial)?.ok_or(Error::NotFound("device"))?;
        let revoked = diesel::update(
            device_certificates::table
                .filter(device_certificates::device_id.eq(device.id))
                .filter(device_certificates::revoked_at_us.is_null()),
        )
        .set(device_certificates::revoked_at_us.eq(Some(now)))
        .execute(conn)?;
        let event = AuditEvent::new(actor.clone(), "device.certificate.revoked")
            .target(device.id)
            .details(serde_json::json!({ "certificates": revoked }));
        Ok((revoked, vec![event]))
    })
}

/// The device a client certificate (DER, already verified against the CA by the TLS
/// handshake) belongs to, if it was issued, is not revoked or expired at `now`, and the
/// device is live.
pub fn authenticate(conn: &mut DbConnection, der: &[u8], now: i64) -> Result<Option<Device>> {
    let Ok(cert) = X509::from_der(der) else {
        return Ok(None);
    };
    let device_id: Option<DeviceId> = device_certificates::table
        .filter(device_certificates::fingerprint.eq(fingerprint(&cert)?))
        .filter(device_certificates::revoked_at_us.is_null())
        .filter(device_certificates::not_after_us.gt(now))
        .select(device_certificates::device_id)
        .first(conn)
        .optional()?;
    let Some(device_id) = device_id else {
        return Ok(None);
    };
    Ok(crate::schema::devices::table
        .find(device_id)
        .filter(crate::schema::devices::revoked_at_us.is_null())
        .select(Device::as_select())
        .first(conn)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use openssl::x509::X509ReqBuilder;

    use super::*;

    #[test]
    fn a_certificate_is_valid_from_the_callers_now_until_the_end_the_store_records() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|err| ca_error(Path::new("tmp"), err))?;
        DeviceCa::generate(dir.path())?;
        let ca = DeviceCa::load(dir.path())?;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, "MM-1")?;
        let mut csr = X509ReqBuilder::new()?;
        csr.set_subject_name(&name.build())?;
        csr.set_pubkey(&key)?;
        csr.sign(&key, MessageDigest::sha256())?;
        let csr = csr.build().to_pem()?;

        let now = 1_798_761_600_000_000; // 2027-01-01 00:00:00 UTC, not the wall clock
        let cert = ca.sign(&csr, "MM-1", now)?;
        let from = Asn1Time::from_unix(now / 1_000_000)?;
        let until = Asn1Time::from_unix(not_after_us(now) / 1_000_000)?;
        assert_eq!(cert.not_before().compare(&from)?, Ordering::Equal);
        assert_eq!(cert.not_after().compare(&until)?, Ordering::Equal);
        Ok(())
    }
}
