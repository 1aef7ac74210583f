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
//! Every refusal also notes the episode in a marker file beside the head (`super::episode`,
//! whose names this module hands on as well). The first append after the store matches
//! again records it as `audit.head.mismatch` and removes the marker, so putting the real
//! store back does not make the episode vanish.

use diesel::Connection;

pub use super::episode::{
    Episode, MARKER_FILE, clear, note, note_store_missing, pending_episode, process_name,
};
use super::head::{HeadFile, SignedHead, vouched};
use super::{Actor, AuditEvent, ChainHead, Outcome, lock_and_read_head};
use crate::config::Config;
pub use crate::error::discontinuity::{Discontinuity, Kind};
use crate::error::{AuditError, Error, Result, StoreError};
use crate::store::{DbConnection, Store};

/// Opens the existing store as [`Store::open`] does; when the store is missing on a box whose
/// head vouches for records, also notes the episode, which the audit log must not lose (the
/// first append after the store is back records it).
pub fn open_store(config: &Config) -> Result<Store> {
    let opened = Store::open(config);
    if let Err(Error::Store(StoreError::Missing { target, .. })) = &opened {
        note_store_missing(&config.data_dir, target);
    }
    opened
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

/// The record of an episode, appended before the batch that found the store matching again.
pub fn episode_event(details: serde_json::Value) -> AuditEvent {
    AuditEvent::new(Actor::System("audit".into()), "audit.head.mismatch")
        .target("audit:head")
        .outcome(Outcome::Failure)
        .details(details)
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
