//! `plantgate readings`: export stored readings as CSV or JSONL, or seal them now; both are
//! audited.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use appliance::audit::ExportFormat;
use appliance::config::Config;
use appliance::devices::Device;
use appliance::error::{Error, Result};
use appliance::ids::SiteId;
use appliance::time::{format_us, now_us, parse_instant};
use appliance::{Actor, Appliance, AuditEvent};
use appliance::{blocks, readings, rollups};

#[derive(Debug, Subcommand)]
pub enum ReadingsCommand {
    /// Stream readings as CSV or JSONL, oldest first, with no row cap; the export is audited.
    Export {
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Only this site's devices (see `plantgate site list`).
        #[arg(long)]
        site: Option<i64>,
        /// Only this device, by serial.
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        metric: Option<String>,
        /// Only readings measured at or after this time (2026-11-22 or 2026-11-22T08:00:00Z).
        #[arg(long, value_parser = parse_instant)]
        since: Option<i64>,
        /// Only readings measured before this time.
        #[arg(long, value_parser = parse_instant)]
        until: Option<i64>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Seal now what the ingest would seal at the end of the day: compress readings received
    /// before a time into blocks (rolling them up first), one series at a time; audited.
    /// Safe beside a running ingest, and to interrupt.
    Seal {
        /// Readings received before this time (default: now).
        #[arg(long, value_parser = parse_instant)]
        received_before: Option<i64>,
    },
}

#[allow(clippy::print_stdout)]
pub fn readings(command: ReadingsCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    match command {
        ReadingsCommand::Export {
            format,
            site,
            device,
            metric,
            since,
            until,
            output,
        } => {
            let app = Appliance::open(config, actor)?;
            let mut conn = app.store.conn()?;
            let device_id = match &device {
                Some(serial) => Some(
                    Device::find_by_serial(&mut conn, serial)?
                        .ok_or(Error::NotFound("device"))?
                        .id,
                ),
                None => None,
            };
            if let Some(metric) = &metric
                && !readings::is_metric_name(metric)
            {
                return Err(Error::invalid(
                    "metric",
                    format!("{metric:?} is not a metric name"),
                ));
            }
            let filter = readings::ExportFilter {
                site: site.map(SiteId),
                device: device_id,
                metric: metric.clone(),
                since_us: since,
                until_us: until,
            };
            let count = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path).map_err(|err| {
                        Error::invalid("output", format!("{}: {err}", path.display()))
                    })?;
                    readings::export(&mut conn, &filter, format, file)?
                }
                None => readings::export(&mut conn, &filter, format, std::io::stdout().lock())?,
            };
            drop(conn);
            app.audit
                .record(AuditEvent::new(actor.clone(), "readings.exported").details(
                    serde_json::json!({
                        "format": format!("{format:?}").to_lowercase(),
                        "site": site,
                        "device": device,
                        "metric": metric,
                        "since": since.map(format_us),
                        "until": until.map(format_us),
                        "readings": count,
                        "output": output.map(|p| p.display().to_string()),
                    }),
                ))?;
            Ok(ExitCode::SUCCESS)
        }
        ReadingsCommand::Seal { received_before } => {
            let app = Appliance::open(config, actor)?;
            let received_before = received_before.unwrap_or_else(now_us);
            let mut conn = app.store.conn()?;
            rollups::catch_up(&mut conn)?;
            let sealed = blocks::seal_all(&mut conn, received_before)?;
            drop(conn);
            app.audit
                .record(AuditEvent::new(actor.clone(), "readings.sealed").details(
                    serde_json::json!({
                        "received_before": format_us(received_before),
                        "readings": sealed,
                    }),
                ))?;
            println!(
                "sealed {sealed} readings received before {}",
                format_us(received_before)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
