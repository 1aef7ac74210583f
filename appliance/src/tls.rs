//! TLS for every Plantgate listener (portal, API, ingest): one place that decides protocols,
//! ciphers and certificates.
//!
//! Protocols are TLS 1.2 and 1.3 only, with Mozilla's "intermediate" cipher list (openssl's
//! `mozilla_intermediate_v5`), and renegotiation is refused. A self-signed certificate with
//! SANs for the host name and the given addresses is made at first start; an admin can
//! replace it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslFiletype, SslMethod, SslOptions, SslVersion,
};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

use crate::error::{Error, Result};

/// Where a listener's certificate and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificatePaths {
    /// `{dir}/{name}.crt` and `{dir}/{name}.key`.
    pub fn in_dir(dir: &Path, name: &str) -> CertificatePaths {
        CertificatePaths {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

fn tls_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::invalid("tls", format!("{what}: {err}"))
}

/// A new ECDSA P-256 key and a self-signed certificate for `host` and `addresses`, valid
/// for two years. Returns PEM (certificate, key).
pub fn self_signed(host: &str, addresses: &[IpAddr]) -> Result<(Vec<u8>, Vec<u8>)> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key: PKey<Private> = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, host)?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Plantgate appliance")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(730)?);
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    builder.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    san.dns(host);
    if host != "localhost" {
        san.dns("localhost");
    }
    for address in addresses {
        san.ip(&address.to_string());
    }
    let san = san.build(&builder.x509v3_context(None, None))?;
    builder.append_extension(san)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok((builder.build().to_pem()?, key.private_key_to_pem_pkcs8()?))
}

/// Makes a self-signed certificate at `paths` unless one is there; returns whether it made
/// one. The key file is readable by its owner only.
pub fn ensure_certificate(
    paths: &CertificatePaths,
    host: &str,
    addresses: &[IpAddr],
) -> Result<bool> {
    if paths.cert.exists() && paths.key.exists() {
        return Ok(false);
    }
    let (cert, key) = self_signed(host, addresses)?;
    if let Some(dir) = paths.key.parent() {
        fs::create_dir_all(dir).map_err(|err| tls_error(&dir.display().to_string(), err))?;
    }
    write_private(&paths.key, &key)?;
    fs::write(&paths.cert, cert)
        .map_err(|err| tls_error(&paths.cert.display().to_string(), err))?;
    Ok(true)
}

/// Checks that `cert_pem` and `key_pem` are a certificate and its key, then installs them
/// at `paths`, replacing what was there. Nothing is written if they do not match.
pub fn install_certificate(
    paths: &CertificatePaths,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<X509> {
    let chain = X509::stack_from_pem(cert_pem).map_err(|err| tls_error("certificate", err))?;
    let leaf = chain
        .first()
        .ok_or_else(|| tls_error("certificate", "no certificate in the PEM"))?
        .clone();
    let key = PKey::private_key_from_pem(key_pem).map_err(|err| tls_error("key", err))?;
    if !leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false)
    {
        return Err(tls_error("key", "does not belong to the certificate"));
    }
    if let Some(dir) = paths.key.parent() {
        fs::create_dir_all(dir).map_err(|err| tls_error(&dir.display().to_string(), err))?;
    }
    write_private(&paths.key, key_pem)?;
    let tmp = paths.cert.with_extension("crt.tmp");
    fs::write(&tmp, cert_pem)
        .and_then(|()| fs::rename(&tmp, &paths.cert))
        .map_err(|err| tls_error(&paths.cert.display().to_string(), err))?;
    Ok(leaf)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("key.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|err| tls_error(&path.display().to_string(), err))
}

/// A server-side TLS configuration: TLS 1.2 and 1.3, Mozilla intermediate ciphers, no
/// renegotiation, and the certificate at `paths`. Listeners add client-certificate
/// verification on top where they need it.
pub fn acceptor(paths: &CertificatePaths) -> Result<SslAcceptorBuilder> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_options(SslOptions::NO_RENEGOTIATION | SslOptions::CIPHER_SERVER_PREFERENCE);
    builder
        .set_private_key_file(&paths.key, SslFiletype::PEM)
        .map_err(|err| tls_error(&paths.key.display().to_string(), err))?;
    builder
        .set_certificate_chain_file(&paths.cert)
        .map_err(|err| tls_error(&paths.cert.display().to_string(), err))?;
    builder
        .check_private_key()
        .map_err(|err| tls_error("key", err))?;
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_certificate_names_the_host_and_addresses_and_is_used_as_is() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|err| tls_error("tmp", err))?;
        let paths = CertificatePaths::in_dir(dir.path(), "portal");
        let addresses: Vec<IpAddr> = vec!["192.0.2.10".parse().map_err(|e| tls_error("ip", e))?];
        assert!(ensure_certificate(
            &paths,
            "plantgate.plant.example",
            &addresses
        )?);
        assert!(
            !ensure_certificate(&paths, "other", &[])?,
            "an existing certificate was replaced"
        );
        let cert = X509::from_pem(&fs::read(&paths.cert).map_err(|e| tls_error("read", e))?)?;
        let names: Vec<String> = cert
            .subject_alt_names()
            .into_iter()
            .flatten()
            .map(|n| {
                n.dnsname()
                    .map(str::to_owned)
                    .or_else(|| n.ipaddress().map(|ip| format!("{ip:?}")))
                    .unwrap_or_default()
            })
            .collect();
        assert!(
            names.contains(&"plantgate.plant.example".to_owned()),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.contains("192, 0, 2, 10")),
            "{names:?}"
        );
        assert!(acceptor(&paths).is_ok());
        Ok(())
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|err| tls_error("tmp", err))?;
        let paths = CertificatePaths::in_dir(dir.path(), "portal");
        ensure_certificate(&paths, "a", &[])?;
        let before = fs::read(&paths.cert).map_err(|e| tls_error("read", e))?;
        let (cert, _) = self_signed("b", &[])?;
        let (_, other_key) = self_signed("c", &[])?;
        assert!(install_certificate(&paths, &cert, &other_key).is_err());
        assert!(install_certificate(&paths, b"not a certificate", &other_key).is_err());
        assert_eq!(
            fs::read(&paths.cert).map_err(|e| tls_error("read", e))?,
            before,
            "a refused upload changed the files"
        );
        Ok(())
    }
}
