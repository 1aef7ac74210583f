//! `plantgate connector`: data connectors, the signed webhooks that receive a site's readings
//! and/or alerts, and their delivery log.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use appliance::config::Config;
use appliance::connectors::{self, Connector, ConnectorRequest, SealingKey};
use appliance::error::{Error, Result};
use appliance::ids::{ConnectorId, SiteId};
use appliance::keyring::{self, Secret};
use appliance::time::format_us;
use appliance::{Actor, Appliance};

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Add a connector and print its signing secret, once.
    Add {
        /// The site id (see `plantgate site list`).
        #[arg(long)]
        site: i64,
        #[arg(long)]
        name: String,
        /// An https:// URL (http:// only to a loopback address).
        #[arg(long)]
        url: String,
        /// Send readings.
        #[arg(long)]
        readings: bool,
        /// Send alerts raised and cleared.
        #[arg(long)]
        alerts: bool,
        /// PEM file of CA certificates to trust for this endpoint, besides the system's.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Connectors, removed ones included, with how many deliveries each still owes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a connector; what it still owed is dead-lettered.
    Remove { id: i64 },
    /// The delivery log of one connector, oldest first.
    Deliveries { id: i64 },
}

#[allow(clippy::print_stdout)] // the secret is printed once, on purpose
pub fn connector(command: ConnectorCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    let app = Appliance::open(config, actor)?;
    match command {
        ConnectorCommand::Add {
            site,
            name,
            url,
            readings,
            alerts,
            ca_file,
        } => {
            let ca_pem =
                match ca_file {
                    Some(path) => Some(std::fs::read_to_string(&path).map_err(|err| {
                        Error::invalid("ca", format!("{}: {err}", path.display()))
                    })?),
                    None => None,
                };
            let key = SealingKey::load(&keyring::path(&app.config, Secret::ConnectorSealing))?;
            let request = ConnectorRequest {
                site: SiteId(site),
                name,
                url,
                send_readings: readings,
                send_alerts: alerts,
                ca_pem,
            };
            let (connector, secret) =
                Connector::add(&app.audit, actor, &key, &request, appliance::time::now_us())?;
            eprintln!(
                "added {} {} -> {}; its signing secret is shown once, below:",
                connector.id, connector.name, connector.url
            );
            appliance::outln!("{}", secret.reveal());
        }
        ConnectorCommand::List { json } => {
            let mut conn = app.store.conn()?;
            let all = Connector::list(&mut conn)?;
            if json {
                appliance::outln!(
                    "{}",
                    serde_json::to_string_pretty(&all)
                        .map_err(|err| Error::invalid("output", err.to_string()))?
                );
            } else {
                for c in all {
                    let log = connectors::deliveries(&mut conn, c.id)?;
                    let owed = log
                        .iter()
                        .filter(|d| d.delivered_at_us.is_none() && d.dead_at_us.is_none())
                        .count();
                    let dead = log.iter().filter(|d| d.dead_at_us.is_some()).count();
                    let events = match (c.send_readings, c.send_alerts) {
                        (true, true) => "readings+alerts",
                        (true, false) => "readings",
                        _ => "alerts",
                    };
                    let state = if c.removed_at_us.is_some() {
                        "removed"
                    } else {
                        "active"
                    };
                    appliance::outln!(
                        "{:<5} site:{:<4} {:<20} {:<16} {:<8} owed={owed} dead={dead} {}",
                        c.id.0,
                        c.site_id.0,
                        c.name,
                        events,
                        state,
                        c.url
                    );
                }
            }
        }
        ConnectorCommand::Remove { id } => {
            let c = Connector::remove(
                &app.audit,
                actor,
                ConnectorId(id),
                appliance::time::now_us(),
            )?;
            appliance::outln!("removed connector {} {}", c.id.0, c.name);
        }
        ConnectorCommand::Deliveries { id } => {
            for d in connectors::deliveries(&mut *app.store.conn()?, ConnectorId(id))? {
                let state = match (d.delivered_at_us, d.dead_at_us) {
                    (Some(at), _) => format!("delivered {}", format_us(at)),
                    (None, Some(at)) => format!("dead {}", format_us(at)),
                    (None, None) => format!("owed, next {}", format_us(d.next_attempt_at_us)),
                };
                appliance::outln!(
                    "{:<8} {:<8} attempts={:<3} {state} {}",
                    d.id,
                    d.kind,
                    d.attempts,
                    d.last_error.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
