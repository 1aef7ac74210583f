//! Plantgate's core library: configuration, the store, the tamper-evident audit log, and
//! the domain model. `web`, `firewall` and `updater` build on it; it knows none of them.

pub mod access;
pub mod accounts;
pub mod alerts;
pub mod audit;
pub mod blocks;
pub mod config;
pub mod connectors;
pub mod device_ca;
pub mod devices;
pub mod emails;
pub mod enrolment;
pub mod error;
pub mod firmware;
pub mod grants;
pub mod ids;
pub mod keyring;
pub mod keys;
pub mod lockout;
pub mod mail;
pub mod models;
pub mod output;
pub mod provision;
pub mod readings;
pub mod refusals;
pub mod relocation;
pub mod retention;
pub mod rollups;
pub mod schema;
pub mod sd_notify;
pub mod sealing;
pub mod second_factor;
pub mod series;
pub mod sessions;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod tokens;
pub mod values;

use config::Config;
use error::Result;

pub use audit::{Actor, Audit, AuditEvent, Outcome};
pub use error::Error;
pub use store::{DbConnection, Store};

/// What every Plantgate process opens at start: the validated config, the migrated store
/// and the audit appender.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub config: Config,
    pub store: Store,
    pub audit: Audit,
}

impl Appliance {
    /// Opens the existing store, applies pending migrations (recording them as `actor`), and
    /// loads the signing key. Fails with "run `plantgate init`" on a machine never
    /// initialised, and never creates the store (see [`Store::open`]); a missing store is noted
    /// for the audit log (`audit::continuity::open_store`).
    pub fn open(config: Config, actor: &Actor) -> Result<Appliance> {
        config.prepare_data_dir()?;
        let store = audit::continuity::open_store(&config)?;
        Appliance::with_store(config, store, actor)
    }

    /// Creates the store when there is none (SQLite file, or the tables in an empty
    /// PostgreSQL database), then opens it as [`Appliance::open`] does. For test harnesses
    /// that stand in for `plantgate init`; the signing key must exist already.
    pub fn create(config: Config, actor: &Actor) -> Result<Appliance> {
        config.prepare_data_dir()?;
        let store = Store::create(&config)?;
        Appliance::with_store(config, store, actor)
    }

    fn with_store(config: Config, store: Store, actor: &Actor) -> Result<Appliance> {
        // The key is checked before migrating, so that an uninitialised machine is left untouched.
        let audit = Audit::open(store.clone(), &config)?;
        let appliance = Appliance {
            config,
            store,
            audit,
        };
        appliance.migrate(actor)?;
        Ok(appliance)
    }

    /// Applies pending migrations and audits the ones applied.
    pub fn migrate(&self, actor: &Actor) -> Result<Vec<String>> {
        let applied = self.store.migrate()?;
        if !applied.is_empty() {
            self.audit.record(
                AuditEvent::new(actor.clone(), "store.migrated")
                    .target(format!("store:{}", self.store.backend().name()))
                    .details(serde_json::json!({ "applied": applied })),
            )?;
        }
        Ok(applied)
    }
}
