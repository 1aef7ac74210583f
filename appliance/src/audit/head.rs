//! The signed chain head, kept outside the store in `{data_dir}/audit-head.json` and
//! advanced after every append. Checkpoints and the head both sign a [`statement`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::chain::Hash;
use crate::error::{AuditError, Error, Result};
use crate::keys::{SigningKey, VerifyingKey};
use crate::time::now_us;

/// The bytes a checkpoint or head signature covers.
pub fn statement(kind: &str, seq: i64, hash: &[u8], signed_at_us: i64) -> Vec<u8> {
    format!(
        "plantgate-audit-{kind}-v1\n{seq}\n{}\n{signed_at_us}\n",
        hex::encode(hash)
    )
    .into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub seq: i64,
    /// Hex SHA-256 of record `seq`.
    pub hash: String,
    pub signed_at_us: i64,
    pub key_id: String,
    /// Base64 Ed25519 signature over `statement("head", ...)`.
    pub signature: String,
}

impl SignedHead {
    fn sign(key: &SigningKey, seq: i64, hash: &Hash) -> Result<SignedHead> {
        let signed_at_us = now_us();
        let signature = key.sign(&statement("head", seq, hash, signed_at_us))?;
        Ok(SignedHead {
            seq,
            hash: hex::encode(hash),
            signed_at_us,
            key_id: key.key_id().to_owned(),
            signature: BASE64.encode(signature),
        })
    }

    /// The head's hash when its signature is good, or what is wrong with it.
    pub fn verified_hash(&self, key: &VerifyingKey) -> Result<Vec<u8>, String> {
        if self.key_id != key.key_id() {
            return Err(format!(
                "it is signed by key {}, not by this appliance's key {}",
                self.key_id,
                key.key_id()
            ));
        }
        let hash = hex::decode(&self.hash).map_err(|_| "its hash is not hex".to_owned())?;
        let signature = BASE64
            .decode(&self.signature)
            .map_err(|_| "its signature is not base64".to_owned())?;
        if key.verify(
            &statement("head", self.seq, &hash, self.signed_at_us),
            &signature,
        ) {
            Ok(hash)
        } else {
            Err("its signature is invalid".to_owned())
        }
    }
}

/// What the head file holds. `committed` is a head known to be in the store; `pending` is
/// the head of a batch being committed right now. A crash between the two writes leaves the
/// store at one of them, and `audit verify` accepts either, so a crash never looks like
/// tampering, and at most the one batch in flight is ever unaccounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadState {
    pub committed: SignedHead,
    pub pending: Option<SignedHead>,
}

/// The newest entry of the head that could be in the store: the pending one when the store
/// went past the committed one, else the committed one.
pub(super) fn vouched(
    committed: &SignedHead,
    pending: Option<&SignedHead>,
    store_seq: i64,
) -> (i64, String) {
    match pending {
        Some(p) if store_seq > committed.seq => (p.seq, p.hash.clone()),
        _ => (committed.seq, committed.hash.clone()),
    }
}

/// The file and its lock. Writers from several processes take the lock, and the committed
/// head only ever moves forward, so a slow writer cannot roll it back.
#[derive(Debug, Clone)]
pub struct HeadFile {
    path: PathBuf,
    lock_path: PathBuf,
}

/// The head and its lock are written by every process that appends (each service under its
/// own account, root's CLI and updater, in the data directory's group): read-write for the
/// group whatever the umask of the process that made them, nothing for others.
const SHARED_MODE: u32 = 0o660;

/// Gives a file this process made [`SHARED_MODE`] and the data directory's group; a file of
/// another account keeps its mode (only its owner or root may change it), which `plantgate
/// init` sets at every boot. The group matters when root writes the head after init (the
/// boot health check, an update, an administrator's command): a file left in root's group
/// would be unreadable to every service, and an unreadable head stops all appends.
fn share(file: &File, dir: &Path) {
    let _ = file.set_permissions(fs::Permissions::from_mode(SHARED_MODE));
    if let Ok(meta) = fs::metadata(dir) {
        // Allowed to root, and to any member of the group; otherwise the file keeps the
        // process's own group, as before.
        let _ = std::os::unix::fs::fchown(file, None, Some(meta.gid()));
    }
}

