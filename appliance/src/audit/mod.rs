//! The tamper-evident audit log. Every write to it goes through [`Audit`].
//!
//! Records form a SHA-256 hash chain ([`chain`]). Appenders serialise on the one-row
//! `audit_append_lock` table, so concurrent processes never fork the chain. After each
//! commit the chain head is signed into a file outside the store ([`head`]), and every N
//! records or M minutes a signed checkpoint is stored and optionally sent to syslog.

pub mod chain;
pub mod continuity;
pub mod episode;
pub mod export;
pub mod head;
pub mod verify;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use diesel::prelude::*;
use serde::Serialize;

use crate::config::Config;
use crate::error::{AuditError, Error, Result};
use crate::ids::UserId;
use crate::keys::SigningKey;
use crate::schema::{audit_append_lock, audit_checkpoints, audit_log};
use crate::store::on_backend;
use crate::store::{DbConnection, Store};
use crate::time::now_us;
use chain::{AuditRecord, GENESIS, Hash};
use head::{HeadFile, statement};

pub use export::{ExportFilter, ExportFormat};
pub use verify::{Tamper, Truncation, VerifyReport};

const MAX_ACTION_LEN: usize = 100;
const MAX_SHORT_FIELD_LEN: usize = 1024;
const MAX_DETAILS_LEN: usize = 64 * 1024;
/// Rows per INSERT; SQLite allows 32766 bound values and a record binds 11.
const INSERT_CHUNK: usize = 1000;

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(UserId),
    /// A field device, by serial.
    Device(String),
    /// A component of the appliance itself, such as `cli`, `firewall` or `updater`.
    System(String),
}

