//! AES-256-GCM sealing keys: secrets the appliance must be able to use again (TOTP seeds,
//! the mail relay's password, connector secrets) are stored sealed, and the key that opens
//! them lives in `{data_dir}/keys/`, outside the store, so a copy of the database alone
//! reveals none of them. Each purpose has its own key file, readable only by the process that
//! needs it ([`crate::keyring`]); `plantgate init` makes them, services only load them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};

use crate::error::{Error, Result};

/// What connector secrets are sealed for (the associated data of [`SealingKey::seal`]).
const CONNECTOR_PURPOSE: &[u8] = b"plantgate connector secret v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

pub struct SealingKey {
    key: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for SealingKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn key_error(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::Key {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

impl SealingKey {
    /// Writes a new random key to `path` (mode 0600), or `material` when given (an upgrade
    /// that splits one old key into several files keeps what was sealed under it openable).
    /// Refuses to replace an existing file: everything sealed under it would be lost.
    pub fn generate(path: &Path, material: Option<&SealingKey>) -> Result<SealingKey> {
        let key = match material {
            Some(existing) => existing.key,
            None => {
                let mut key = [0u8; 32];
                openssl::rand::rand_bytes(&mut key)?;
                key
            }
        };
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut file| {
                file.write_all(hex::encode(key).as_bytes())?;
                file.sync_all()
            })
            .map_err(|err| key_error(path, err))?;
        Ok(SealingKey {
            key,
            path: path.to_owned(),
        })
    }

    /// Loads the key at `path`. A missing file is an appliance never initialised (or a key
    /// lost): never made up here, since a new key would open nothing sealed before.
    pub fn load(path: &Path) -> Result<SealingKey> {
        let text = fs::read_to_string(path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::NotInitialised {
                what: "a sealing key",
                path: path.to_owned(),
            },
            _ => key_error(path, err),
        })?;
        let bytes = hex::decode(text.trim()).map_err(|err| key_error(path, err))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| key_error(path, "not 32 bytes of hex"))?;
        Ok(SealingKey {
            key,
            path: path.to_owned(),
        })
    }

    /// Seals a connector secret.
    pub fn seal(&self, secret: &str) -> Result<Vec<u8>> {
        self.seal_for(CONNECTOR_PURPOSE, secret)
    }

    /// Seals `secret` for one purpose (the associated data): it opens only for that purpose.
    pub fn seal_for(&self, purpose: &[u8], secret: &str) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce)?;
        let mut tag = [0u8; TAG_LEN];
        let sealed = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            purpose,
            secret.as_bytes(),
            &mut tag,
        )?;
        Ok([&nonce[..], &sealed, &tag].concat())
    }

    /// The connector secret sealed in `sealed`; an error if it was sealed under another key
    /// or altered.
    pub fn open(&self, sealed: &[u8]) -> Result<String> {
        self.open_for(CONNECTOR_PURPOSE, sealed)
    }

    /// [`SealingKey::open`] for a secret sealed with [`SealingKey::seal_for`] and `purpose`.
    pub fn open_for(&self, purpose: &[u8], sealed: &[u8]) -> Result<String> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(key_error(&self.path, "a sealed secret is too short"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (data, tag) = rest.split_at(rest.len() - TAG_LEN);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(nonce),
            purpose,
            data,
            tag,
        )
        .map_err(|_| key_error(&self.path, "a sealed secret does not open with this key"))?;
        String::from_utf8(plain).map_err(|err| key_error(&self.path, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_unaltered() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|err| key_error(Path::new("tmp"), err))?;
        let path = dir.path().join("k");
        let key = SealingKey::generate(&path, None)?;
        let again = SealingKey::load(&path)?;
        let mut sealed = key.seal("pgwh_abc")?;
        assert_eq!(again.open(&sealed)?, "pgwh_abc");
        assert!(
            SealingKey::generate(&path, None).is_err(),
            "an existing key is never replaced"
        );
        let other = SealingKey::generate(&dir.path().join("other"), None)?;
        assert!(other.open(&sealed).is_err());
        let copy = SealingKey::generate(&dir.path().join("copy"), Some(&key))?;
        assert_eq!(copy.open(&sealed)?, "pgwh_abc");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(key.open(&sealed).is_err());
        Ok(())
    }

    #[test]
    fn a_missing_key_is_not_made_up() {
        let dir = tempfile::tempdir().map_err(|err| key_error(Path::new("tmp"), err));
        let Ok(dir) = dir else { return };
        let path = dir.path().join("absent.key");
        assert!(matches!(
            SealingKey::load(&path),
            Err(Error::NotInitialised { .. })
        ));
        assert!(!path.exists());
    }
}
