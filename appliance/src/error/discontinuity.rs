//! Why the store does not extend the signed audit head: what the head and the store each
//! say, as an appender refuses with it ([`AuditError::Discontinuity`](super::AuditError)) and
//! as the episode marker beside the head keeps it. The checks that find one are in
//! `crate::audit::continuity`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a refusal ends, for an operator: both ways out.
const WAY_OUT: &str = "nothing can be appended until the real store is put back, or an \
    administrator accepts this one as a restore with `plantgate audit accept-restore --reason \"...\"` \
    (as root on the appliance)";

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
