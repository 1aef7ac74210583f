//! Vendor side: creating a bundle from payload files, and adding a signature to it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use openssl::sha::Sha256;

use crate::container::{Envelope, Kind};
use crate::error::{Result, UpdaterError};
use crate::manifest::{FORMAT_VERSION, Manifest, PayloadEntry, format_time};
use crate::pki::{BundleSigner, refuse_second_signature};
use crate::progress::Progress;
use crate::verify::CHUNK;

/// What the vendor states about a release.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub product: String,
    pub target: String,
    pub version: semver::Version,
    pub hardware: Vec<String>,
    pub min_installed_version: semver::Version,
    pub security_version: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    /// Name and file of each payload, in bundle order.
    pub payloads: Vec<(String, PathBuf)>,
}

/// Hashes the payloads, writes an unsigned bundle to `out`, and returns its manifest.
pub fn create(spec: &BundleSpec, out: &Path, progress: &dyn Progress) -> Result<Manifest> {
    let mut entries = Vec::new();
    let mut total = 0u64;
    for (name, path) in &spec.payloads {
        let size = std::fs::metadata(path)
            .map_err(UpdaterError::io(path))?
            .len();
        total += size;
        entries.push((name.clone(), path.clone(), size));
    }
    progress.start("hashing payloads", total);
    let mut payloads = Vec::new();
    for (name, path, size) in &entries {
        let mut file = File::open(path).map_err(UpdaterError::io(path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let got = file.read(&mut buf).map_err(UpdaterError::io(path))?;
            if got == 0 {
                break;
            }
            hasher.update(&buf[..got]);
            progress.advance(got as u64);
        }
        payloads.push(PayloadEntry {
            name: name.clone(),
            size: *size,
            sha256: hex::encode(hasher.finish()),
        });
    }
    progress.finish();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        product: spec.product.clone(),
        target: spec.target.clone(),
        version: spec.version.clone(),
        hardware: spec.hardware.clone(),
        min_installed_version: spec.min_installed_version.clone(),
        security_version: spec.security_version,
        created_at: format_time(spec.created_at),
        expires_at: format_time(spec.expires_at),
        payloads,
    };
    let body = manifest.to_bytes();
    Manifest::parse(&body)?;
    let envelope = Envelope {
        kind: Kind::Bundle,
        body,
        signatures: Vec::new(),
    };
    write_with_payloads(out, &envelope, |writer| {
        for (_, path, size) in &entries {
            let mut file = File::open(path).map_err(UpdaterError::io(path))?;
            let copied = std::io::copy(&mut (&mut file).take(*size), writer)
                .map_err(UpdaterError::io(path))?;
            if copied != *size {
                return Err(UpdaterError::Usage(format!(
                    "{} changed while the bundle was being made",
                    path.display()
                )));
            }
        }
        Ok(())
    })?;
    Ok(manifest)
}

/// Reads a bundle's header: its manifest and signatures.
pub fn read_header(path: &Path) -> Result<(Envelope, Manifest)> {
    let file = crate::verify::open_bundle(path)?;
    let envelope = Envelope::read(&mut BufReader::new(file), Kind::Bundle)?;
    let manifest = Manifest::parse(&envelope.body)?;
    Ok((envelope, manifest))
}

/// Adds one signature to the bundle at `path`, in place (atomically). Returns how many
/// signatures it now has.
pub fn sign(path: &Path, signer: &dyn BundleSigner) -> Result<usize> {
    let (mut envelope, _) = read_header(path)?;
    let old_header = envelope.header_len();
    refuse_second_signature(&envelope.signatures, &envelope.body, signer)?;
    envelope.signatures.push(signer.sign(&envelope.body)?);
    let count = envelope.signatures.len();
    write_with_payloads(path, &envelope, |writer| {
        let mut file = File::open(path).map_err(UpdaterError::io(path))?;
        file.seek(SeekFrom::Start(old_header))
            .map_err(UpdaterError::io(path))?;
        std::io::copy(&mut file, writer).map_err(UpdaterError::io(path))?;
        Ok(())
    })?;
    Ok(count)
}

/// Writes the header, then whatever `payloads` writes, to a temp file beside `out`, and
/// moves it into place.
fn write_with_payloads(
    out: &Path,
    envelope: &Envelope,
    payloads: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
) -> Result<()> {
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = tempfile::NamedTempFile::new_in(dir).map_err(UpdaterError::io(dir))?;
    {
        let mut writer = BufWriter::with_capacity(CHUNK, temp.as_file());
        envelope
            .write_header(&mut writer)
            .map_err(UpdaterError::io(out))?;
        payloads(&mut writer)?;
        writer.flush().map_err(UpdaterError::io(out))?;
    }
    temp.as_file().sync_all().map_err(UpdaterError::io(out))?;
    temp.persist(out)
        .map_err(|err| UpdaterError::io(out)(err.error))?;
    Ok(())
}
