//! `plantgate grant` and `plantgate agent`: firewall grants (pinholes from a requester to a
//! device), and the device agents that name their ports.

use std::process::ExitCode;

use clap::Subcommand;

use appliance::config::Config;
use appliance::error::{Error, Result};
use appliance::grants::{Agent, Grant, GrantRequest, control};
use appliance::ids::GrantId;
use appliance::time::format_us;
use appliance::{Actor, Appliance};

/// The exit code of a revoke the firewall has not confirmed.
pub const PENDING: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
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

#[allow(clippy::print_stdout)]
pub fn grant(command: GrantCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
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
            let grant = Grant::open(
                &app.audit,
                actor,
                &app.config,
                &request,
                appliance::time::now_us(),
            )?;
            appliance::outln!(
                "grant {} opens {} from {} to {} until {}",
                grant.id.0,
                grant.ports,
                grant.requester_addr,
                grant.device_addr,
                format_us(grant.expires_at_us)
            );
            report_open(&app.config, grant.id);
        }
        GrantCommand::Revoke { id, reason } => {
            let grant = Grant::revoke(
                &app.audit,
                actor,
                GrantId(id),
                &reason,
                appliance::time::now_us(),
            )?;
            appliance::outln!("grant {} revoked", grant.id.0);
            // Success only once the controller confirms the kernel holds none of it.
            let enforced = control::enforce_revoke(
                &app.audit,
                actor,
                &app.config,
                grant.id,
                appliance::time::now_us(),
            );
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
                        g.id.0,
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

/// Tells the firewall controller to open the grant now (only its own elements), and says
/// plainly when it cannot.
fn report_open(config: &Config, id: GrantId) {
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

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
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

#[allow(clippy::print_stdout)]
pub fn agent(command: AgentCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    let app = Appliance::open(config, actor)?;
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
            let agent = Agent::create(
                &app.audit,
                actor,
                &app.config,
                &name,
                &label,
                &ports,
                appliance::time::now_us(),
            )?;
            appliance::outln!("agent {} opens {}", agent.name, agent.ports);
        }
    }
    Ok(ExitCode::SUCCESS)
}