impl HeadFile {
    pub fn in_dir(data_dir: &Path) -> HeadFile {
        HeadFile {
            path: data_dir.join("audit-head.json"),
            lock_path: data_dir.join("audit-head.lock"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data directory the head lives in.
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn error(&self, problem: impl std::fmt::Display) -> Error {
        Error::Audit(AuditError::Head {
            path: self.path.clone(),
            problem: problem.to_string(),
        })
    }

    pub fn read(&self) -> Result<Option<HeadState>> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| self.error(err)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.error(err)),
        }
    }

    /// Called under the append lock, before commit: `committed` is the store's tail as just
    /// read, `pending` the head the transaction will leave.
    pub fn begin(
        &self,
        key: &SigningKey,
        committed: (i64, &Hash),
        pending: (i64, &Hash),
    ) -> Result<()> {
        self.update(|current| {
            let committed = match current {
                Some(state) if state.committed.seq == committed.0 => state.committed,
                _ => SignedHead::sign(key, committed.0, committed.1)?,
            };
            Ok(Some(HeadState {
                committed,
                pending: Some(SignedHead::sign(key, pending.0, pending.1)?),
            }))
        })
    }

    /// Called after commit: `head` is in the store now.
    pub fn commit(&self, key: &SigningKey, head: (i64, &Hash)) -> Result<()> {
        self.update(|current| {
            let pending = current.as_ref().and_then(|state| state.pending.clone());
            if current
                .as_ref()
                .is_some_and(|state| state.committed.seq >= head.0)
            {
                return Ok(None);
            }
            Ok(Some(HeadState {
                committed: SignedHead::sign(key, head.0, head.1)?,
                // Another process may have begun a later batch meanwhile; keep its entry.
                pending: pending.filter(|p| p.seq > head.0),
            }))
        })
    }

    /// Signs `head` as the committed head, whatever the file held (or if it is unreadable):
    /// only for an administrator's accepted restore, when the store no longer extends it.
    pub fn replace(&self, key: &SigningKey, head: (i64, &Hash)) -> Result<()> {
        self.update(|_| {
            Ok(Some(HeadState {
                committed: SignedHead::sign(key, head.0, head.1)?,
                pending: None,
            }))
        })
    }

    /// Reads, changes and atomically replaces the file under its lock. `change` returns
    /// `None` to leave the file as it is.
    fn update(
        &self,
        change: impl FnOnce(Option<HeadState>) -> Result<Option<HeadState>>,
    ) -> Result<()> {
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(SHARED_MODE)
            .open(&self.lock_path)
            .map_err(|err| self.io_error(err))?;
        share(&lock, self.dir());
        lock.lock().map_err(|err| self.io_error(err))?;
        // An unreadable file is replaced rather than blocking every append; verify reports it.
        let Some(state) = change(self.read().ok().flatten())? else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|err| self.error(err))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            // One writer at a time (the lock): a leftover is a crashed writer's, maybe
            // another account's, and never reused.
            let _ = fs::remove_file(&tmp);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(SHARED_MODE)
                .open(&tmp)?;
            share(&file, self.dir());
            if let Err(err) = file.write_all(&json).and_then(|()| file.sync_all()) {
                // Out of space, say: a half-written leftover would only hold on to blocks.
                let _ = fs::remove_file(&tmp);
                return Err(err);
            }
            fs::rename(&tmp, &self.path)?;
            // The rename itself must reach the disk before the head counts as written.
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|err| self.io_error(err))
    }

    /// A failed read or write of the file. No space left is [`Error::StorageFull`], as for
    /// the store: the append is refused and can be retried once space is freed. Where the
    /// append stands then: if [`HeadFile::begin`] fails, the transaction rolls back and the
    /// file still vouches for the store's tail; if [`HeadFile::commit`] fails, the records
    /// are committed and the file's `pending` entry vouches for them until the next append
    /// signs them as `committed`. Either way `audit verify` passes.
    fn io_error(&self, err: std::io::Error) -> Error {
        if crate::error::is_io_full(&err) {
            Error::StorageFull {
                what: "the signed audit head",
            }
        } else {
            self.error(err)
        }
    }
}
