//! Health checks run at boot by `plantgate-updater health`. Each is a [`HealthCheck`]; the
//! image configures which run. Built in: the store opens and is migrated (proved by opening
//! the appliance), systemd units are active, and any command that exits 0 when healthy
//! (the portal's check will be one once the portal exists).

use std::process::Command;

use crate::config::HealthConfig;

pub trait HealthCheck {
    fn name(&self) -> String;
    /// `Err` says what is wrong.
    fn run(&self) -> Result<(), String>;
}

/// The store answers and has every migration applied.
#[derive(Debug, Clone)]
pub struct StoreMigrated {
    pub store: appliance::Store,
}

impl HealthCheck for StoreMigrated {
    fn name(&self) -> String {
        "store migrated".into()
    }

    fn run(&self) -> Result<(), String> {
        match self.store.migrate() {
            Ok(applied) if applied.is_empty() => Ok(()),
            Ok(applied) => Err(format!("migrations were still pending: {applied:?}")),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// A command that exits 0 when healthy.
#[derive(Debug, Clone)]
pub struct CommandCheck {
    pub name: String,
    pub argv: Vec<String>,
}

impl HealthCheck for CommandCheck {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&self) -> Result<(), String> {
        let (program, args) = self.argv.split_first().ok_or("no command")?;
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|err| format!("cannot run {program}: {err}"))?;
        if output.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&output.stderr);
        let said = said.trim();
        Err(format!(
            "{} exited with {}{}",
            self.argv.join(" "),
            output.status,
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ))
    }
}

/// The checks the configuration asks for, after the store check.
pub fn configured_checks(
    store: &appliance::Store,
    config: &HealthConfig,
) -> Vec<Box<dyn HealthCheck>> {
    let mut checks: Vec<Box<dyn HealthCheck>> = vec![Box::new(StoreMigrated {
        store: store.clone(),
    })];
    for unit in &config.units {
        checks.push(Box::new(CommandCheck {
            name: format!("unit {unit}"),
            argv: vec![
                "systemctl".into(),
                "is-active".into(),
                "--quiet".into(),
                unit.clone(),
            ],
        }));
    }
    for command in &config.command {
        checks.push(Box::new(CommandCheck {
            name: command.name.clone(),
            argv: command.argv.clone(),
        }));
    }
    checks
}
