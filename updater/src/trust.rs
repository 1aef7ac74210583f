//! Trust anchors and k-of-n signature checks.
//!
//! The box trusts only the anchor set shipped in its image, advanced by rotations that the
//! current set's threshold signed. Nothing inside a bundle is ever trusted: the certificates
//! a signature carries only help build a chain to one of these anchors. A signature counts
//! for the anchor its chain ends at, and the threshold counts distinct anchors, so one
//! stolen key holder (one anchor) can never reach a threshold of two, however many signing
//! certificates it issues.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509, X509Ref};
use serde::{Deserialize, Serialize};

use crate::container::{Envelope, Kind};
use crate::error::{Rejection, Result, UpdaterError};
use crate::manifest::parse_time;
use crate::pki::{BundleSigner, refuse_second_signature, subject};

/// The body of an anchor-set envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorSetBody {
    pub format: u32,
    /// Only ever goes up; a rotation must be newer than the set it replaces.
    pub version: u64,
    /// How many distinct anchors must sign a bundle or the next anchor set.
    pub threshold: usize,
    /// RFC 3339; the signers' certificates are checked as of this time.
    pub created_at: String,
    /// PEM certificates.
    pub anchors: Vec<String>,
}

/// A parsed anchor set.
#[derive(Debug, Clone)]
pub struct TrustSet {
    pub version: u64,
    pub threshold: usize,
    pub anchors: Vec<X509>,
}

/// Which anchors signed, and what was wrong with the signatures that did not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureReport {
    pub anchors: Vec<String>,
    pub ignored: Vec<String>,
}

impl TrustSet {
    pub fn from_body(body: &[u8]) -> Result<(TrustSet, AnchorSetBody), Rejection> {
        let malformed = |problem: String| Rejection::Malformed {
            expected: "anchor set",
            problem,
        };
        let parsed: AnchorSetBody =
            serde_json::from_slice(body).map_err(|err| malformed(err.to_string()))?;
        parse_time("created_at", &parsed.created_at).map_err(malformed)?;
        let mut anchors = Vec::new();
        let mut keys = BTreeSet::new();
        for (index, pem) in parsed.anchors.iter().enumerate() {
            let cert = X509::from_pem(pem.as_bytes()).map_err(|err| {
                malformed(format!("anchor {index} is not a PEM certificate ({err})"))
            })?;
            let key = cert
                .public_key()
                .and_then(|k| k.public_key_to_der())
                .map_err(|err| malformed(format!("anchor {index}: {err}")))?;
            if !keys.insert(key) {
                return Err(malformed(format!(
                    "anchor {index} repeats another anchor's key"
                )));
            }
            anchors.push(cert);
        }
        if parsed.threshold == 0 || parsed.threshold > anchors.len() {
            return Err(malformed(format!(
                "threshold {} must be between 1 and the number of anchors ({})",
                parsed.threshold,
                anchors.len()
            )));
        }
        Ok((
            TrustSet {
                version: parsed.version,
                threshold: parsed.threshold,
                anchors,
            },
            parsed,
        ))
    }

    /// Checks detached CMS `signatures` over `body`, each certificate chain as of
    /// `signed_at` (Unix seconds), and requires `threshold` distinct anchors.
    pub fn verify(
        &self,
        body: &[u8],
        signatures: &[Vec<u8>],
        signed_at: i64,
    ) -> Result<SignatureReport, Rejection> {
        if signatures.is_empty() {
            return Err(Rejection::Unsigned);
        }
        let mut signed_by = BTreeSet::new();
        let mut first_problem = None;
        let mut ignored = Vec::new();
        for (index, der) in signatures.iter().enumerate() {
            match self.anchor_of(index, der, body, signed_at) {
                Ok(anchor) => {
                    signed_by.insert(anchor);
                }
                Err(problem) => {
                    ignored.push(problem.to_string());
                    first_problem.get_or_insert(problem);
                }
            }
        }
        if signed_by.len() >= self.threshold {
            return Ok(SignatureReport {
                anchors: signed_by
                    .into_iter()
                    .filter_map(|i| self.anchors.get(i).map(subject))
                    .collect(),
                ignored,
            });
        }
        match first_problem {
            // Nothing counted: name what is wrong with the signatures themselves.
            Some(problem) if signed_by.is_empty() => Err(problem),
            _ => Err(Rejection::BelowThreshold {
                valid: signed_by.len(),
                required: self.threshold,
                problems: ignored,
            }),
        }
    }

    /// The index of the anchor that one signature chains to.
    fn anchor_of(
        &self,
        index: usize,
        der: &[u8],
        body: &[u8],
        signed_at: i64,
    ) -> Result<usize, Rejection> {
        let untrusted = |reason: String| Rejection::UntrustedSigner { index, reason };
        let mut cms =
            CmsContentInfo::from_der(der).map_err(|_| Rejection::BadSignature { index })?;
        // First the signature itself, with the certificate it carries: tampering shows here.
        cms.verify(
            None,
            None,
            Some(body),
            None,
            CMSOptions::BINARY | CMSOptions::NO_SIGNER_CERT_VERIFY,
        )
        .map_err(|_| Rejection::BadSignature { index })?;
        let mut reason = String::from("no anchor configured");
        for (anchor_index, anchor) in self.anchors.iter().enumerate() {
            let store = store_with(anchor, signed_at).map_err(|err| untrusted(err.to_string()))?;
            match cms.verify(None, Some(&store), Some(body), None, CMSOptions::BINARY) {
                Ok(()) => return Ok(anchor_index),
                Err(err) => reason = verify_reason(&err),
            }
        }
        Err(untrusted(format!(
            "its certificate does not chain to any of the {} trusted anchors as of {} ({reason})",
            self.anchors.len(),
            crate::manifest::format_time(signed_at)
        )))
    }
}

