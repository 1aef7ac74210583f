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
use std::path::Path;

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
pub use crate::values::CertificatePaths;

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

/// What an administrator sees of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub sha256: String,
    pub self_signed: bool,
}

fn name_text(name: &openssl::x509::X509NameRef) -> String {
    name.entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl CertificateSummary {
    pub fn of(cert: &openssl::x509::X509Ref) -> Result<CertificateSummary> {
        let names = cert
            .subject_alt_names()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| {
                        n.dnsname().map(|d| format!("DNS:{d}")).or_else(|| {
                            n.ipaddress().and_then(|ip| match ip.len() {
                                4 => <[u8; 4]>::try_from(ip)
                                    .ok()
                                    .map(|b| format!("IP:{}", IpAddr::from(b))),
                                16 => <[u8; 16]>::try_from(ip)
                                    .ok()
                                    .map(|b| format!("IP:{}", IpAddr::from(b))),
                                _ => None,
                            })
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let subject = name_text(cert.subject_name());
        let issuer = name_text(cert.issuer_name());
        Ok(CertificateSummary {
            self_signed: subject == issuer,
            subject,
            issuer,
            names,
            not_before: cert.not_before().to_string(),
            not_after: cert.not_after().to_string(),
            sha256: hex::encode(cert.digest(MessageDigest::sha256())?),
        })
    }

    /// The certificate installed at `paths`.
    pub fn read(paths: &CertificatePaths) -> Result<CertificateSummary> {
        let pem = fs::read(&paths.cert)
            .map_err(|err| tls_error(&paths.cert.display().to_string(), err))?;
        let cert = X509::from_pem(&pem).map_err(|err| tls_error("certificate", err))?;
        CertificateSummary::of(&cert)
    }
}

/// Replaces the portal's certificate and key after checking that they belong together and
/// that the certificate is valid now; audited `tls.certificate.replaced`. A listener built
/// with [`live_acceptor`] serves it from its next handshake.
pub fn replace_portal_certificate(
    audit: &crate::Audit,
    actor: &crate::Actor,
    source: &str,
    config: &crate::config::Config,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertificateSummary> {
    let first = X509::stack_from_pem(cert_pem)
        .ok()
        .and_then(|chain| chain.into_iter().next())
        .ok_or_else(|| Error::invalid("certificate", "is not a PEM certificate"))?;
    let now = Asn1Time::days_from_now(0)?;
    if first.not_after() < now {
        return Err(Error::invalid(
            "certificate",
            format!("expired on {}", first.not_after()),
        ));
    }
    if first.not_before() > now {
        return Err(Error::invalid(
            "certificate",
            format!("is not valid before {}", first.not_before()),
        ));
    }
    let leaf = install_certificate(&config.portal_certificate(), cert_pem, key_pem)?;
    let summary = CertificateSummary::of(&leaf)?;
    audit.record(
        crate::AuditEvent::new(actor.clone(), "tls.certificate.replaced")
            .source(source)
            .target("tls:portal")
            .details(serde_json::json!({
                "subject": summary.subject,
                "names": summary.names,
                "not_after": summary.not_after,
                "sha256": summary.sha256,
            })),
    )?;
    Ok(summary)
}

/// A listener's certificate that can be replaced while it serves. OpenSSL calls the
/// servername callback for every ClientHello, with or without SNI; the callback hands the
/// connection the context built from the files last loaded, so a replaced certificate is
/// used from the next handshake on, with no restart.
#[derive(Clone)]
pub struct LiveCertificate {
    paths: CertificatePaths,
    current: std::sync::Arc<std::sync::RwLock<(openssl::ssl::SslContext, FileStamp)>>,
}

impl std::fmt::Debug for LiveCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCertificate")
            .field("paths", &self.paths)
            .finish()
    }
}

/// What tells that a certificate or key file was replaced.
type FileStamp = Vec<Option<(std::time::SystemTime, u64)>>;

fn stamp(paths: &CertificatePaths) -> FileStamp {
    [&paths.cert, &paths.key]
        .iter()
        .map(|p| {
            fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// [`acceptor`] for a certificate that may be replaced while the listener runs.
pub fn live_acceptor(paths: &CertificatePaths) -> Result<(SslAcceptorBuilder, LiveCertificate)> {
    let stamped = stamp(paths);
    let context = acceptor(paths)?.build().into_context();
    let live = LiveCertificate {
        paths: paths.clone(),
        current: std::sync::Arc::new(std::sync::RwLock::new((context, stamped))),
    };
    let mut builder = acceptor(paths)?;
    let current = live.current.clone();
    builder.set_servername_callback(move |ssl, _alert| {
        let context = current
            .read()
            .map_err(|_| openssl::ssl::SniError::ALERT_FATAL)?;
        ssl.set_ssl_context(&context.0)
            .map_err(|_| openssl::ssl::SniError::ALERT_FATAL)
    });
    Ok((builder, live))
}

impl LiveCertificate {
    /// Loads the files again if they changed since the last load; returns whether it did.
    /// A pair that does not load (say, the key written and the certificate not yet) leaves
    /// the one in use in place, and the error says why.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = stamp(&self.paths);
        let unchanged = self
            .current
            .read()
            .map(|current| current.1 == now)
            .unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let context = acceptor(&self.paths)?.build().into_context();
        if let Ok(mut current) = self.current.write() {
            *current = (context, now);
        }
        Ok(true)
    }

    pub fn paths(&self) -> &CertificatePaths {
        &self.paths
    }
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
