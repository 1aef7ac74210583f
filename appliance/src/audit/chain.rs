//! The hash chain: what a stored record is, and the canonical encoding its hash covers.
//!
//! `hash = SHA-256("plantgate-audit-v1\0" ‖ be64(seq) ‖ be64(occurred_at_us) ‖ field(actor_kind)
//!   ‖ field(actor_id) ‖ field(source) ‖ field(action) ‖ field(target) ‖ field(outcome)
//!   ‖ field(details) ‖ prev_hash)`, where `field(x) = be32(len(x)) ‖ x` and the first
//! record's `prev_hash` is 32 zero bytes. Length prefixes make the encoding unambiguous,
//! and the stored `details` text is hashed byte for byte, so verifying needs no JSON parsing.

use diesel::prelude::*;
use openssl::sha::Sha256;
use serde::Serialize;

use crate::schema::audit_log;

pub type Hash = [u8; 32];

/// The `prev_hash` of record 1.
pub const GENESIS: Hash = [0; 32];

const DOMAIN: &[u8] = b"plantgate-audit-v1\0";

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = audit_log)]
pub struct AuditRecord {
    pub seq: i64,
    pub occurred_at_us: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// Canonical JSON text (keys sorted, no whitespace).
    pub details: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditRecord {
    /// The hash this record's content and link call for; compare with `self.hash`.
    pub fn compute_hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(&self.seq.to_be_bytes());
        h.update(&self.occurred_at_us.to_be_bytes());
        for field in [
            &self.actor_kind,
            &self.actor_id,
            &self.source,
            &self.action,
            &self.target,
            &self.outcome,
            &self.details,
        ] {
            // Fields are capped far below 4 GiB when appended; saturating keeps a hostile
            // stored value from panicking the verifier.
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            h.update(&len.to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update(&self.prev_hash);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            seq: 1,
            occurred_at_us: 1_700_000_000_000_000,
            actor_kind: "system".into(),
            actor_id: "cli".into(),
            source: "local".into(),
            action: "appliance.initialised".into(),
            target: "".into(),
            outcome: "success".into(),
            details: "{}".into(),
            prev_hash: GENESIS.to_vec(),
            hash: vec![],
        }
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let a = record();
        let mut b = record();
        b.actor_kind = "systemc".into();
        b.actor_id = "li".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
    }

    #[test]
    fn every_field_is_covered() {
        let base = record().compute_hash();
        let changes: [fn(&mut AuditRecord); 11] = [
            |r| r.seq = 2,
            |r| r.occurred_at_us += 1,
            |r| r.actor_kind = "user".into(),
            |r| r.actor_id = "x".into(),
            |r| r.source = "10.0.0.1".into(),
            |r| r.action = "auth.login.failed".into(),
            |r| r.target = "user:1".into(),
            |r| r.outcome = "failure".into(),
            |r| r.details = "{\"a\":1}".into(),
            |r| r.prev_hash = vec![1; 32],
            |r| r.hash = vec![9; 32],
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut r = record();
            change(&mut r);
            // The stored hash is the one field the hash does not cover.
            assert_eq!(r.compute_hash() == base, i == 10, "field change {i}");
        }
    }
}
