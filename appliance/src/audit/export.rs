//! Streaming reads of the log: the one loop that `verify`, the CLI's export and the web
//! viewer share. Rows are read one at a time, so memory stays flat for any log size.

use std::io::Write;

use diesel::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use super::chain::AuditRecord;
use crate::error::{AuditError, Error, Result};
use crate::schema::audit_log;
use crate::store::DbConnection;
use crate::store::on_backend;
use crate::time::format_us;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line, with hashes: for SIEMs and scripts.
    Jsonl,
    /// One row per record: for spreadsheets. Cells that a spreadsheet would run as a formula
    /// are prefixed with `'` (OWASP's CSV-injection advice); use JSONL for exact values.
    Csv,
}

/// Which records to read: `since` inclusive, `until` exclusive, both in microseconds;
/// `actor` is an actor id, `action` a code or a prefix ending in `.` (`auth.`), and `target`
/// and `outcome` match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
}

/// Applies an [`ExportFilter`] to a boxed `audit_log` query, whatever its backend.
macro_rules! filtered {
    ($query:expr, $filter:expr) => {{
        let filter: &ExportFilter = $filter;
        let mut query = $query;
        if let Some(since) = filter.since_us {
            query = query.filter(audit_log::occurred_at_us.ge(since));
        }
        if let Some(until) = filter.until_us {
            query = query.filter(audit_log::occurred_at_us.lt(until));
        }
        if let Some(actor) = &filter.actor {
            query = query.filter(audit_log::actor_id.eq(actor.clone()));
        }
        if let Some(action) = &filter.action {
            query = match action.strip_suffix('.') {
                // A prefix: escape LIKE's wildcards in what the user typed.
                Some(prefix) => {
                    let escaped = prefix
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_");
                    query.filter(audit_log::action.like(format!("{escaped}.%")).escape('\\'))
                }
                None => query.filter(audit_log::action.eq(action.clone())),
            };
        }
        if let Some(target) = &filter.target {
            query = query.filter(audit_log::target.eq(target.clone()));
        }
        if let Some(outcome) = &filter.outcome {
            query = query.filter(audit_log::outcome.eq(outcome.clone()));
        }
        query
    }};
}

/// Calls `visit` for each record in sequence order and returns how many it saw.
/// `visit` returns `false` to stop early.
pub fn for_each_record(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    mut visit: impl FnMut(AuditRecord) -> Result<bool>,
) -> Result<u64> {
    let mut seen = 0;
    on_backend!(conn, c => {
        let query = filtered!(
            audit_log::table.select(AuditRecord::as_select()).order(audit_log::seq).into_boxed(),
            filter
        );
        for row in query.load_iter::<AuditRecord, diesel::connection::DefaultLoadingMode>(c)? {
            seen += 1;
            if !visit(row?)? {
                break;
            }
        }
    });
    Ok(seen)
}

#[derive(Serialize)]
struct JsonLine<'a> {
    seq: i64,
    time: String,
    actor: JsonActor<'a>,
    source: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: &'a str,
    details: &'a RawValue,
    prev_hash: String,
    hash: String,
}

#[derive(Serialize)]
struct JsonActor<'a> {
    kind: &'a str,
    id: &'a str,
}

pub const CSV_HEADER: [&str; 11] = [
    "seq",
    "time",
    "actor_kind",
    "actor_id",
    "source",
    "action",
    "target",
    "outcome",
    "details",
    "prev_hash",
    "hash",
];

/// Writes the filtered log to `out` and returns the number of records written.
/// One page of the filtered log, newest first: up to `limit` records older than `before`.
pub fn page(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRecord>> {
    Ok(on_backend!(conn, c => {
        let mut query = filtered!(
            audit_log::table.select(AuditRecord::as_select()).order(audit_log::seq.desc()).into_boxed(),
            filter
        );
        if let Some(before) = before {
            query = query.filter(audit_log::seq.lt(before));
        }
        query.limit(limit).load(c)?
    }))
}

pub fn export(
    conn: &mut DbConnection,
    filter: &ExportFilter,
    format: ExportFormat,
    out: impl Write,
) -> Result<u64> {
    let failed = |err: &dyn std::fmt::Display| Error::Audit(AuditError::Export(err.to_string()));
    match format {
        ExportFormat::Jsonl => {
            let mut out = std::io::BufWriter::new(out);
            let count = for_each_record(conn, filter, |r| {
                // A tampered row may hold invalid JSON; export it as a string rather than fail.
                let quoted;
                let details = match serde_json::from_str::<&RawValue>(&r.details) {
                    Ok(raw) => raw,
                    Err(_) => {
                        quoted =
                            serde_json::value::to_raw_value(&r.details).map_err(|e| failed(&e))?;
                        &quoted
                    }
                };
                let line = JsonLine {
                    seq: r.seq,
                    time: format_us(r.occurred_at_us),
                    actor: JsonActor {
                        kind: &r.actor_kind,
                        id: &r.actor_id,
                    },
                    source: &r.source,
                    action: &r.action,
                    target: &r.target,
                    outcome: &r.outcome,
                    details,
                    prev_hash: hex::encode(&r.prev_hash),
                    hash: hex::encode(&r.hash),
                };
                serde_json::to_writer(&mut out, &line).map_err(|e| failed(&e))?;
                out.write_all(b"\n").map_err(|e| failed(&e))?;
                Ok(true)
            })?;
            out.flush().map_err(|e| failed(&e))?;
            Ok(count)
        }
        ExportFormat::Csv => {
            let mut out = csv::Writer::from_writer(out);
            out.write_record(CSV_HEADER).map_err(|e| failed(&e))?;
            let count = for_each_record(conn, filter, |r| {
                let seq = r.seq.to_string();
                let fields = [
                    seq.as_str(),
                    &format_us(r.occurred_at_us),
                    &r.actor_kind,
                    &neutralise_formula(&r.actor_id),
                    &neutralise_formula(&r.source),
                    &r.action,
                    &neutralise_formula(&r.target),
                    &r.outcome,
                    &neutralise_formula(&r.details),
                    &hex::encode(&r.prev_hash),
                    &hex::encode(&r.hash),
                ];
                out.write_record(fields).map_err(|e| failed(&e))?;
                Ok(true)
            })?;
            out.flush().map_err(|e| failed(&e))?;
            Ok(count)
        }
    }
}

pub(crate) fn neutralise_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreadsheet_formulas_are_neutralised() {
        assert_eq!(
            neutralise_formula("=HYPERLINK(\"x\")"),
            "'=HYPERLINK(\"x\")"
        );
        assert_eq!(neutralise_formula("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise_formula("user:3"), "user:3");
    }
}
