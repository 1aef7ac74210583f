//! `plantgate user` and `plantgate token`: the users, and the REST API tokens issued to them.

use std::process::ExitCode;

use clap::Subcommand;

use appliance::config::Config;
use appliance::error::{Error, Result};
use appliance::ids::TokenId;
use appliance::models::User;
use appliance::time::format_us;
use appliance::{Actor, Appliance};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List every user with role and organisation.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[allow(clippy::print_stdout)]
pub fn user(command: UserCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
    match command {
        UserCommand::List { json } => {
            let app = Appliance::open(config, actor)?;
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
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
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

#[allow(clippy::print_stdout)]
pub fn token(command: TokenCommand, config: Config, actor: &Actor) -> Result<ExitCode> {
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
                token.id.0,
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
                    t.id.0,
                    t.user_id.0,
                    t.name,
                    t.scopes,
                    format_us(t.expires_at_us)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            tokens::revoke(&app.audit, actor, TokenId(id), now)?;
            appliance::outln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
