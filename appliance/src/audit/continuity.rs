//! Continuity: the store must extend the signed audit head.
//!
//! The head file lives beside the store, not in it, so it outlives the store being moved
//! away, replaced by an empty one, or by an older copy. Every appender checks, under the
//! append lock, that the store ends where the head says (at its committed or its pending
//! entry) and otherwise refuses, so nothing is written over the evidence and the head is
//! never re-signed over a store that does not extend it. Only an administrator's accepted
//! restore (`plantgate audit accept-restore`, `plantgate init --accept-empty-store`)
//! re-signs it, and that is recorded with both heads.
//!
//! Every refusal also notes the episode in a marker file beside the head. The first append
//! after the store matches again records it as `audit.head.mismatch` and removes the
//! marker, so putting the real store back does not make the episode vanish.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use diesel::Connection;
use serde::{Deserialize, Serialize};

use super::head::{HeadFile, SignedHead};
use super::{Actor, AuditEvent, ChainHead, Outcome, lock_and_read_head};
use crate::error::{AuditError, Error, Result, StoreError};
use crate::store::{DbConnection, Store};
use crate::time::now_us;

/// The marker's name, in the data directory beside `audit-head.json`.
pub const MARKER_FILE: &str = "audit-head-mismatch.json";

/// How a refusal ends, for an operator: both ways out.
const WAY_OUT: &str = "nothing can be appended until the real store is put back, or an \
    administrator accepts this one as a restore with `plantgate audit accept-restore --reason \"...\"` \
    (as root on the appliance)";

/// Names kept in a marker's `seen_by`, and the length of each: enough to tell the services
/// apart without letting the marker grow.
const MAX_SEEN_BY: usize = 16;
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The store ends before the record the signed head vouches for.
    Truncated,
    /// The store ends at or past the head's sequence number, but not at its hash: another
    /// store, or records appended without the signing key.
    Diverged,
    /// The head file is gone while the store holds records.
    HeadMissing,
    /// The head file cannot be read or parsed.
    HeadUnreadable,
    /// The store itself was missing (only ever noted in the marker; opening the store
    /// refuses with its own error).
    StoreMissing,
}

/// Why the store does not extend the signed head: what each side says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discontinuity {
    pub kind: Kind,
    /// The newest record the head vouches for; `None` when the head is missing or unreadable.
    pub head_seq: Option<i64>,
    /// Its hex SHA-256.
    pub head_hash: Option<String>,
    /// Where the store ends (0 when empty); `None` when the store is missing.
    pub store_seq: Option<i64>,
    pub store_hash: Option<String>,
    /// The head file's path, the unreadable head's problem, or the missing store's location.
    pub detail: String,
}

impl Discontinuity {
    /// The stable error code: `audit.truncated` for a store behind its head.
    pub fn code(&self) -> &'static str {
        match self.kind {
            Kind::Truncated => "audit.truncated",
            Kind::StoreMissing => "store.missing",
            Kind::Diverged | Kind::HeadMissing | Kind::HeadUnreadable => "audit.head_mismatch",
        }
    }
}

impl fmt::Display for Discontinuity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head_seq = self.head_seq.unwrap_or(0);
        let head_hash = self.head_hash.as_deref().unwrap_or("-");
        let store_seq = self.store_seq.unwrap_or(0);
        let store_hash = self.store_hash.as_deref().unwrap_or("-");
        match self.kind {
            Kind::Truncated => write!(
                f,
                "the audit log is truncated: the signed head says seq {head_seq} (hash {head_hash}), \
                 the store ends at seq {store_seq}; {WAY_OUT}"
            ),
            Kind::Diverged => write!(
                f,
                "the store does not extend the signed audit head: the head says seq {head_seq} \
                 (hash {head_hash}), the store ends at seq {store_seq} (hash {store_hash}); {WAY_OUT}"
            ),
            Kind::HeadMissing => write!(
                f,
                "the signed audit head {} is missing, but the store ends at seq {store_seq}; {WAY_OUT}",
                self.detail
            ),
            Kind::HeadUnreadable => write!(
                f,
                "the signed audit head cannot be read ({}); the store ends at seq {store_seq}; {WAY_OUT}",
                self.detail
            ),
            Kind::StoreMissing => write!(
                f,
                "the store {} is missing, but the signed head says seq {head_seq} (hash {head_hash})",
                self.detail
            ),
        }
    }
}

/// The newest entry of the head that could be in the store: the pending one when the store
/// went past the committed one, else the committed one.
fn vouched(committed: &SignedHead, pending: Option<&SignedHead>, store_seq: i64) -> (i64, String) {
    match pending {
        Some(p) if store_seq > committed.seq => (p.seq, p.hash.clone()),
        _ => (committed.seq, committed.hash.clone()),
    }
}

