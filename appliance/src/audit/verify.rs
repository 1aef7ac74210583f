//! `audit verify`: walks the chain once and checks it against the signed checkpoints and
//! the signed head, naming the first sequence number that is wrong.
//!
//! What each check catches:
//! - a record's stored hash differs from its content: the record was modified;
//! - a sequence number is skipped: a record was deleted;
//! - a record's `prev_hash` differs from the previous record's hash: records were
//!   inserted, removed or reordered;
//! - the chain differs from a signed checkpoint or the signed head: records were rewritten
//!   with recomputed hashes (which only the signing key could make consistent);
//! - the log ends before the signed head: its tail was dropped;
//! - records after the signed head: they were appended without the signing key.

use std::collections::BTreeMap;
use std::fmt;

use super::Checkpoint;
use super::chain::{GENESIS, Hash};
use super::export::{ExportFilter, for_each_record};
use super::head::SignedHead;
use crate::error::Result;
use crate::keys::VerifyingKey;
use crate::store::DbConnection;

/// The first problem found; `seq` is the first record known to be bad, when one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    pub seq: Option<i64>,
    pub reason: String,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "first bad record: seq {seq}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// The last sequence number in the log (0 when empty).
    pub tail_seq: i64,
    pub checkpoints: usize,
    pub head_seq: Option<i64>,
    pub problem: Option<Tamper>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

fn bad(seq: i64, reason: String) -> Tamper {
    Tamper {
        seq: Some(seq),
        reason,
    }
}

/// Verifies the whole log. `head` is the signed head file's content; `None` means it is
/// missing, which is only acceptable for an empty log.
pub fn verify(
    conn: &mut DbConnection,
    key: &VerifyingKey,
    head: Option<&SignedHead>,
) -> Result<VerifyReport> {
    let checkpoint_rows = Checkpoint::list(conn)?;
    let mut report = VerifyReport {
        records: 0,
        tail_seq: 0,
        checkpoints: checkpoint_rows.len(),
        head_seq: head.map(|h| h.seq),
        problem: None,
    };

    // Signatures first: a checkpoint that does not verify cannot vouch for anything.
    let mut checkpoints = BTreeMap::new();
    for cp in &checkpoint_rows {
        if cp.key_id != key.key_id() || !key.verify(&cp.statement(), &cp.signature) {
            report.problem = Some(bad(
                cp.seq,
                format!("the checkpoint at seq {} has an invalid signature", cp.seq),
            ));
            return Ok(report);
        }
        checkpoints.insert(cp.seq, cp.hash.clone());
    }
    let head_hash = match head.map(|h| h.verified_hash(key)) {
        Some(Err(problem)) => {
            report.problem = Some(Tamper {
                seq: None,
                reason: format!("the signed audit head is not valid: {problem}"),
            });
            return Ok(report);
        }
        Some(Ok(hash)) => Some(hash),
        None => None,
    };

    let mut expected_seq = 1;
    let mut prev: Hash = GENESIS;
    let mut last_vouched = 0; // the newest seq a checkpoint confirmed
    let mut chain_problem = None;
    report.records = for_each_record(conn, ExportFilter::default(), |record| {
        if record.seq != expected_seq {
            chain_problem = Some(bad(
                expected_seq,
                format!(
                    "record {expected_seq} is missing: the log goes from {} to {}",
                    expected_seq - 1,
                    record.seq
                ),
            ));
            return Ok(false);
        }
        if record.prev_hash != prev {
            chain_problem = Some(bad(
                record.seq,
                format!(
                    "record {} does not follow record {}: records were inserted, removed or reordered",
                    record.seq,
                    record.seq - 1
                ),
            ));
            return Ok(false);
        }
        let hash = record.compute_hash();
        if record.hash != hash {
            chain_problem = Some(bad(
                record.seq,
                format!(
                    "record {} does not match its hash: it was modified",
                    record.seq
                ),
            ));
            return Ok(false);
        }
        let signed = checkpoints
            .get(&record.seq)
            .map(|h| ("checkpoint", h))
            .or_else(|| {
                head_hash
                    .as_ref()
                    .filter(|_| head.is_some_and(|h| h.seq == record.seq))
                    .map(|h| ("head", h))
            });
        if let Some((what, signed_hash)) = signed {
            if signed_hash.as_slice() != hash {
                chain_problem = Some(bad(
                    last_vouched + 1,
                    format!(
                        "the chain at record {} differs from its signed {what}: a record in {}..={} was rewritten",
                        record.seq,
                        last_vouched + 1,
                        record.seq
                    ),
                ));
                return Ok(false);
            }
            last_vouched = record.seq;
        }
        prev = hash;
        report.tail_seq = record.seq;
        expected_seq += 1;
        Ok(true)
    })?;
    if let Some(problem) = chain_problem {
        report.problem = Some(problem);
        return Ok(report);
    }

    // The end of the log against what was signed.
    let tail = report.tail_seq;
    let signed_end = checkpoints
        .keys()
        .next_back()
        .copied()
        .max(head.map(|h| h.seq))
        .unwrap_or(0);
    report.problem = if signed_end > tail {
        Some(bad(
            tail + 1,
            format!(
                "the log ends at record {tail}, but record {signed_end} was signed: records {}..={signed_end} were removed",
                tail + 1
            ),
        ))
    } else if let Some(head) = head {
        (tail > head.seq).then(|| {
            bad(
                head.seq + 1,
                format!(
                    "records {}..={tail} come after the signed head ({}): they were not appended by Plantgate, \
                     or it was stopped between commit and signing",
                    head.seq + 1,
                    head.seq
                ),
            )
        })
    } else if tail > 0 {
        Some(Tamper {
            seq: None,
            reason: "the signed audit head is missing, so a dropped tail cannot be ruled out"
                .to_owned(),
        })
    } else {
        None
    };
    Ok(report)
}
