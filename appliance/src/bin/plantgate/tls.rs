//! `plantgate tls`: replace the portal's TLS certificate and key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use appliance::config::Config;
use appliance::error::{Error, Result};
use appliance::{Actor, Appliance};

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Install a certificate (PEM, leaf first, then any chain) and its key for the portal.
    /// Nothing is written unless the key belongs to the certificate.
    Install {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

#[allow(clippy::print_stdout)]
pub fn tls(command: TlsCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    match command {
        TlsCommand::Install { cert, key } => {
            let app = Appliance::open(config, actor)?;
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|err| Error::invalid("file", format!("{}: {err}", path.display())))
            };
            let summary = appliance::tls::replace_portal_certificate(
                &app.audit,
                actor,
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
    }
}
