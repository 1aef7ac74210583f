//! `plantgate audit`: verify the tamper-evident log (and accept a restored store, through
//! [`crate::restore`]), export it, and hand its signed checkpoints to a witness.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use appliance::audit::{self, Checkpoint, ExportFilter, ExportFormat};
use appliance::config::Config;
use appliance::error::{Error, Result};
use appliance::time::{format_us, parse_instant};
use appliance::{Actor, Appliance, AuditEvent};

use crate::restore;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, the signed checkpoints and the signed head; exit 1 on tampering
    /// or truncation.
    Verify,
    /// Accept the store as it is when it no longer extends the signed head (restored from an
    /// older backup, say): prints both heads, re-signs the head over the store and records
    /// `audit.restore.accepted` with both and the reason. Until then nothing can append.
    AcceptRestore {
        /// Why this store is accepted; recorded.
        #[arg(long)]
        reason: String,
    },
    /// Stream the log.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Only records at or after this time (2026-11-22 or 2026-11-22T08:00:00Z).
        #[arg(long, value_parser = parse_instant)]
        since: Option<i64>,
        /// Only records before this time.
        #[arg(long, value_parser = parse_instant)]
        until: Option<i64>,
        /// Only records by this actor id (a user id, a device serial, `cli:uid=0`...).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action, or every action under a prefix ending in `.` (`auth.`).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// success, failure or denied.
        #[arg(long)]
        outcome: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print the signed checkpoints, one line each, for a witness to keep.
    Checkpoints {
        /// Send them to this syslog socket instead of printing them.
        #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = "/dev/log")]
        syslog: Option<PathBuf>,
    },
}

#[allow(clippy::print_stdout)] // printing is this binary's job
pub fn audit(command: AuditCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify => restore::verify(&config),
        AuditCommand::AcceptRestore { reason } => restore::accept_restore(&config, actor, &reason),
        AuditCommand::Export {
            format,
            since,
            until,
            actor: by_actor,
            action,
            target,
            outcome,
            output,
        } => {
            let app = Appliance::open(config, actor)?;
            let filter = ExportFilter {
                since_us: since,
                until_us: until,
                actor: by_actor,
                action,
                target,
                outcome,
            };
            let mut conn = app.store.conn()?;
            let count = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path).map_err(|err| {
                        Error::invalid("output", format!("{}: {err}", path.display()))
                    })?;
                    audit::export::export(&mut conn, &filter, format, file)?
                }
                None => {
                    audit::export::export(&mut conn, &filter, format, std::io::stdout().lock())?
                }
            };
            drop(conn);
            app.audit
                .record(AuditEvent::new(actor.clone(), "audit.exported").details(
                    serde_json::json!({
                        "format": format!("{format:?}").to_lowercase(),
                        "since": since.map(format_us),
                        "until": until.map(format_us),
                        "actor": filter.actor,
                        "action": filter.action,
                        "target": filter.target,
                        "outcome": filter.outcome,
                        "records": count,
                        "output": output.map(|p| p.display().to_string()),
                    }),
                ))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoints { syslog } => {
            let app = Appliance::open(config, actor)?;
            let checkpoints = Checkpoint::list(&mut *app.store.conn()?)?;
            match &syslog {
                Some(socket) => {
                    audit::send_to_syslog(socket, &checkpoints)?;
                    eprintln!(
                        "sent {} checkpoints to {}",
                        checkpoints.len(),
                        socket.display()
                    );
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    for checkpoint in &checkpoints {
                        writeln!(out, "{}", checkpoint.witness_line())
                            .map_err(|err| Error::invalid("output", err.to_string()))?;
                    }
                }
            }
            app.audit.record(
                AuditEvent::new(actor.clone(), "audit.checkpoints.exported").details(
                    serde_json::json!({
                        "checkpoints": checkpoints.len(),
                        "syslog": syslog.map(|p| p.display().to_string()),
                    }),
                ),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
