//! `plantgate`: the appliance's administration command.
//!
//! Exit codes: 0 success; 1 the command failed (including a failed `audit verify`);
//! 2 bad configuration or usage; 3 a revoke is recorded but the firewall controller has not
//! confirmed that the kernel dropped it (its lease closes it within `firewall.lease_seconds`).
//!
//! This file holds the command line and the commands of the appliance as a whole (`init`,
//! `migrate`, `errors`, `config`); each group of commands has its own module.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use appliance::config::Config;
use appliance::error::{Error, Result};
use appliance::{Actor, Appliance, Audit};

mod audit;
mod connectors;
mod devices;
mod grants;
mod init;
mod readings;
mod restore;
mod sites;
mod tls;
mod users;

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
        command: audit::AuditCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Replace the portal's TLS certificate and key.
    Tls {
        #[command(subcommand)]
        command: tls::TlsCommand,
    },
    /// Issue, list and revoke REST API tokens.
    Token {
        #[command(subcommand)]
        command: users::TokenCommand,
    },
    /// Open, revoke and list firewall grants (pinholes from a requester to a device).
    Grant {
        #[command(subcommand)]
        command: grants::GrantCommand,
    },
    /// List or add device agents (the ports a kind of equipment needs).
    Agent {
        #[command(subcommand)]
        command: grants::AgentCommand,
    },
    /// Disable or enable an organisation: disabled, its users cannot sign in and its
    /// remote sessions end.
    Organisation {
        #[command(subcommand)]
        command: sites::OrganisationCommand,
    },
    /// Add or list sites (plants), creating their organisation if it is new.
    Site {
        #[command(subcommand)]
        command: sites::SiteCommand,
    },
    /// Register field devices that post telemetry, and manage their secrets.
    Device {
        #[command(subcommand)]
        command: devices::DeviceCommand,
    },
    /// Export stored readings.
    Readings {
        #[command(subcommand)]
        command: readings::ReadingsCommand,
    },
    /// Data connectors: signed webhooks that receive a site's readings and/or alerts.
    Connector {
        #[command(subcommand)]
        command: connectors::ConnectorCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    Check,
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
            let store = appliance::audit::continuity::open_store(&config)?;
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
        Command::Audit { command } => audit::audit(command, config, &actor),
        Command::User { command } => users::user(command, config, &actor),
        Command::Grant { command } => grants::grant(command, config, &actor),
        Command::Token { command } => users::token(command, config, &actor),
        Command::Tls { command } => tls::tls(command, config, &actor),
        Command::Agent { command } => grants::agent(command, config, &actor),
        Command::Organisation { command } => sites::organisation(command, config, &actor),
        Command::Site { command } => sites::site(command, config, &actor),
        Command::Device { command } => devices::device(command, config, &actor),
        Command::Connector { command } => connectors::connector(command, config, &actor),
        Command::Readings { command } => readings::readings(command, config, &actor),
    }
}