/// Whether the store, ending at `tail`, extends what `head` holds. Call under the append
/// lock, so that no appender is between its commit and its head update.
pub fn compare(tail: ChainHead, head: &HeadFile) -> std::result::Result<(), Discontinuity> {
    let store_hash = hex::encode(tail.hash);
    let found = |kind, vouched: Option<(i64, String)>, detail: String| Discontinuity {
        kind,
        head_seq: vouched.as_ref().map(|v| v.0),
        head_hash: vouched.map(|v| v.1),
        store_seq: Some(tail.seq),
        store_hash: Some(store_hash.clone()),
        detail,
    };
    let state = match head.read() {
        Ok(Some(state)) => state,
        // A store that never had a record needs no head (first start, before any append).
        Ok(None) if tail.seq == 0 => return Ok(()),
        Ok(None) => {
            return Err(found(
                Kind::HeadMissing,
                None,
                head.path().display().to_string(),
            ));
        }
        Err(err) => return Err(found(Kind::HeadUnreadable, None, err.to_string())),
    };
    let at = |signed: &SignedHead| {
        signed.seq == tail.seq && signed.hash.eq_ignore_ascii_case(&store_hash)
    };
    if at(&state.committed) || state.pending.as_ref().is_some_and(at) {
        return Ok(());
    }
    let kind = if tail.seq < state.committed.seq {
        Kind::Truncated
    } else {
        Kind::Diverged
    };
    let vouched = vouched(&state.committed, state.pending.as_ref(), tail.seq);
    Err(found(
        kind,
        Some(vouched),
        head.path().display().to_string(),
    ))
}

/// The store's tail read under the append lock and compared with the head, changing
/// nothing (the lock's counter is rolled back).
pub fn locked_compare(
    conn: &mut DbConnection,
    head: &HeadFile,
) -> Result<(ChainHead, std::result::Result<(), Discontinuity>)> {
    let mut seen = None;
    let result = conn.transaction::<(), Error, _>(|conn| {
        let tail = lock_and_read_head(conn)?;
        seen = Some((tail, compare(tail, head)));
        Err(diesel::result::Error::RollbackTransaction.into())
    });
    match (seen, result) {
        (Some(seen), _) => Ok(seen),
        (None, Err(err)) => Err(err),
        (None, Ok(())) => Err(Error::Store(StoreError::Query(
            diesel::result::Error::RollbackTransaction,
        ))),
    }
}

/// Refuses, and notes the episode, when the store does not extend the head. `who` names
/// the process in the marker.
pub fn check(store: &Store, head: &HeadFile, who: &str) -> Result<()> {
    let (_, compared) = locked_compare(&mut *store.conn()?, head)?;
    compared.map_err(|found| refuse(head, found, who))
}

/// Notes `found` in the marker and makes it the error an appender returns.
pub(crate) fn refuse(head: &HeadFile, found: Discontinuity, who: &str) -> Error {
    note(head, &found, who);
    Error::Audit(AuditError::Discontinuity(Box::new(found)))
}

/// What the marker holds: the first and the latest refusal, how many, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub refusals: u64,
    pub first: Discontinuity,
    pub last: Discontinuity,
    pub seen_by: Vec<String>,
}

fn marker_path(head: &HeadFile) -> PathBuf {
    head.path().with_file_name(MARKER_FILE)
}

/// The name this process runs under, for a marker's `seen_by`.
pub fn process_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Adds a refusal to the marker, creating it on the first. Best effort: the refusal itself
/// is what protects the log; a marker that cannot be written is logged.
pub fn note(head: &HeadFile, found: &Discontinuity, who: &str) {
    let path = marker_path(head);
    let now = now_us();
    let mut episode = fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Episode>(&bytes).ok())
        .unwrap_or_else(|| Episode {
            first_seen_us: now,
            last_seen_us: now,
            refusals: 0,
            first: found.clone(),
            last: found.clone(),
            seen_by: Vec::new(),
        });
    episode.last_seen_us = now;
    episode.refusals = episode.refusals.saturating_add(1);
    episode.last = found.clone();
    let who: String = who.chars().take(MAX_NAME_LEN).collect();
    if !episode.seen_by.contains(&who) && episode.seen_by.len() < MAX_SEEN_BY {
        episode.seen_by.push(who);
    }
    if let Err(err) = write_marker(&path, &episode) {
        tracing::warn!(error = %err, path = %path.display(), "could not note the audit head mismatch");
    }
}

