//! The requests a user may see, written out oldest first as JSONL or CSV for an auditor or
//! a spreadsheet.

use super::views::{Show, visible};
use crate::error::{Error, Result};
use crate::models::User;
use crate::store::DbConnection;
use crate::time::format_us;

/// Writes the requests `user` may see, oldest first, as JSONL or CSV (cells a spreadsheet
/// would run as formulas are neutralised).
pub fn export(
    conn: &mut DbConnection,
    user: &User,
    format: crate::audit::export::ExportFormat,
    out: &mut dyn std::io::Write,
) -> Result<usize> {
    use crate::audit::export::ExportFormat;
    let mut rows = visible(conn, user, Show::All, i64::MAX)?;
    rows.reverse();
    let fail = |err: std::io::Error| Error::invalid("export", err.to_string());
    match format {
        ExportFormat::Jsonl => {
            for row in &rows {
                serde_json::to_writer(&mut *out, row)
                    .map_err(|err| Error::invalid("export", err.to_string()))?;
                out.write_all(b"\n").map_err(fail)?;
            }
        }
        ExportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record([
                "id",
                "state",
                "site",
                "machine",
                "device_addr",
                "agent",
                "ports",
                "requester",
                "requester_email",
                "requester_addr",
                "address_declared",
                "reason",
                "requested_minutes",
                "created_at",
                "decided_by",
                "decided_at",
                "decision_reason",
                "approved_minutes",
                "connected_at",
                "expires_at",
                "ended_at",
                "end_reason",
            ])
            .map_err(|err| Error::invalid("export", err.to_string()))?;
            let time = |us: Option<i64>| us.map(format_us).unwrap_or_default();
            for row in &rows {
                let r = &row.request;
                let cells = [
                    r.id.0.to_string(),
                    r.state.clone(),
                    row.site.clone(),
                    row.machine.clone(),
                    row.device_addr.clone(),
                    r.agent.clone(),
                    row.ports.clone().unwrap_or_default(),
                    row.requester.clone(),
                    row.requester_email.clone(),
                    r.requester_addr.clone(),
                    r.address_declared.to_string(),
                    r.reason.clone(),
                    (r.requested_seconds / 60).to_string(),
                    format_us(r.created_at_us),
                    row.decided_by_name.clone().unwrap_or_default(),
                    time(r.decided_at_us),
                    r.decision_reason.clone().unwrap_or_default(),
                    r.approved_seconds
                        .map(|s| (s / 60).to_string())
                        .unwrap_or_default(),
                    time(row.connected_at_us),
                    time(row.expires_at_us),
                    time(r.ended_at_us),
                    r.end_reason.clone().unwrap_or_default(),
                ];
                csv.write_record(
                    cells
                        .iter()
                        .map(|c| crate::audit::export::neutralise_formula(c).into_owned()),
                )
                .map_err(|err| Error::invalid("export", err.to_string()))?;
            }
            csv.flush().map_err(fail)?;
        }
    }
    Ok(rows.len())
}
