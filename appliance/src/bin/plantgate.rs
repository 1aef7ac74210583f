//! `plantgate`: the appliance's administration command.
//!
//! Exit codes: 0 success; 1 the command failed (including a failed `audit verify`);
//! 2 bad configuration or usage; 3 a revoke is recorded but the firewall controller has not
//! confirmed that the kernel dropped it (its lease closes it within `firewall.lease_seconds`).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use appliance::audit::{self, Checkpoint, ExportFilter, ExportFormat};
use appliance::config::Config;
use appliance::connectors::{self, Connector, ConnectorRequest, SealingKey};
use appliance::device_ca;
use appliance::devices::{Device, DeviceRequest};
use appliance::error::{Error, Result};
use appliance::grants::{Agent, Grant, GrantRequest, control};
use appliance::ids::{ConnectorId, SiteId};
use appliance::keyring::{self, Secret};
use appliance::models::{Organisation, Site, User};
use appliance::readings;
use appliance::time::{format_us, parse_instant};
use appliance::{Actor, Appliance, Audit, AuditEvent, Store};

#[path = "plantgate/init.rs"]
mod init;
#[path = "plantgate/restore.rs"]
mod restore;

#[derive(Debug, Parser)]
#[command(
    name = "plantgate",
    version,
    about = "Administer a Plantgate appliance"
)]
struct Cli {
    /// The configuration file. Without it, /etc/plantgate/plantgate.toml if present, else defaults.
    #[arg(long, global = true, env = "PLANTGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the store, the audit signing key and the one-time first-admin enrolment token.
    Init {
        /// Replace a lost first-admin enrolment token with a new one.
        #[arg(long)]
        reissue_token: bool,
        /// On an initialised appliance whose store is missing, start over with an empty
        /// store on purpose; recorded with the old signed head. Needs --reason.
        #[arg(long, requires = "reason")]
        accept_empty_store: bool,
        /// Why, for the audit record of --accept-empty-store.
        #[arg(long, requires = "accept_empty_store")]
        reason: Option<String>,
    },
    /// Apply pending store migrations.
    Migrate,
    /// The newest warnings and errors of every service (the portal's /errors page), oldest
    /// first; a service that refused to start says why here.
    Errors {
        #[arg(long, default_value_t = 40)]
        limit: usize,
    },
    /// Validate the configuration and print it, secrets removed.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Verify or export the tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Replace the portal's TLS certificate and key.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Issue, list and revoke REST API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Open, revoke and list firewall grants (pinholes from a requester to a device).
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// List or add device agents (the ports a kind of equipment needs).
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Disable or enable an organisation: disabled, its users cannot sign in and its
    /// remote sessions end.
    Organisation {
        #[command(subcommand)]
        command: OrganisationCommand,
    },
    /// Add or list sites (plants), creating their organisation if it is new.
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
    /// Register field devices that post telemetry, and manage their secrets.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Export stored readings.
    Readings {
        #[command(subcommand)]
        command: ReadingsCommand,
    },
    /// Data connectors: signed webhooks that receive a site's readings and/or alerts.
    Connector {
        #[command(subcommand)]
        command: ConnectorCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ReadingsCommand {
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
}

#[derive(Debug, Subcommand)]
enum ConnectorCommand {
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

#[derive(Debug, Subcommand)]
enum OrganisationCommand {
    Disable { name: String },
    Enable { name: String },
    List,
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
    /// Prints the new site's id.
    Add {
        #[arg(long)]
        organisation: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        location: String,
    },
    List,
    /// Turns a site's "remote access enabled" key switch, as a hardware switch does: for a
    /// script watching a GPIO input (such as libgpiod's `gpiomon`). Off cuts every session
    /// of the site at once.
    KeySwitch {
        #[arg(long)]
        site: i64,
        #[arg(value_parser = ["on", "off"])]
        position: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Register a device and print its secret, once.
    Add {
        #[arg(long)]
        serial: String,
        /// monitor, data_logger or gateway.
        #[arg(long)]
        kind: String,
        /// The site id (see `plantgate site list`).
        #[arg(long)]
        site: i64,
        /// The serial of the gateway this device posts through, if any.
        #[arg(long)]
        gateway: Option<String>,
        /// The device's model: it receives firmware bundles for `device:MODEL`.
        #[arg(long)]
        model: Option<String>,
    },
    /// Devices with their state: firmware, battery, signal, last seen.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Replace a device's secret and print the new one, once; the old one stops working.
    Rotate { serial: String },
    /// Revoke a device's credential; it can no longer post.
    Revoke { serial: String },
    /// Issue a one-time token with which the device enrols a CSR for a client certificate
    /// (`POST /v1/enrol` on the ingest); printed once.
    EnrolToken { serial: String },
    /// Revoke every client certificate of a device; the ingest refuses them at once.
    RevokeCertificates { serial: String },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Install a certificate (PEM, leaf first, then any chain) and its key for the portal.
    /// Nothing is written unless the key belongs to the certificate.
    Install {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue a REST API token for a user (a service account); it is shown once.
    Create {
        /// The email of the user the token acts as.
        #[arg(long)]
        user: String,
        /// What the token is for, e.g. the SIEM that uses it.
        #[arg(long)]
        name: String,
        /// What the token may do; repeat for several.
        #[arg(long = "scope", required = true,
              value_parser = clap::builder::PossibleValuesParser::new(appliance::tokens::SCOPES))]
        scopes: Vec<String>,
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
    List,
    /// Revoke a token; its next request is refused.
    Revoke {
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum GrantCommand {
    /// Let one requester address reach one device on one agent's ports, for a while.
    Open {
        /// The requester's address on the uplink side.
        #[arg(long = "from")]
        requester: String,
        /// The device's address on the device network.
        #[arg(long = "to")]
        device: String,
        /// A device agent, such as s7, modbus, opc-ua (see `plantgate agent list`).
        #[arg(long)]
        agent: String,
        /// How long, in seconds.
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        reason: String,
        /// Also forward this port on the appliance's uplink address to the device.
        #[arg(long)]
        dnat_port: Option<u16>,
    },
    /// End a grant now; the firewall cuts its live connections.
    Revoke {
        id: i64,
        #[arg(long, default_value = "revoked from the command line")]
        reason: String,
    },
    /// The most recent grants, live and ended.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    List,
    /// Add a custom agent, such as `--ports tcp/10000-10003,udp/2222`.
    Add {
        name: String,
        #[arg(long)]
        ports: String,
        #[arg(long, default_value = "")]
        label: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    Check,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
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

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// List every user with role and organisation.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config =
        match Config::load(cli.config.as_deref()).and_then(|c| c.prepare_data_dir().map(|()| c)) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("plantgate: {err}");
                return ExitCode::from(2);
            }
        };
    appliance::telemetry::init_stderr(&config.log);
    match run(cli.command, config) {
        Ok(code) => code,
        Err(err) => {
            tracing::debug!(error = ?err, "command failed");
            eprintln!("plantgate: {err}");
            ExitCode::from(if matches!(err, Error::Config(_)) {
                2
            } else {
                1
            })
        }
    }
}

/// The CLI acts as the local operator; the Unix uid says which one.
fn cli_actor() -> Actor {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Actor::System(format!("cli:uid={uid}"))
}

#[allow(clippy::print_stdout)] // printing is this binary's job
fn run(command: Command, config: Config) -> Result<ExitCode> {
    let actor = cli_actor();
    match command {
        Command::Errors { limit } => {
            let entries = appliance::telemetry::recent_errors(&config.data_dir, limit);
            if entries.is_empty() {
                appliance::outln!("No service has logged a warning or an error.");
            }
            for entry in entries.iter().rev() {
                let fields: Vec<String> = entry
                    .fields
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect();
                appliance::outln!(
                    "{} {} {:5} {}: {} {}",
                    entry.at,
                    entry.service,
                    entry.level,
                    entry.target,
                    entry.message,
                    fields.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            reissue_token,
            accept_empty_store,
            reason,
        } => {
            let accept = reason.as_deref().filter(|_| accept_empty_store);
            let exit = init::init(config.clone(), &actor, reissue_token, accept)?;
            // Last, after every file init wrote (the store, the audit head it rewrote for the
            // token's record): owners and modes from the key table, the store the services'.
            appliance::provision::enforce_owners(&config)?;
            Ok(exit)
        }
        Command::Migrate => {
            // `open` migrates and audits what it applied.
            let store = Store::open(&config)?;
            let audit = Audit::open(store.clone(), &config)?;
            let applied = Appliance {
                config,
                store,
                audit,
            }
            .migrate(&actor)?;
            if applied.is_empty() {
                appliance::outln!("store is up to date");
            } else {
                appliance::outln!("applied migrations: {}", applied.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            appliance::outln!("# configuration is valid\n{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => restore::verify(&config),
        Command::Audit {
            command: AuditCommand::AcceptRestore { reason },
        } => restore::accept_restore(&config, &actor, &reason),
        Command::Audit {
            command:
                AuditCommand::Export {
                    format,
                    since,
                    until,
                    actor: by_actor,
                    action,
                    target,
                    outcome,
                    output,
                },
        } => {
            let app = Appliance::open(config, &actor)?;
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
                .record(
                    AuditEvent::new(actor, "audit.exported").details(serde_json::json!({
                            "format": format!("{format:?}").to_lowercase(),
                            "since": since.map(format_us),
                    "until": until.map(format_us),
                    "actor": filter.actor,
                    "action": filter.action,
                    "target": filter.target,
                    "outcome": filter.outcome,
                            "records": count,
                            "output": output.map(|p| p.display().to_string()),
                        })),
                )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Checkpoints { syslog },
        } => {
            let app = Appliance::open(config, &actor)?;
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
                AuditEvent::new(actor, "audit.checkpoints.exported").details(serde_json::json!({
                    "checkpoints": checkpoints.len(),
                    "syslog": syslog.map(|p| p.display().to_string()),
                })),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::User {
            command: UserCommand::List { json },
        } => {
            let app = Appliance::open(config, &actor)?;
            let users = User::list_all(&mut *app.store.conn()?)?;
            if json {
                appliance::outln!(
                    "{}",
                    serde_json::to_string_pretty(&users)
                        .map_err(|err| Error::invalid("output", err.to_string()))?
                );
            } else if users.is_empty() {
                appliance::outln!(
                    "no users yet: create the first administrator in the portal with the enrolment token"
                );
            } else {
                appliance::outln!(
                    "{:<6} {:<24} {:<32} {:<11} ORGANISATION",
                    "ID",
                    "NAME",
                    "EMAIL",
                    "ROLE"
                );
                for listing in &users {
                    let u = &listing.user;
                    appliance::outln!(
                        "{:<6} {:<24} {:<32} {:<11} {}",
                        u.id.0,
                        u.name,
                        u.email,
                        u.role,
                        listing.organisation
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Grant { command } => grant(command, config, &actor),
        Command::Token { command } => token(command, config, &actor),
        Command::Tls {
            command: TlsCommand::Install { cert, key },
        } => {
            let app = Appliance::open(config, &actor)?;
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|err| Error::invalid("file", format!("{}: {err}", path.display())))
            };
            let summary = appliance::tls::replace_portal_certificate(
                &app.audit,
                &actor,
                "cli",
                &app.config,
                &read(&cert)?,
                &read(&key)?,
            )?;
            appliance::outln!(
                "installed the portal certificate for {} ({}), valid until {}; plantgate-web serves it within access.tick_seconds ({} s)",
                summary.subject,
                summary.names.join(", "),
                summary.not_after,
                app.config.access.tick_seconds
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { command } => {
            let app = Appliance::open(config, &actor)?;
            match command {
                AgentCommand::List => {
                    for agent in Agent::all(&mut *app.store.conn()?)? {
                        let kind = if agent.builtin { "built-in" } else { "custom" };
                        appliance::outln!(
                            "{:<14} {:<22} {:<28} {kind}",
                            agent.name,
                            agent.label,
                            agent.ports.to_string()
                        );
                    }
                }
                AgentCommand::Add { name, ports, label } => {
                    let agent =
                        Agent::create(&app.audit, &actor, &app.config, &name, &label, &ports)?;
                    appliance::outln!("agent {} opens {}", agent.name, agent.ports);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Organisation { command } => organisation(command, config, &actor),
        Command::Site { command } => site(command, config, &actor),
        Command::Device { command } => device(command, config, &actor),
        Command::Connector { command } => connector(command, config, &actor),
        Command::Readings {
            command:
                ReadingsCommand::Export {
                    format,
                    site,
                    device,
                    metric,
                    since,
                    until,
                    output,
                },
        } => {
            let app = Appliance::open(config, &actor)?;
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
                .record(
                    AuditEvent::new(actor, "readings.exported").details(serde_json::json!({
                        "format": format!("{format:?}").to_lowercase(),
                        "site": site,
                        "device": device,
                        "metric": metric,
                        "since": since.map(format_us),
                        "until": until.map(format_us),
                        "readings": count,
                        "output": output.map(|p| p.display().to_string()),
                    })),
                )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[allow(clippy::print_stdout)] // the secret is printed once, on purpose
fn connector(command: ConnectorCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
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
            let (connector, secret) = Connector::add(&app.audit, actor, &key, &request)?;
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
            let c = Connector::remove(&app.audit, actor, ConnectorId(id))?;
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

#[allow(clippy::print_stdout)]
fn organisation(command: OrganisationCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    let app = Appliance::open(config, actor)?;
    let find = |name: &str| -> Result<Organisation> {
        Organisation::find_by_name(&mut *app.store.conn()?, name.trim())?
            .ok_or(appliance::Error::NotFound("organisation"))
    };
    let now = appliance::time::now_us();
    match command {
        OrganisationCommand::Disable { name } => {
            let ended = Organisation::set_disabled(&app.audit, actor, find(&name)?.id, true, now)?;
            appliance::outln!(
                "disabled; {ended} portal sessions ended; remote sessions end within a second (the portal's worker) or at the next `plantgate-web` start"
            );
        }
        OrganisationCommand::Enable { name } => {
            Organisation::set_disabled(&app.audit, actor, find(&name)?.id, false, now)?;
            appliance::outln!("enabled");
        }
        OrganisationCommand::List => {
            for org in Organisation::list(&mut *app.store.conn()?)? {
                appliance::outln!("{:<6} {}", org.id.0, org.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
fn site(command: SiteCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    let app = Appliance::open(config, actor)?;
    match command {
        SiteCommand::Add {
            organisation,
            name,
            location,
        } => {
            let existing =
                Organisation::find_by_name(&mut *app.store.conn()?, organisation.trim())?;
            let org = match existing {
                Some(org) => org,
                None => Organisation::create(&app.audit, actor, &organisation)?,
            };
            let site = Site::create(&app.audit, actor, org.id, &name, &location)?;
            appliance::outln!("{}", site.id.0);
        }
        SiteCommand::KeySwitch { site, position } => {
            let found: Site = {
                use diesel::prelude::*;
                appliance::schema::sites::table
                    .find(site)
                    .select(Site::as_select())
                    .first(&mut *app.store.conn()?)
                    .optional()?
                    .ok_or(appliance::Error::NotFound("site"))?
            };
            let on = position == "on";
            let cut = appliance::access::set_key_switch(
                &app.audit,
                &app.config,
                None,
                &found,
                on,
                "key-switch",
                appliance::time::now_us(),
            )?;
            let poked = appliance::grants::poke_firewall(&app.config);
            appliance::outln!(
                "{}: remote access {position}; {cut} sessions cut",
                found.name
            );
            // Sessions cut are revokes: confirmed by a full reconcile, or pending.
            if let Err(why) = poked {
                if cut > 0 {
                    eprintln!(
                        "revoke recorded; pending: firewall controller unreachable ({why}); the pinholes close by themselves within {} s",
                        app.config.firewall.lease_seconds
                    );
                    return Ok(ExitCode::from(PENDING));
                }
                eprintln!(
                    "plantgate: the firewall did not answer ({why}); it applies the change at its next reconcile"
                );
            }
        }
        SiteCommand::List => {
            let mut conn = app.store.conn()?;
            for org in Organisation::list(&mut conn)? {
                for site in Site::list_for(&mut conn, org.id)? {
                    appliance::outln!("{:<6} {:<24} {}", site.id.0, org.name, site.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)] // the secret is printed once, on purpose
fn device(command: DeviceCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    let app = Appliance::open(config, actor)?;
    match command {
        DeviceCommand::Add {
            serial,
            kind,
            site,
            gateway,
            model,
        } => {
            let request = DeviceRequest {
                serial,
                kind: kind.parse()?,
                site: SiteId(site),
                gateway,
                model,
            };
            let (device, secret) = Device::register(&app.audit, actor, &request)?;
            eprintln!(
                "registered {} {} ({}); its secret is shown once, below:",
                device.kind, device.serial, device.id
            );
            appliance::outln!("{}", secret.reveal());
        }
        DeviceCommand::Rotate { serial } => {
            let secret = Device::rotate_secret(&app.audit, actor, &serial)?;
            eprintln!("new secret for {serial}; the old one no longer works:");
            appliance::outln!("{}", secret.reveal());
        }
        DeviceCommand::Revoke { serial } => {
            let device = Device::revoke(&app.audit, actor, &serial)?;
            appliance::outln!("revoked the credential of {}", device.serial);
        }
        DeviceCommand::EnrolToken { serial } => {
            let token = device_ca::issue_enrolment_token(&app.audit, actor, &serial)?;
            eprintln!("one-time enrolment token for {serial}, valid 7 days, shown once:");
            appliance::outln!("{}", token.reveal());
        }
        DeviceCommand::RevokeCertificates { serial } => {
            let count = device_ca::revoke_certificates(&app.audit, actor, &serial)?;
            appliance::outln!("revoked {count} certificate(s) of {serial}");
        }
        DeviceCommand::List { json } => {
            let devices = Device::list(&mut *app.store.conn()?)?;
            if json {
                appliance::outln!(
                    "{}",
                    serde_json::to_string_pretty(&devices)
                        .map_err(|err| Error::invalid("output", err.to_string()))?
                );
            } else {
                for d in devices {
                    let seen = d
                        .last_seen_at_us
                        .map(format_us)
                        .unwrap_or_else(|| "never".into());
                    let state = if d.is_revoked() { "revoked" } else { "active" };
                    appliance::outln!(
                        "{:<20} {:<12} site:{:<4} {:<8} model={} firmware={} battery={} signal={} last_seen={seen}",
                        d.serial,
                        d.kind,
                        d.site_id.0,
                        state,
                        d.model.as_deref().unwrap_or("-"),
                        d.firmware_version.as_deref().unwrap_or("-"),
                        d.battery_pct
                            .map(|b| format!("{b}%"))
                            .unwrap_or_else(|| "-".into()),
                        d.signal_dbm
                            .map(|s| format!("{s}dBm"))
                            .unwrap_or_else(|| "-".into()),
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
fn token(command: TokenCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    use appliance::tokens;
    let app = Appliance::open(config, actor)?;
    let now = appliance::time::now_us();
    match command {
        TokenCommand::Create {
            user,
            name,
            scopes,
            days,
        } => {
            let owner = User::find_by_email(&mut *app.store.conn()?, &user)?
                .ok_or(Error::NotFound("user"))?;
            let (secret, token) =
                tokens::create(&app.audit, actor, &owner, &name, &scopes, days, now)?;
            eprintln!(
                "token {} for {} ({}), valid until {}; shown once:",
                token.id,
                owner.email,
                token.scopes,
                format_us(token.expires_at_us)
            );
            appliance::outln!("{}", secret.reveal());
        }
        TokenCommand::List => {
            appliance::outln!(
                "{:<5} {:<8} {:<24} {:<32} {:<27} STATE",
                "ID",
                "USER",
                "NAME",
                "SCOPES",
                "EXPIRES"
            );
            for t in tokens::list(&mut *app.store.conn()?)? {
                let state = if t.revoked_at_us.is_some() {
                    "revoked"
                } else if t.expires_at_us <= now {
                    "expired"
                } else {
                    "live"
                };
                appliance::outln!(
                    "{:<5} {:<8} {:<24} {:<32} {:<27} {state}",
                    t.id,
                    t.user_id.0,
                    t.name,
                    t.scopes,
                    format_us(t.expires_at_us)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            tokens::revoke(&app.audit, actor, id, now)?;
            appliance::outln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
fn grant(command: GrantCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    let app = Appliance::open(config, actor)?;
    match command {
        GrantCommand::Open {
            requester,
            device,
            agent,
            seconds,
            reason,
            dnat_port,
        } => {
            let request = GrantRequest {
                requester,
                device,
                agent,
                duration_seconds: seconds,
                reason,
                dnat_port,
            };
            let grant = Grant::open(&app.audit, actor, &app.config, &request)?;
            appliance::outln!(
                "grant {} opens {} from {} to {} until {}",
                grant.id,
                grant.ports,
                grant.requester_addr,
                grant.device_addr,
                format_us(grant.expires_at_us)
            );
            report_open(&app.config, grant.id);
        }
        GrantCommand::Revoke { id, reason } => {
            let grant = Grant::revoke(&app.audit, actor, id, &reason)?;
            appliance::outln!("grant {} revoked", grant.id);
            // Success only once the controller confirms the kernel holds none of it.
            let enforced = control::enforce_revoke(&app.audit, actor, &app.config, grant.id);
            eprintln!("{enforced}");
            if matches!(enforced, control::Enforcement::Pending { .. }) {
                return Ok(ExitCode::from(PENDING));
            }
        }
        GrantCommand::List { json } => {
            let grants = Grant::recent(&mut *app.store.conn()?, 100)?;
            if json {
                appliance::outln!(
                    "{}",
                    serde_json::to_string_pretty(&grants)
                        .map_err(|err| Error::invalid("output", err.to_string()))?
                );
            } else {
                appliance::outln!(
                    "{:<5} {:<15} {:<15} {:<22} {:<27} STATE",
                    "ID",
                    "FROM",
                    "TO",
                    "PORTS",
                    "EXPIRES"
                );
                let now = appliance::time::now_us();
                for g in grants {
                    let state = match (&g.close_reason, g.revoked_at_us) {
                        (Some(reason), _) => reason.as_str(),
                        (None, Some(_)) => "revoking",
                        (None, None) if g.expires_at_us <= now => "expiring",
                        (None, None) if g.applied_at_us.is_some() => "open",
                        (None, None) => "pending",
                    };
                    appliance::outln!(
                        "{:<5} {:<15} {:<15} {:<22} {:<27} {state}",
                        g.id,
                        g.requester_addr,
                        g.device_addr,
                        g.ports,
                        format_us(g.expires_at_us)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code of a revoke the firewall has not confirmed.
const PENDING: u8 = 3;

/// Tells the firewall controller to open the grant now (only its own elements), and says
/// plainly when it cannot.
fn report_open(config: &Config, id: i64) {
    match control::apply_grant(config, id) {
        Ok(control::GrantState::Open { pinholes }) => {
            eprintln!("firewall: applied ({pinholes} pinholes open)");
        }
        Ok(control::GrantState::Closed { .. }) => {
            eprintln!("plantgate: WARNING: the firewall did not open it: it has already ended");
        }
        Err(err) => eprintln!(
            "plantgate: WARNING: the firewall controller did not answer ({err}); it will open it when it next reconciles"
        ),
    }
}