/// Notes that the store was found missing on a box whose head vouches for records. Called
/// by the store's open path; says nothing on a box never initialised (no head).
pub fn note_store_missing(data_dir: &Path, store: &str) {
    let head = HeadFile::in_dir(data_dir);
    let Ok(Some(state)) = head.read() else {
        return;
    };
    let (seq, hash) = vouched(&state.committed, state.pending.as_ref(), i64::MIN);
    if seq == 0 {
        return;
    }
    let found = Discontinuity {
        kind: Kind::StoreMissing,
        head_seq: Some(seq),
        head_hash: Some(hash),
        store_seq: None,
        store_hash: None,
        detail: store.to_owned(),
    };
    note(&head, &found, &process_name());
}

fn write_marker(path: &Path, episode: &Episode) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(episode)?;
    // Per-process name: several processes may refuse at once, and each rename is whole.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// The marker's content as an event's details, if there is a marker. One that does not
/// parse still counts: its episode is recorded as unreadable rather than dropped.
pub fn pending_episode(head: &HeadFile) -> Option<serde_json::Value> {
    let bytes = match fs::read(marker_path(head)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => return Some(serde_json::json!({ "marker_unreadable": err.to_string() })),
    };
    Some(match serde_json::from_slice::<Episode>(&bytes) {
        Ok(episode) => serde_json::json!({
            "first_seen": crate::time::format_us(episode.first_seen_us),
            "last_seen": crate::time::format_us(episode.last_seen_us),
            "refusals": episode.refusals,
            "first": episode.first,
            "last": episode.last,
            "seen_by": episode.seen_by,
        }),
        Err(err) => serde_json::json!({ "marker_unreadable": err.to_string() }),
    })
}

/// The record of an episode, appended before the batch that found the store matching again.
pub fn episode_event(details: serde_json::Value) -> AuditEvent {
    AuditEvent::new(Actor::System("audit".into()), "audit.head.mismatch")
        .target("audit:head")
        .outcome(Outcome::Failure)
        .details(details)
}

/// Removes the marker once its episode is in the log, unless a refusal changed it since
/// (then it stays, and the next append records it again: a duplicate, never a loss).
pub fn clear(head: &HeadFile, recorded: &serde_json::Value) {
    if pending_episode(head).as_ref() == Some(recorded)
        && let Err(err) = fs::remove_file(marker_path(head))
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %err, "could not remove the audit head mismatch marker");
    }
}

/// What an accepted restore replaced and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRestore {
    /// What the old head said against the store, as the refusals saw it.
    pub found: Discontinuity,
    /// The store's tail, which the head now vouches for.
    pub store: ChainHead,
    /// The sequence number of the `audit.restore.accepted` record.
    pub seq: i64,
}

impl super::Audit {
    /// An administrator's acceptance of the store as it is: re-signs the head over the
    /// store's tail and records `audit.restore.accepted` with both heads, `how` it came
    /// about and `reason`, in one transaction under the append lock (and, before it, any
    /// episode the marker holds). Refused when the store already extends the head.
    pub fn accept_restore(
        &self,
        actor: &Actor,
        how: &str,
        reason: &str,
    ) -> Result<AcceptedRestore> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Error::invalid(
                "reason",
                "say why this store is accepted (it is recorded)",
            ));
        }
        let mut conn = self.store.conn()?;
        let (found, before, after, episode) = conn.transaction(|conn| {
            let before = lock_and_read_head(conn)?;
            let found = match compare(before, &self.head) {
                Ok(()) => {
                    return Err(Error::Conflict(format!(
                        "the store extends the signed audit head (both at seq {}): there is no restore to accept",
                        before.seq
                    )));
                }
                Err(found) => found,
            };
            // Noted first: should the record below fail after the head is re-signed, the
            // next append still records the episode.
            note(&self.head, &found, &process_name());
            self.head.replace(&self.key, (before.seq, &before.hash))?;
            let episode = pending_episode(&self.head);
            let mut events: Vec<AuditEvent> = episode.iter().cloned().map(episode_event).collect();
            events.push(
                AuditEvent::new(actor.clone(), "audit.restore.accepted")
                    .target("audit:head")
                    .details(serde_json::json!({
                        "how": how,
                        "reason": reason,
                        "old_head": {
                            "kind": found.kind,
                            "seq": found.head_seq,
                            "hash": found.head_hash,
                            "path": self.head.path().display().to_string(),
                        },
                        "store": {
                            "seq": before.seq,
                            "hash": hex::encode(before.hash),
                            "location": self.store.describe(),
                        },
                    })),
            );
            let after = super::append_locked(conn, before, &events)?;
            self.head
                .begin(&self.key, (before.seq, &before.hash), (after.seq, &after.hash))?;
            Ok::<_, Error>((found, before, after, episode))
        })?;
        self.after_commit(&mut conn, before, after);
        if let Some(recorded) = &episode {
            clear(&self.head, recorded);
        }
        Ok(AcceptedRestore {
            found,
            store: before,
            seq: after.seq,
        })
    }
}
