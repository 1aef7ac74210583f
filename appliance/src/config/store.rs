//! `[store]` and `[audit]`: where the store is (SQLite in the data directory, or
//! PostgreSQL), and how often its audit log is checkpointed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`. Unset means `sqlite://{data_dir}/plantgate.db`.
    pub url: Option<String>,
    pub pool_size: u32,
    /// How long SQLite waits for another writer before giving up.
    pub busy_timeout_ms: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            pool_size: 8,
            busy_timeout_ms: 10_000,
        }
    }
}

impl StoreConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.pool_size) {
            return Err(ConfigError::new(
                "store.pool_size",
                self.pool_size,
                "must be between 1 and 64",
            ));
        }
        if !(1..=600_000).contains(&self.busy_timeout_ms) {
            return Err(ConfigError::new(
                "store.busy_timeout_ms",
                self.busy_timeout_ms,
                "must be between 1 and 600000 milliseconds",
            ));
        }
        Ok(())
    }

    /// The database the URL names; `sqlite://{data_dir}/plantgate.db` when unset.
    pub(super) fn target(&self, data_dir: &Path) -> Result<StoreTarget, ConfigError> {
        let Some(raw) = &self.url else {
            return Ok(StoreTarget::Sqlite(data_dir.join("plantgate.db")));
        };
        let allowed = "allowed: sqlite://PATH or postgres://USER@HOST[:PORT]/DATABASE";
        let shown = format!("{:?}", redact_url(raw));
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(ConfigError::new(
                    "store.url",
                    shown,
                    format!("no file path; {allowed}"),
                ));
            }
            return Ok(StoreTarget::Sqlite(PathBuf::from(path)));
        }
        match url::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => {
                Ok(StoreTarget::Postgres(raw.clone()))
            }
            Ok(url) => Err(ConfigError::new(
                "store.url",
                shown,
                format!("unsupported scheme `{}`; {allowed}", url.scheme()),
            )),
            Err(err) => Err(ConfigError::new(
                "store.url",
                shown,
                format!("not a URL ({err}); {allowed}"),
            )),
        }
    }
}

/// Which database the store URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreTarget {
    /// The URL with any password replaced, safe to print and log.
    pub fn redacted(&self) -> String {
        match self {
            StoreTarget::Sqlite(path) => format!("sqlite://{}", path.display()),
            StoreTarget::Postgres(url) => redact_url(url),
        }
    }
}

/// Replaces the password of a URL, if any, so that it can be printed.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one, which this has.
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A signed checkpoint of the chain head is taken every this many records...
    pub checkpoint_every_records: u64,
    /// ...and when the head moved and the last checkpoint is older than this.
    pub checkpoint_every_minutes: u64,
    /// A local syslog socket (usually `/dev/log`) that receives every checkpoint, so that
    /// a witness outside the appliance holds them.
    pub syslog_socket: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every_records: 1000,
            checkpoint_every_minutes: 10,
            syslog_socket: None,
        }
    }
}

impl AuditConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.checkpoint_every_records) {
            return Err(ConfigError::new(
                "audit.checkpoint_every_records",
                self.checkpoint_every_records,
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=24 * 60).contains(&self.checkpoint_every_minutes) {
            return Err(ConfigError::new(
                "audit.checkpoint_every_minutes",
                self.checkpoint_every_minutes,
                "must be between 1 and 1440",
            ));
        }
        Ok(())
    }
}
