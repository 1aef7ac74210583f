//! `plantgate init`: the one place that creates the store (first boot runs it, and every
//! boot after). On a box whose signed audit head vouches for records it never makes an
//! empty store in place of a missing one, unless told to with `--accept-empty-store`.

use std::process::ExitCode;

use appliance::audit::continuity;
use appliance::audit::head::HeadFile;
use appliance::config::Config;
use appliance::enrolment::{self, FIRST_ADMIN, FIRST_ADMIN_VALIDITY_US};
use appliance::error::{Error, Result, StoreError};
use appliance::keys::{SigningKey, private_key_path};
use appliance::models::{Role, User};
use appliance::time::format_us;
use appliance::{Actor, Audit, AuditEvent, Store};

/// `accept_empty_store` is the reason given with `--accept-empty-store`.
pub fn init(
    config: Config,
    actor: &Actor,
    reissue_token: bool,
    accept_empty_store: Option<&str>,
) -> Result<ExitCode> {
    let head_file = HeadFile::in_dir(&config.data_dir);
    // The newest seq the head vouches for, when it vouches for any record: `None` on a new
    // appliance (no head, or a head at seq 0). An unreadable head is assumed to vouch.
    let vouched = match head_file.read() {
        Ok(None) => None,
        Ok(Some(state)) => Some(
            state
                .pending
                .as_ref()
                .map_or(0, |p| p.seq)
                .max(state.committed.seq)
                .to_string(),
        ),
        Err(_) => Some("an unknown number (it cannot be read)".to_owned()),
    }
    .filter(|seq| seq != "0");
    let accepting = match continuity::open_store(&config) {
        // Every boot: the store must still extend the head before anything is migrated.
        Ok(store) => {
            if accept_empty_store.is_some() {
                return Err(Error::Conflict(format!(
                    "the store {} exists; --accept-empty-store is only for a missing store \
                     (to accept a restored one, run `plantgate audit accept-restore --reason \"...\"`)",
                    store.describe()
                )));
            }
            continuity::check(&store, &head_file, "plantgate init")?;
            None
        }
        Err(Error::Store(StoreError::Missing { target, problem })) if vouched.is_some() => {
            let vouched = vouched.unwrap_or_default();
            let Some(reason) = accept_empty_store else {
                return Err(Error::Conflict(format!(
                    "the store {target} {problem}, but the signed audit head {} says the log \
                     holds records up to seq {vouched}: put the store back from backup, or, to \
                     start over with an empty log on purpose, run `plantgate init \
                     --accept-empty-store --reason \"...\"` (recorded in the new log with the old head)",
                    head_file.path().display()
                )));
            };
            Some(reason)
        }
        // A new appliance: no store and no head yet.
        Err(Error::Store(StoreError::Missing { .. })) => None,
        Err(err) => return Err(err),
    };

    // The one place that creates the store (first boot runs `plantgate init`).
    let store = Store::create(&config)?;
    let applied = store.migrate()?;
    let key_path = private_key_path(&config.keys_dir());
    if !key_path.exists() {
        // A log with records but no key means the key was lost or removed: a new key would
        // make every earlier signature unverifiable, so refuse and say what to do.
        let records: i64 = {
            use diesel::prelude::*;
            appliance::schema::audit_log::table
                .count()
                .get_result(&mut store.conn()?)?
        };
        if records > 0 {
            return Err(Error::Conflict(format!(
                "the audit log holds {records} records but the signing key {} is missing; restore {} from backup",
                key_path.display(),
                config.keys_dir().display()
            )));
        }
    }
    // Every key the table lists (appliance::keyring); owners and modes come at the end.
    let made = appliance::provision::create_missing_keys(&config)?;
    let key_generated = made.contains(&"audit-signing.key");
    if let Some(reason) = accepting {
        let accepted = Audit::open_for_restore(store.clone(), &config)?.accept_restore(
            actor,
            "init --accept-empty-store",
            reason,
        )?;
        appliance::outln!(
            "Accepted an empty store in place of the missing one: the old head said seq {} (hash {}); \
             recorded as audit record {}.",
            accepted.found.head_seq.unwrap_or(0),
            accepted.found.head_hash.as_deref().unwrap_or("-"),
            accepted.seq
        );
    }
    let audit = Audit::open(store.clone(), &config)?;
    let mut events = Vec::new();
    if !applied.is_empty() {
        events.push(
            AuditEvent::new(actor.clone(), "store.migrated")
                .target(format!("store:{}", store.backend().name()))
                .details(serde_json::json!({ "applied": applied })),
        );
    }
    if !made.is_empty() {
        events.push(
            AuditEvent::new(actor.clone(), "keys.created")
                .target(format!("dir:{}", config.keys_dir().display()))
                .details(serde_json::json!({ "files": made })),
        );
    }
    if key_generated {
        let key = SigningKey::load(&config.keys_dir())?;
        events.push(
            AuditEvent::new(actor.clone(), "audit.key.generated")
                .target(format!("key:{}", key.key_id()))
                .details(serde_json::json!({ "algorithm": "ed25519", "path": key_path.display().to_string() })),
        );
        events.push(
            AuditEvent::new(actor.clone(), "appliance.initialised").details(serde_json::json!({
                "store": store.describe(),
                "data_dir": config.data_dir.display().to_string(),
            })),
        );
    }
    if !events.is_empty() {
        audit.record_all(events)?;
    }

    let mut conn = store.conn()?;
    let admins = User::count_with_role(&mut conn, Role::Admin)?;
    let pending = enrolment::pending(&mut conn, FIRST_ADMIN, appliance::time::now_us())?;
    drop(conn);
    appliance::outln!("Plantgate is initialised.");
    appliance::outln!("  data directory:    {}", config.data_dir.display());
    appliance::outln!("  store:             {}", store.describe());
    appliance::outln!("  audit signing key: {}", key_path.display());
    if admins > 0 {
        appliance::outln!("  administrators:    {admins}");
        if reissue_token {
            appliance::outln!(
                "An administrator exists, so no first-admin enrolment token is needed."
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    match pending {
        Some(token) if !reissue_token => {
            appliance::outln!(
                "\nA first-admin enrolment token was issued at {} and is valid until {}.\n\
                 It is shown only once. Lost it? Run `plantgate init --reissue-token`.",
                format_us(token.created_at_us),
                format_us(token.expires_at_us)
            );
        }
        _ => {
            let (token, pending) = enrolment::issue(
                &audit,
                actor,
                FIRST_ADMIN,
                FIRST_ADMIN_VALIDITY_US,
                appliance::time::now_us(),
            )?;
            appliance::outln!(
                "\nFirst-admin enrolment token (shown once, valid until {}):",
                format_us(pending.expires_at_us)
            );
            appliance::outln!("\n    {}\n", token.reveal());
            appliance::outln!(
                "Enter it in the portal's first-run page to create the first administrator."
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
