//! Configuration: a TOML file plus `PLANTGATE_*` environment overrides, validated at start.
//!
//! Every key has a default, so `plantgate` runs with no file at all. Nested keys are
//! reached from the environment with a double underscore: `PLANTGATE_STORE__URL` sets
//! `store.url`. A bad value is reported as one [`ConfigError`] line naming the key, the
//! value and what is allowed.
//!
//! This file holds the whole ([`Config`]) and how it is read; each section of the file
//! (`[web]`, `[ingest]`, ...) has its own module with its keys, defaults and checks. The
//! configuration stands on the plain values (`crate::values`) and the error types alone.

mod access;
mod accounts;
mod ingest;
mod logging;
mod mail;
mod network;
mod store;
mod web;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::error::ConfigError;
use crate::values::CertificatePaths;
pub use access::AccessConfig;
pub use accounts::AccountsConfig;
pub use ingest::{ConnectorsConfig, IngestConfig};
pub use logging::{LogConfig, LogFormat};
pub use mail::{SmtpConfig, SmtpSecurity};
pub use network::{FirewallConfig, NetworkConfig, is_interface_name};
pub use store::{AuditConfig, StoreConfig, StoreTarget, redact_url};
pub use web::WebConfig;

/// Where the image's configuration lives; used when no file is named explicitly.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/plantgate/plantgate.toml";
/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "PLANTGATE_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Everything Plantgate keeps on disk: the SQLite store, signing keys, the signed audit head.
    /// `./var` in development; the image's config sets `/var/lib/plantgate`.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub network: NetworkConfig,
    pub firewall: FirewallConfig,
    pub ingest: IngestConfig,
    pub web: WebConfig,
    /// Remote access with approval: request expiry, the site signals and key switches.
    pub access: AccessConfig,
    /// The relay every email goes out through: alerts, access requests, invitations.
    pub smtp: SmtpConfig,
    /// The service accounts that key files belong to (`crate::keyring`); the image sets
    /// them. Unset, as in development, owners are left as they are.
    pub accounts: Option<AccountsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./var"),
            store: StoreConfig::default(),
            audit: AuditConfig::default(),
            log: LogConfig::default(),
            network: NetworkConfig::default(),
            firewall: FirewallConfig::default(),
            ingest: IngestConfig::default(),
            web: WebConfig::default(),
            access: AccessConfig::default(),
            smtp: SmtpConfig::default(),
            accounts: None,
        }
    }
}

impl Config {
    /// Reads `file` (or the system file when it exists), applies `PLANTGATE_*` overrides
    /// from the process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError {
                    key: "config file".to_owned(),
                    value: Some(path.display().to_string()),
                    problem: "no such file".to_owned(),
                    origin: None,
                });
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(SYSTEM_CONFIG_PATH).is_file() => {
                figment = figment.merge(Toml::file_exact(SYSTEM_CONFIG_PATH))
            }
            None => {}
        }
        // `PLANTGATE_CONFIG` and `PLANTGATE_UPDATER_CONFIG` name files; they are not settings.
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .ignore(&["config", "updater_config"]),
        );
        let config: Config = figment.extract().map_err(from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that serde's types cannot, without touching the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let target = self.store_target()?;
        // The size measured is the SQLite store file's; a PostgreSQL server keeps its data
        // elsewhere, and its files do not shrink as rows are deleted, so a size limit there
        // would delete on and on: refused rather than half kept.
        if let (Some(mib), StoreTarget::Postgres(_)) = (self.ingest.retention_max_mib, &target) {
            return Err(ConfigError::new(
                "ingest.retention_max_mib",
                mib,
                "limits the SQLite store's size; with PostgreSQL, use ingest.retention_days",
            ));
        }
        self.store.validate()?;
        self.audit.validate()?;
        self.network.validate()?;
        self.firewall.validate()?;
        self.ingest.validate()?;
        self.smtp.validate()?;
        self.access.validate()?;
        self.web.validate()?;
        self.log.validate()
    }

    /// What links in emails start with.
    pub fn portal_url(&self) -> String {
        self.access
            .portal_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.web.host_name))
            .trim_end_matches('/')
            .to_owned()
    }

    /// The portal's certificate and key: made at first start, replaced by an administrator.
    pub fn portal_certificate(&self) -> CertificatePaths {
        CertificatePaths::in_dir(&self.data_dir.join("tls"), "portal")
    }

    /// The ingest listener's certificate and key.
    pub fn ingest_certificate(&self) -> CertificatePaths {
        match (&self.ingest.certificate, &self.ingest.private_key) {
            (Some(cert), Some(key)) => CertificatePaths {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertificatePaths::in_dir(&self.data_dir.join("tls"), "ingest"),
        }
    }

    /// Creates the data directory if needed and proves that it is writable.
    pub fn prepare_data_dir(&self) -> Result<(), ConfigError> {
        let dir = &self.data_dir;
        let unwritable = |err: std::io::Error| {
            ConfigError::new(
                "data_dir",
                format!("{:?}", dir.display().to_string()),
                format!("not a writable directory ({err})"),
            )
        };
        std::fs::create_dir_all(dir).map_err(unwritable)?;
        let probe = tempfile::NamedTempFile::new_in(dir).map_err(unwritable)?;
        probe.close().map_err(unwritable)
    }

    /// The database the store URL names; `sqlite://{data_dir}/plantgate.db` when unset.
    pub fn store_target(&self) -> Result<StoreTarget, ConfigError> {
        self.store.target(&self.data_dir)
    }

    /// The machine network; grants may only lead into it.
    pub fn device_network(&self) -> Result<ipnet::Ipv4Net, ConfigError> {
        self.network.device_network()
    }

    pub fn firewall_socket(&self) -> PathBuf {
        self.firewall
            .socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("firewall.sock"))
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// A rendering of the effective configuration with secrets removed.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.store.url = self.store_target().ok().map(|target| target.redacted());
        if shown.smtp.password.is_some() {
            shown.smtp.password = Some("REDACTED".to_owned());
        }
        toml::to_string(&shown).unwrap_or_else(|err| format!("# cannot render config: {err}"))
    }
}