impl fmt::Display for Actor {
    /// `user:3`, `system:firewall`: how records name who ended something.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id())
    }
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::User(_) => "user",
            Actor::Device(_) => "device",
            Actor::System(_) => "system",
        }
    }

    pub fn id(&self) -> String {
        match self {
            Actor::User(id) => id.0.to_string(),
            Actor::Device(serial) => serial.clone(),
            Actor::System(name) => name.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// The action was attempted and went wrong (a bad password, a failed install).
    Failure,
    /// Policy refused the action.
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// One thing to record, built with `AuditEvent::new(actor, "auth.login.failed")` and the
/// setters below. The sequence number, time and hashes are assigned when it is appended.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub actor: Actor,
    /// The client address, or `local` for the console and the appliance's own processes.
    pub source: String,
    /// A stable dotted code: `auth.login.failed`, `grant.revoked`.
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(actor: Actor, action: &str) -> AuditEvent {
        AuditEvent {
            actor,
            source: "local".to_owned(),
            action: action.to_owned(),
            target: String::new(),
            outcome: Outcome::Success,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn source(mut self, source: impl fmt::Display) -> Self {
        self.source = source.to_string();
        self
    }

    pub fn target(mut self, target: impl fmt::Display) -> Self {
        self.target = target.to_string();
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Checks the event and renders its details as canonical JSON text.
    fn canonical_details(&self) -> Result<String> {
        let invalid = |problem: String| Error::Audit(AuditError::InvalidEvent(problem));
        if !is_action_code(&self.action) {
            return Err(invalid(format!(
                "action {:?} is not a dotted code such as `auth.login.failed`",
                self.action
            )));
        }
        let actor_id = self.actor.id();
        for (name, value) in [
            ("actor", &actor_id),
            ("source", &self.source),
            ("target", &self.target),
        ] {
            if value.len() > MAX_SHORT_FIELD_LEN {
                return Err(invalid(format!(
                    "{name} is longer than {MAX_SHORT_FIELD_LEN} bytes"
                )));
            }
        }
        if !self.details.is_object() {
            return Err(invalid("details must be a JSON object".to_owned()));
        }
        // serde_json's map is a BTreeMap (no `preserve_order`), so keys come out sorted.
        let details =
            serde_json::to_string(&self.details).map_err(|err| invalid(err.to_string()))?;
        if details.len() > MAX_DETAILS_LEN {
            return Err(invalid(format!(
                "details are longer than {MAX_DETAILS_LEN} bytes"
            )));
        }
        Ok(details)
    }
}

fn is_action_code(action: &str) -> bool {
    let mut parts = 0;
    let well_formed = action.split('.').all(|part| {
        parts += 1;
        part.starts_with(|c: char| c.is_ascii_lowercase())
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    });
    well_formed && parts >= 2 && action.len() <= MAX_ACTION_LEN
}

/// A signed statement of the chain head at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_checkpoints)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub signed_at_us: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl Checkpoint {
    pub fn statement(&self) -> Vec<u8> {
        statement("checkpoint", self.seq, &self.hash, self.signed_at_us)
    }

    /// One self-contained line that a witness can keep and later check with the public key.
    pub fn witness_line(&self) -> String {
        use base64::Engine;
        format!(
            "plantgate audit checkpoint seq={} hash={} signed_at={} key_id={} signature={}",
            self.seq,
            hex::encode(&self.hash),
            crate::time::format_us(self.signed_at_us),
            self.key_id,
            base64::engine::general_purpose::STANDARD.encode(&self.signature),
        )
    }

    pub fn list(conn: &mut DbConnection) -> Result<Vec<Checkpoint>> {
        Ok(audit_checkpoints::table
            .order(audit_checkpoints::seq)
            .select(Checkpoint::as_select())
            .load(conn)?)
    }
}

/// The newest record's sequence number and hash; `(0, GENESIS)` for an empty log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: Hash,
}

/// The appender. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    store: Store,
    key: Arc<SigningKey>,
    head: HeadFile,
    checkpoint_every_records: i64,
    checkpoint_every_us: i64,
    syslog_socket: Option<PathBuf>,
}

impl Audit {
    /// Opens the appender; fails with "run `plantgate init`" when there is no signing key,
    /// and with [`AuditError::Discontinuity`] when the store does not extend the signed head
    /// (every process opens the appliance through here, so none starts on such a store). An
    /// episode of mismatch that has ended is recorded now, as `audit.head.mismatch`.
    pub fn open(store: Store, config: &Config) -> Result<Audit> {
        let audit = Audit::open_for_restore(store, config)?;
        // Without a head file there is nothing to compare yet (a store being created); the
        // append path refuses a store with records but no head.
        if audit.head.path().exists() {
            continuity::check(&audit.store, &audit.head, &continuity::process_name())?;
            if continuity::pending_episode(&audit.head).is_some() {
                audit.record_all(Vec::new())?;
            }
        }
        Ok(audit)
    }

    /// Opens the appender without comparing the store with the signed head: for
    /// [`Audit::accept_restore`] only.
    pub fn open_for_restore(store: Store, config: &Config) -> Result<Audit> {
        let key = SigningKey::load(&config.keys_dir())?;
        Ok(Audit {
            store,
            key: Arc::new(key),
            head: HeadFile::in_dir(&config.data_dir),
            checkpoint_every_records: i64::try_from(config.audit.checkpoint_every_records)
                .unwrap_or(i64::MAX),
            checkpoint_every_us: i64::try_from(
                config
                    .audit
                    .checkpoint_every_minutes
                    .saturating_mul(60_000_000),
            )
            .unwrap_or(i64::MAX),
            syslog_socket: config.audit.syslog_socket.clone(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn head_file(&self) -> &HeadFile {
        &self.head
    }

    /// Appends one event and returns its sequence number.
    pub fn record(&self, event: AuditEvent) -> Result<i64> {
        Ok(self.record_all(vec![event])?.seq)
    }

    /// Appends all events in one transaction and returns the head after them.
    pub fn record_all(&self, events: Vec<AuditEvent>) -> Result<ChainHead> {
        Ok(self.append_with(|_| Ok(((), events)))?.1)
    }

    /// Runs `change` and appends the events it returns in one transaction: the change and
    /// its audit records commit together or not at all.
    pub fn record_with<T>(
        &self,
        change: impl FnOnce(&mut DbConnection) -> Result<(T, Vec<AuditEvent>)>,
    ) -> Result<T> {
        Ok(self.append_with(change)?.0)
    }

    fn append_with<T>(
        &self,
        change: impl FnOnce(&mut DbConnection) -> Result<(T, Vec<AuditEvent>)>,
    ) -> Result<(T, ChainHead)> {
        let mut conn = self.store.conn()?;
        let (value, before, after, episode) = conn.transaction(|conn| {
            let before = lock_and_read_head(conn)?;
            // Never write over a store that does not extend the signed head (continuity).
            continuity::compare(before, &self.head).map_err(|found| {
                continuity::refuse(&self.head, found, &continuity::process_name())
            })?;
            let episode = continuity::pending_episode(&self.head);
            let (value, mut events) = change(conn)?;
            if let Some(details) = &episode {
                events.insert(0, continuity::episode_event(details.clone()));
            }
            let after = append_locked(conn, before, &events)?;
            if after.seq != before.seq {
                // Signed before commit: if this fails, nothing is appended.
                self.head.begin(
                    &self.key,
                    (before.seq, &before.hash),
                    (after.seq, &after.hash),
                )?;
            }
            Ok::<_, Error>((value, before, after, episode))
        })?;
        self.after_commit(&mut conn, before, after);
        if let Some(recorded) = &episode {
            continuity::clear(&self.head, recorded);
        }
        Ok((value, after))
    }

    /// Marks the new head committed and takes a checkpoint when one is due. The records are
    /// already committed, so a failure here is logged, not returned: the head file's pending
    /// entry still covers them.
    fn after_commit(&self, conn: &mut DbConnection, before: ChainHead, after: ChainHead) {
        if after.seq == before.seq {
            return;
        }
        if let Err(err) = self.head.commit(&self.key, (after.seq, &after.hash)) {
            tracing::error!(error = %err, seq = after.seq, "could not sign the audit head");
        }
        let crossed_boundary =
            before.seq / self.checkpoint_every_records != after.seq / self.checkpoint_every_records;
        let due = crossed_boundary || matches!(self.checkpoint_overdue(conn), Ok(true));
        if due && let Err(err) = self.write_checkpoint(conn, after) {
            tracing::error!(error = %err, seq = after.seq, "could not write an audit checkpoint");
        }
    }

    fn checkpoint_overdue(&self, conn: &mut DbConnection) -> Result<bool> {
        let last: Option<i64> = audit_checkpoints::table
            .select(diesel::dsl::max(audit_checkpoints::signed_at_us))
            .first(conn)?;
        Ok(last.is_none_or(|at| now_us() - at >= self.checkpoint_every_us))
    }

    /// For a service's timer: checkpoints the current head if it moved and the last
    /// checkpoint is older than the configured interval.
    pub fn checkpoint_if_due(&self) -> Result<Option<Checkpoint>> {
        let mut conn = self.store.conn()?;
        let head = read_head(&mut conn)?;
        let last_seq: Option<i64> = audit_checkpoints::table
            .select(diesel::dsl::max(audit_checkpoints::seq))
            .first(&mut conn)?;
        if head.seq == 0 || last_seq == Some(head.seq) || !self.checkpoint_overdue(&mut conn)? {
            return Ok(None);
        }
        self.write_checkpoint(&mut conn, head).map(Some)
    }

    fn write_checkpoint(&self, conn: &mut DbConnection, head: ChainHead) -> Result<Checkpoint> {
        let signed_at_us = now_us();
        let checkpoint = Checkpoint {
            seq: head.seq,
            hash: head.hash.to_vec(),
            signed_at_us,
            key_id: self.key.key_id().to_owned(),
            signature: self.key.sign(&statement(
                "checkpoint",
                head.seq,
                &head.hash,
                signed_at_us,
            ))?,
        };
        match diesel::insert_into(audit_checkpoints::table)
            .values(&checkpoint)
            .execute(conn)
        {
            Ok(_) => {}
            // Another process checkpointed the same head first; theirs stands.
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {
                return Ok(checkpoint);
            }
            Err(err) => return Err(err.into()),
        }
        if let Some(socket) = &self.syslog_socket
            && let Err(err) = send_to_syslog(socket, std::slice::from_ref(&checkpoint))
        {
            tracing::warn!(error = %err, "could not send the audit checkpoint to syslog");
        }
        Ok(checkpoint)
    }
}

/// Takes the appenders' lock (a write lock on SQLite, a row lock on PostgreSQL), then reads
/// the head. Must be the first statement of the transaction, so that on SQLite the
/// transaction never holds a read snapshot that a concurrent commit could make stale.
fn lock_and_read_head(conn: &mut DbConnection) -> Result<ChainHead> {
    diesel::update(audit_append_lock::table)
        .set(audit_append_lock::appends.eq(audit_append_lock::appends + 1))
        .execute(conn)?;
    read_head(conn)
}

fn read_head(conn: &mut DbConnection) -> Result<ChainHead> {
    let newest: Option<(i64, Vec<u8>)> = audit_log::table
        .select((audit_log::seq, audit_log::hash))
        .order(audit_log::seq.desc())
        .first(conn)
        .optional()?;
    Ok(match newest {
        None => ChainHead {
            seq: 0,
            hash: GENESIS,
        },
        Some((seq, hash)) => ChainHead {
            seq,
            hash: hash.try_into().unwrap_or(GENESIS),
        },
    })
}

fn append_locked(
    conn: &mut DbConnection,
    mut head: ChainHead,
    events: &[AuditEvent],
) -> Result<ChainHead> {
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        let mut record = AuditRecord {
            seq: head.seq + 1,
            occurred_at_us: now_us(),
            actor_kind: event.actor.kind().to_owned(),
            actor_id: event.actor.id(),
            source: event.source.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            outcome: event.outcome.as_str().to_owned(),
            details: event.canonical_details()?,
            prev_hash: head.hash.to_vec(),
            hash: Vec::new(),
        };
        let hash = record.compute_hash();
        record.hash = hash.to_vec();
        head = ChainHead {
            seq: record.seq,
            hash,
        };
        records.push(record);
    }
    for chunk in records.chunks(INSERT_CHUNK) {
        on_backend!(conn, c => diesel::insert_into(audit_log::table).values(chunk).execute(c))?;
    }
    Ok(head)
}

/// Sends checkpoints to a local syslog socket, one message each.
pub fn send_to_syslog(socket: &std::path::Path, checkpoints: &[Checkpoint]) -> Result<()> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_AUTH,
        hostname: None,
        process: "plantgate-audit".into(),
        pid: std::process::id(),
    };
    let mut logger = syslog::unix_custom(formatter, socket)
        .map_err(|err| Error::Audit(AuditError::Syslog(format!("{}: {err}", socket.display()))))?;
    for checkpoint in checkpoints {
        logger
            .notice(checkpoint.witness_line())
            .map_err(|err| Error::Audit(AuditError::Syslog(err.to_string())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_codes_are_dotted_lowercase() {
        for good in [
            "auth.login.failed",
            "grant.revoked",
            "store.migrated",
            "a1.b_2",
        ] {
            assert!(is_action_code(good), "{good}");
        }
        for bad in [
            "login",
            "Auth.login",
            "auth..login",
            ".auth",
            "auth.",
            "auth.log in",
            "auth.1x",
            "",
        ] {
            assert!(!is_action_code(bad), "{bad}");
        }
    }

    #[test]
    fn details_must_be_an_object_and_are_canonical() {
        let event = AuditEvent::new(Actor::System("cli".into()), "a.b")
            .details(serde_json::json!({"z": 1, "a": {"y": 2, "b": 3}}));
        assert_eq!(
            event.canonical_details().ok().as_deref(),
            Some(r#"{"a":{"b":3,"y":2},"z":1}"#)
        );
        let event =
            AuditEvent::new(Actor::System("cli".into()), "a.b").details(serde_json::json!([1]));
        assert!(event.canonical_details().is_err());
    }
}
