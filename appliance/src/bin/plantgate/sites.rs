//! `plantgate organisation` and `plantgate site`: organisations (disabling one ends its
//! sessions), their sites, and a site's remote-access key switch.

use std::process::ExitCode;

use clap::Subcommand;

use appliance::config::Config;
use appliance::error::Result;
use appliance::grants::control;
use appliance::models::{Organisation, Site};
use appliance::{Actor, Appliance};

use crate::grants::PENDING;

#[derive(Debug, Subcommand)]
pub enum OrganisationCommand {
    Disable { name: String },
    Enable { name: String },
    List,
}

#[allow(clippy::print_stdout)]
pub fn organisation(
    command: OrganisationCommand,
    config: Config,
    actor: &Actor,
) -> Result<ExitCode> {
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

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
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

#[allow(clippy::print_stdout)]
pub fn site(command: SiteCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    let app = Appliance::open(config, actor)?;
    match command {
        SiteCommand::Add {
            organisation,
            name,
            location,
        } => {
            let now = appliance::time::now_us();
            let existing =
                Organisation::find_by_name(&mut *app.store.conn()?, organisation.trim())?;
            let org = match existing {
                Some(org) => org,
                None => Organisation::create(&app.audit, actor, &organisation, now)?,
            };
            let site = Site::create(&app.audit, actor, org.id, &name, &location, now)?;
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
            appliance::outln!(
                "{}: remote access {position}; {} sessions cut",
                found.name,
                cut.len()
            );
            // Sessions cut are revokes: each confirmed by the controller, or pending (audited
            // and mailed to the administrators, as a revoke of one grant is).
            let actor = Actor::System("key-switch".into());
            let mut pending = false;
            for grant in cut {
                let enforced = control::enforce_revoke(
                    &app.audit,
                    &actor,
                    &app.config,
                    grant,
                    appliance::time::now_us(),
                );
                if matches!(enforced, control::Enforcement::Pending { .. }) {
                    eprintln!("grant {}: {enforced}", grant.0);
                    pending = true;
                }
            }
            if pending {
                return Ok(ExitCode::from(PENDING));
            }
            if let Err(why) = appliance::grants::poke_firewall(&app.config) {
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
