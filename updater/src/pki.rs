//! Vendor-side keys: long-lived anchors (offline roots, one per key holder) that issue
//! short-lived signing certificates, and the [`BundleSigner`] that signs a manifest.
//! A PKCS#11 token plugs in as another [`BundleSigner`].

use std::path::Path;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509Name, X509NameBuilder};

use crate::error::{Result, UpdaterError};

/// A certificate and its private key.
pub struct KeyPair {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", subject(&self.cert))
    }
}

/// The subject's common name, for messages.
pub fn subject(cert: &X509) -> String {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_else(|| "(no common name)".to_owned())
}

fn new_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn name(common_name: &str) -> Result<X509Name> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Plantgate vendor")?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    Ok(name.build())
}

fn builder(
    subject: &X509Name,
    key: &PKey<Private>,
    not_before: i64,
    not_after: i64,
) -> Result<X509Builder> {
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(subject)?;
    builder.set_pubkey(key)?;
    let not_before = Asn1Time::from_unix(not_before)?;
    let not_after = Asn1Time::from_unix(not_after)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    Ok(builder)
}

/// A self-signed anchor: shipped in the image, its key kept offline by one key holder.
pub fn new_anchor(common_name: &str, not_before: i64, not_after: i64) -> Result<KeyPair> {
    let key = new_key()?;
    let subject = name(common_name)?;
    let mut builder = builder(&subject, &key, not_before, not_after)?;
    builder.set_issuer_name(&subject)?;
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
    builder.sign(&key, MessageDigest::sha256())?;
    Ok(KeyPair {
        cert: builder.build(),
        key,
    })
}

/// A short-lived signing certificate issued by `anchor`; its key signs manifests.
pub fn issue_signing_cert(
    anchor: &KeyPair,
    common_name: &str,
    not_before: i64,
    not_after: i64,
) -> Result<KeyPair> {
    let key = new_key()?;
    let mut builder = builder(&name(common_name)?, &key, not_before, not_after)?;
    builder.set_issuer_name(anchor.cert.subject_name())?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    let ski =
        SubjectKeyIdentifier::new().build(&builder.x509v3_context(Some(&anchor.cert), None))?;
    builder.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&builder.x509v3_context(Some(&anchor.cert), None))?;
    builder.append_extension(aki)?;
    builder.sign(&anchor.key, MessageDigest::sha256())?;
    Ok(KeyPair {
        cert: builder.build(),
        key,
    })
}

/// Writes the certificate (PEM) and the private key (PKCS#8 PEM, mode 0600).
pub fn write_pair(pair: &KeyPair, cert_path: &Path, key_path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::write(cert_path, pair.cert.to_pem()?).map_err(UpdaterError::io(cert_path))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_path)
        .map_err(UpdaterError::io(key_path))?;
    file.write_all(&pair.key.private_key_to_pem_pkcs8()?)
        .map_err(UpdaterError::io(key_path))?;
    Ok(())
}

pub fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<X509>, PKey<Private>)> {
    let certs =
        X509::stack_from_pem(&std::fs::read(cert_path).map_err(UpdaterError::io(cert_path))?)
            .map_err(|err| {
                UpdaterError::Usage(format!(
                    "{}: not a PEM certificate ({err})",
                    cert_path.display()
                ))
            })?;
    if certs.is_empty() {
        return Err(UpdaterError::Usage(format!(
            "{}: no certificate in it",
            cert_path.display()
        )));
    }
    let key =
        PKey::private_key_from_pem(&std::fs::read(key_path).map_err(UpdaterError::io(key_path))?)
            .map_err(|err| {
            UpdaterError::Usage(format!(
                "{}: not a PEM private key ({err})",
                key_path.display()
            ))
        })?;
    Ok((certs, key))
}

/// Produces one detached CMS signature over a manifest or anchor set. Files are implemented
/// ([`FileSigner`]); a PKCS#11 token implements this trait with a key handle from its
/// OpenSSL provider, and the rest of the tool does not change.
pub trait BundleSigner {
    /// Who signs, for messages: the signing certificate's common name.
    fn describe(&self) -> String;
    /// A DER-encoded CMS SignedData over `body`, detached, carrying the signing certificate
    /// and any intermediates (never trusted by the verifier, only used to build the chain).
    fn sign(&self, body: &[u8]) -> Result<Vec<u8>>;
    /// Whether `signature` (a CMS SignedData over `body`) was made by this signer's
    /// certificate and key: a second signature by the same key is refused.
    fn made(&self, signature: &[u8], body: &[u8]) -> bool;
}

/// Refuses a signature by a key that already signed: it would count twice toward nothing
/// and hide that a second signer was meant.
pub fn refuse_second_signature(
    signatures: &[Vec<u8>],
    body: &[u8],
    signer: &dyn BundleSigner,
) -> Result<()> {
    match signatures.iter().position(|der| signer.made(der, body)) {
        Some(index) => Err(UpdaterError::Usage(format!(
            "already signed by {} (signature {} of {}): a second signature by the same key is refused; sign with another key",
            signer.describe(),
            index + 1,
            signatures.len()
        ))),
        None => Ok(()),
    }
}

/// A signing key and certificate (followed by any intermediates) in PEM files.
pub struct FileSigner {
    cert: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSigner({})", subject(&self.cert))
    }
}

impl FileSigner {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<FileSigner> {
        let (mut certs, key) = read_pair(cert_path, key_path)?;
        let cert = certs.remove(0);
        if !cert.public_key()?.public_eq(&key) {
            return Err(UpdaterError::Usage(format!(
                "{} does not belong to the certificate in {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        Ok(FileSigner {
            cert,
            chain: certs,
            key,
        })
    }

    pub fn from_pair(pair: &KeyPair) -> FileSigner {
        FileSigner {
            cert: pair.cert.clone(),
            chain: Vec::new(),
            key: pair.key.clone(),
        }
    }
}

impl BundleSigner for FileSigner {
    fn describe(&self) -> String {
        subject(&self.cert)
    }

    fn sign(&self, body: &[u8]) -> Result<Vec<u8>> {
        let mut chain = Stack::new()?;
        for cert in &self.chain {
            chain.push(cert.clone())?;
        }
        let cms = CmsContentInfo::sign(
            Some(&self.cert),
            Some(&self.key),
            Some(&chain),
            Some(body),
            CMSOptions::DETACHED | CMSOptions::BINARY,
        )?;
        Ok(cms.to_der()?)
    }

    fn made(&self, signature: &[u8], body: &[u8]) -> bool {
        let Ok(mut cms) = CmsContentInfo::from_der(signature) else {
            return false;
        };
        let Ok(mut mine) = Stack::new() else {
            return false;
        };
        if mine.push(self.cert.clone()).is_err() {
            return false;
        }
        // Only this signer's certificate may be the signer's (NOINTERN), and the signature
        // must verify with its key: then this key made it.
        cms.verify(
            Some(&mine),
            None,
            Some(body),
            None,
            CMSOptions::BINARY | CMSOptions::NOINTERN | CMSOptions::NO_SIGNER_CERT_VERIFY,
        )
        .is_ok()
    }
}

/// Picks the signer a `--key` argument names. Only files are implemented.
pub fn signer_from_args(cert: &Path, key: &str) -> Result<Box<dyn BundleSigner>> {
    if key.starts_with("pkcs11:") {
        return Err(UpdaterError::Usage(
            "PKCS#11 keys are not supported by this build yet; sign with a key file, or implement \
             BundleSigner for your token (see updater/FORMAT.md)"
                .into(),
        ));
    }
    Ok(Box::new(FileSigner::load(cert, Path::new(key))?))
}