fn from_figment(err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = err.path.clone();
    let (value, problem) = match &err.kind {
        Kind::UnknownField(field, allowed) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            (
                None,
                format!("unknown key; allowed here: {}", allowed.join(", ")),
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            (Some(actual.to_string()), format!("expected {expected}"))
        }
        Kind::UnknownVariant(actual, allowed) => (
            Some(format!("{actual:?}")),
            format!("allowed: {}", allowed.join(", ")),
        ),
        // TOML syntax errors span several lines; the first names the place.
        Kind::Message(message) => (
            None,
            message
                .lines()
                .next()
                .unwrap_or("invalid")
                .trim()
                .to_owned(),
        ),
        other => (None, other.to_string()),
    };
    let origin = err.metadata.as_ref().map(|meta| match &meta.source {
        Some(figment::Source::File(file)) => file.display().to_string(),
        // The environment provider's own naming drops the prefix; name the real variable.
        _ if meta.name.contains("environment") => {
            format!("{ENV_PREFIX}{}", path.join("__").to_uppercase())
        }
        _ => meta.name.to_string(),
    });
    ConfigError {
        key: if path.is_empty() {
            "config file".to_owned()
        } else {
            path.join(".")
        },
        value,
        problem,
        origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_limit_is_refused_on_postgresql_and_taken_on_sqlite() {
        let mut config = Config::default();
        config.ingest.retention_max_mib = Some(2048);
        config.validate().expect("SQLite measures its file");
        config.store.url = Some("postgres://plantgate@db/plantgate".to_owned());
        let line = config.validate().expect_err("refused").to_string();
        assert!(
            line.contains("ingest.retention_max_mib") && line.contains("retention_days"),
            "{line}"
        );
    }

    #[test]
    fn store_url_with_a_password_is_never_printed_in_errors() {
        let mut config = Config::default();
        config.store.url = Some("mysql://admin:hunter2@db/plantgate".to_owned());
        let err = config.store_target().expect_err("mysql is not supported");
        let line = err.to_string();
        assert!(line.contains("unsupported scheme `mysql`"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[test]
    fn unset_store_url_means_sqlite_in_the_data_dir() {
        let config = Config {
            data_dir: PathBuf::from("/srv/pg"),
            ..Config::default()
        };
        assert_eq!(
            config.store_target(),
            Ok(StoreTarget::Sqlite(PathBuf::from("/srv/pg/plantgate.db")))
        );
    }

    #[test]
    fn an_earliest_timestamp_that_is_not_a_time_is_refused_naming_the_key() {
        let mut ingest = IngestConfig::default();
        assert_eq!(ingest.earliest_timestamp_us(), Ok(946_684_800_000_000));
        ingest.earliest_timestamp = "the year 2000".to_owned();
        let err = ingest.validate().expect_err("not a time");
        assert!(
            err.to_string().contains("ingest.earliest_timestamp"),
            "{err}"
        );
    }

    #[test]
    fn redacted_toml_hides_the_database_password() {
        let mut config = Config::default();
        config.store.url = Some("postgres://plantgate:s3cret@127.0.0.1/pg".to_owned());
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("[store]"), "{shown}");
    }
}
