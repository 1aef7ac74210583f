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
use super::head::HeadState;
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
    /// Set when the log ends before the record the signed head vouches for: the store was
    /// replaced by an empty or an older one, or its tail was dropped.
    pub truncated: Option<Truncation>,
}

/// Where the signed head and the store each end, when the store ends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub head_seq: i64,
    /// Hex SHA-256 of record `head_seq`, as signed.
    pub head_hash: String,
    pub store_seq: i64,
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the head says seq {} (hash {}), the store ends at seq {}",
            self.head_seq, self.head_hash, self.store_seq
        )
    }
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
    head: Option<&HeadState>,
) -> Result<VerifyReport> {
    let checkpoint_rows = Checkpoint::list(conn)?;
    let mut report = VerifyReport {
        records: 0,
        tail_seq: 0,
        checkpoints: checkpoint_rows.len(),
        head_seq: None,
        problem: None,
        truncated: None,
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
    let mut signed_heads = Vec::new();
    for signed in head
        .into_iter()
        .flat_map(|state| std::iter::once(&state.committed).chain(&state.pending))
    {
        match signed.verified_hash(key) {
            Ok(hash) => signed_heads.push((signed.seq, hash)),
            Err(problem) => {
                report.problem = Some(Tamper {
                    seq: None,
                    reason: format!("the signed audit head is not valid: {problem}"),
                });
                return Ok(report);
            }
        }
    }
    let committed = signed_heads.first().cloned();
    let pending = signed_heads.get(1).cloned();
    // The committed head vouches like a checkpoint; the pending one only if the log ends there.
    if let Some((seq, hash)) = &committed
        && *seq > 0
    {
        checkpoints.entry(*seq).or_insert_with(|| hash.clone());
    }

    let mut expected_seq = 1;
    let mut prev: Hash = GENESIS;
    let mut last_vouched = 0; // the newest seq a checkpoint confirmed
    let mut chain_problem = None;
    report.records = for_each_record(conn, &ExportFilter::default(), |record| {
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
        if let Some(signed_hash) = checkpoints.get(&record.seq) {
            if signed_hash.as_slice() != hash {
                chain_problem = Some(bad(
                    last_vouched + 1,
                    format!(
                        "the chain at record {} differs from what was signed there: a record in {}..={} was rewritten",
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
    if let Some((seq, hash)) = &committed
        && *seq > tail
    {
        report.truncated = Some(Truncation {
            head_seq: *seq,
            head_hash: hex::encode(hash),
            store_seq: tail,
        });
    }
    let signed_end = checkpoints.keys().next_back().copied().unwrap_or(0);
    let removed = |to: i64| {
        bad(
            tail + 1,
            format!(
                "the log ends at record {tail}, but record {to} was signed: records {}..={to} were removed",
                tail + 1
            ),
        )
    };
    report.problem = match (committed, pending) {
        _ if signed_end > tail => Some(removed(signed_end)),
        (Some((seq, _)), _) if seq == tail => {
            report.head_seq = Some(seq);
            None
        }
        // A crash between commit and the head's update leaves the log at the pending head.
        (Some(_), Some((seq, hash))) if seq == tail => {
            report.head_seq = Some(seq);
            (hash.as_slice() != prev).then(|| {
                bad(last_vouched + 1, format!("record {tail} differs from the signed head: a record in {}..={tail} was rewritten", last_vouched + 1))
            })
        }
        (Some(_), Some((seq, _))) if seq > tail => Some(removed(seq)),
        (Some((committed, _)), pending) => {
            let signed = pending.map_or(committed, |(seq, _)| seq.max(committed));
            Some(bad(
                signed + 1,
                format!(
                    "records {}..={tail} come after the signed head ({signed}): they were not appended by Plantgate",
                    signed + 1
                ),
            ))
        }
        (None, _) if tail > 0 => Some(Tamper {
            seq: None,
            reason: "the signed audit head is missing, so a dropped tail cannot be ruled out"
                .to_owned(),
        }),
        (None, _) => None,
    };
    Ok(report)
}
