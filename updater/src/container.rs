//! The signed envelope shared by bundles and anchor sets: a magic, a body (the manifest or
//! the anchor set, as exact bytes), detached CMS signatures over the body, then (bundles
//! only) the payloads back to back. See `FORMAT.md`.

use std::io::{self, Read, Write};

use crate::error::Rejection;

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bundle,
    AnchorSet,
}

impl Kind {
    pub fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Bundle => b"PGBUNDL1",
            Kind::AnchorSet => b"PGTRUST1",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Bundle => "Plantgate update bundle",
            Kind::AnchorSet => "Plantgate anchor set",
        }
    }
}

pub const MAX_BODY_LEN: u32 = 64 * 1024;
pub const MAX_SIGNATURE_LEN: u32 = 32 * 1024;
pub const MAX_SIGNATURES: u32 = 16;

#[derive(Debug, Clone)]
pub struct Envelope {
    pub kind: Kind,
    pub body: Vec<u8>,
    pub signatures: Vec<Vec<u8>>,
}

impl Envelope {
    /// Bytes before the first payload.
    pub fn header_len(&self) -> u64 {
        let sigs: usize = self.signatures.iter().map(|s| 4 + s.len()).sum();
        (8 + 4 + self.body.len() + 4 + sigs) as u64
    }

    /// Reads the header only, leaving `reader` at the first payload byte.
    pub fn read(reader: &mut impl Read, kind: Kind) -> Result<Envelope, Rejection> {
        let malformed = |problem: String| Rejection::Malformed {
            expected: kind.describe(),
            problem,
        };
        let mut magic = [0u8; 8];
        read_exact(reader, &mut magic, "the magic")?;
        if &magic != kind.magic() {
            return Err(malformed(format!(
                "it does not start with {:?}",
                String::from_utf8_lossy(kind.magic())
            )));
        }
        let body_len = read_u32(reader, "the manifest length")?;
        if body_len == 0 || body_len > MAX_BODY_LEN {
            return Err(malformed(format!(
                "manifest length {body_len} is outside 1..={MAX_BODY_LEN}"
            )));
        }
        let mut body = vec![0u8; body_len as usize];
        read_exact(reader, &mut body, "the manifest")?;
        let count = read_u32(reader, "the signature count")?;
        if count > MAX_SIGNATURES {
            return Err(malformed(format!(
                "{count} signatures, more than the {MAX_SIGNATURES} allowed"
            )));
        }
        let mut signatures = Vec::with_capacity(count as usize);
        for index in 0..count {
            let len = read_u32(reader, "a signature length")?;
            if len == 0 || len > MAX_SIGNATURE_LEN {
                return Err(malformed(format!(
                    "signature {index} length {len} is outside 1..={MAX_SIGNATURE_LEN}"
                )));
            }
            let mut signature = vec![0u8; len as usize];
            read_exact(reader, &mut signature, "a signature")?;
            signatures.push(signature);
        }
        Ok(Envelope {
            kind,
            body,
            signatures,
        })
    }

    pub fn write_header(&self, writer: &mut impl Write) -> io::Result<()> {
        writer.write_all(self.kind.magic())?;
        writer.write_all(&len_u32(self.body.len())?.to_be_bytes())?;
        writer.write_all(&self.body)?;
        writer.write_all(&len_u32(self.signatures.len())?.to_be_bytes())?;
        for signature in &self.signatures {
            writer.write_all(&len_u32(signature.len())?.to_be_bytes())?;
            writer.write_all(signature)?;
        }
        Ok(())
    }
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::other("length does not fit the format"))
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), Rejection> {
    reader.read_exact(buf).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => Rejection::Truncated(format!("it ends inside {what}")),
        _ => Rejection::Truncated(format!("cannot read {what}: {err}")),
    })
}

fn read_u32(reader: &mut impl Read, what: &str) -> Result<u32, Rejection> {
    let mut bytes = [0u8; 4];
    read_exact(reader, &mut bytes, what)?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_every_cut_is_truncated() {
        let envelope = Envelope {
            kind: Kind::Bundle,
            body: b"{\"a\":1}".to_vec(),
            signatures: vec![vec![1, 2, 3], vec![4]],
        };
        let mut bytes = Vec::new();
        envelope.write_header(&mut bytes).expect("write");
        assert_eq!(bytes.len() as u64, envelope.header_len());
        let read = Envelope::read(&mut bytes.as_slice(), Kind::Bundle).expect("read");
        assert_eq!(read.body, envelope.body);
        assert_eq!(read.signatures, envelope.signatures);
        for cut in 0..bytes.len() {
            let err = Envelope::read(&mut &bytes[..cut], Kind::Bundle).expect_err("cut");
            assert_eq!(err.code(), "bundle.truncated", "cut at {cut}: {err}");
        }
        let err = Envelope::read(&mut bytes.as_slice(), Kind::AnchorSet).expect_err("kind");
        assert_eq!(err.code(), "bundle.malformed");
    }
}