fn store_with(
    anchor: &X509Ref,
    at: i64,
) -> Result<openssl::x509::store::X509Store, openssl::error::ErrorStack> {
    let mut builder = X509StoreBuilder::new()?;
    builder.add_cert(anchor.to_owned())?;
    let mut param = X509VerifyParam::new()?;
    param.set_time(at);
    builder.set_param(&param)?;
    Ok(builder.build())
}

/// OpenSSL's certificate-verification message ("certificate has expired") from its error stack.
fn verify_reason(err: &openssl::error::ErrorStack) -> String {
    err.errors()
        .iter()
        .find_map(|e| {
            e.data()
                .filter(|d| d.starts_with("Verify error"))
                .map(str::to_owned)
        })
        .or_else(|| {
            err.errors()
                .last()
                .and_then(|e| e.reason())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| err.to_string())
}

/// Builds an anchor-set envelope (unsigned; sign it with [`sign_envelope`]).
pub fn anchor_set_envelope(
    version: u64,
    threshold: usize,
    created_at: i64,
    anchors: &[X509],
) -> Result<Envelope> {
    let body = AnchorSetBody {
        format: 1,
        version,
        threshold,
        created_at: crate::manifest::format_time(created_at),
        anchors: anchors
            .iter()
            .map(|a| a.to_pem().map(|p| String::from_utf8_lossy(&p).into_owned()))
            .collect::<Result<_, _>>()?,
    };
    let body =
        serde_json::to_vec_pretty(&body).map_err(|err| UpdaterError::Trust(err.to_string()))?;
    TrustSet::from_body(&body)?;
    Ok(Envelope {
        kind: Kind::AnchorSet,
        body,
        signatures: Vec::new(),
    })
}

pub fn sign_envelope(envelope: &mut Envelope, signer: &dyn BundleSigner) -> Result<()> {
    refuse_second_signature(&envelope.signatures, &envelope.body, signer)?;
    let signature = signer.sign(&envelope.body)?;
    envelope.signatures.push(signature);
    Ok(())
}

pub fn read_anchor_set(path: &Path) -> Result<Envelope> {
    let bytes = std::fs::read(path).map_err(UpdaterError::io(path))?;
    Ok(Envelope::read(&mut bytes.as_slice(), Kind::AnchorSet)?)
}

pub fn write_anchor_set(envelope: &Envelope, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    envelope
        .write_header(&mut bytes)
        .map_err(UpdaterError::io(path))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// The anchor sets a box trusts: the one shipped in the image, then the accepted rotations
/// kept in `{data_dir}/updater/trust/anchors-vN.pgtrust`, each verified again on load
/// against the set before it.
#[derive(Debug, Clone)]
pub struct TrustStore {
    pub shipped: PathBuf,
    pub rotations: PathBuf,
}

impl TrustStore {
    pub fn current(&self) -> Result<TrustSet> {
        let shipped = read_anchor_set(&self.shipped)
            .map_err(|err| UpdaterError::Trust(format!("shipped anchor set: {err}")))?;
        let (mut current, _) = TrustSet::from_body(&shipped.body)
            .map_err(|err| UpdaterError::Trust(format!("{}: {err}", self.shipped.display())))?;
        for (version, path) in self.rotation_files()? {
            if version <= current.version {
                continue;
            }
            let envelope = read_anchor_set(&path)?;
            current = accept_rotation(&current, &envelope).map_err(|err| {
                UpdaterError::Trust(format!("{} no longer verifies: {err}", path.display()))
            })?;
        }
        Ok(current)
    }

    fn rotation_files(&self) -> Result<Vec<(u64, PathBuf)>> {
        let entries = match std::fs::read_dir(&self.rotations) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(UpdaterError::io(&self.rotations)(err)),
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(version) = name
                .strip_prefix("anchors-v")
                .and_then(|rest| rest.strip_suffix(".pgtrust"))
                .and_then(|v| v.parse::<u64>().ok())
            {
                files.push((version, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Verifies a new anchor set against the current one and keeps it. Returns the new set.
    pub fn rotate(&self, envelope: &Envelope) -> Result<TrustSet> {
        let current = self.current()?;
        let next = accept_rotation(&current, envelope)?;
        std::fs::create_dir_all(&self.rotations).map_err(UpdaterError::io(&self.rotations))?;
        let path = self
            .rotations
            .join(format!("anchors-v{}.pgtrust", next.version));
        write_anchor_set(envelope, &path)?;
        // The portal verifies firmware uploads against the current set too, as its own
        // user: anchor sets are public certificates, readable by all, written by root only.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(UpdaterError::io(&path))?;
        Ok(next)
    }
}

/// A rotation is accepted when it is newer and the current threshold signed it.
pub fn accept_rotation(current: &TrustSet, envelope: &Envelope) -> Result<TrustSet, Rejection> {
    let (next, body) = TrustSet::from_body(&envelope.body)?;
    let created_at =
        parse_time("created_at", &body.created_at).map_err(|problem| Rejection::Malformed {
            expected: "anchor set",
            problem,
        })?;
    current.verify(&envelope.body, &envelope.signatures, created_at)?;
    if next.version <= current.version {
        return Err(Rejection::TrustReplay {
            offered: next.version,
            current: current.version,
        });
    }
    Ok(next)
}
