//! `plantgate device`: register field devices, and rotate, revoke or certify their
//! credentials.

use std::process::ExitCode;

use clap::Subcommand;

use appliance::config::Config;
use appliance::device_ca;
use appliance::devices::{Device, DeviceRequest};
use appliance::error::{Error, Result};
use appliance::ids::SiteId;
use appliance::time::format_us;
use appliance::{Actor, Appliance};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
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

#[allow(clippy::print_stdout)] // the secret is printed once, on purpose
pub fn device(command: DeviceCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
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
            let (device, secret) =
                Device::register(&app.audit, actor, &request, appliance::time::now_us())?;
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
            let device = Device::revoke(&app.audit, actor, &serial, appliance::time::now_us())?;
            appliance::outln!("revoked the credential of {}", device.serial);
        }
        DeviceCommand::EnrolToken { serial } => {
            let token = device_ca::issue_enrolment_token(
                &app.audit,
                actor,
                &serial,
                appliance::time::now_us(),
            )?;
            eprintln!("one-time enrolment token for {serial}, valid 7 days, shown once:");
            appliance::outln!("{}", token.reveal());
        }
        DeviceCommand::RevokeCertificates { serial } => {
            let count = device_ca::revoke_certificates(
                &app.audit,
                actor,
                &serial,
                appliance::time::now_us(),
            )?;
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
