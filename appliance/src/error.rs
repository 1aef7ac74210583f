//! The core library's one error type. Each variant has a stable, dotted machine code
//! (`Error::code`) that the web crate maps to HTTP status and JSON in one place.

use std::path::PathBuf;

use crate::config::ConfigError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A value a user supplied is not acceptable; `field` names it.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// The caller may see the thing but not do this to it.
    #[error("{0}")]
    Forbidden(String),
    /// A key or certificate kept outside the store (connector sealing key, device CA).
    #[error("{path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("{what} is missing; run `plantgate init` first ({path})")]
    NotInitialised { what: &'static str, path: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("no store connection available: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("store query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// The store does not exist, or holds no Plantgate tables. Only `plantgate init`
    /// creates one: everything else stops here rather than start on an empty store.
    #[error(
        "the store {target} {problem}: restore it from backup, or run `plantgate init` if this is a new appliance"
    )]
    Missing {
        target: String,
        problem: &'static str,
    },
    #[error("store migration failed: {0}")]
    Migration(String),
    #[error("cannot take the migration lock {path}: {source}")]
    MigrationLock {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("invalid audit event: {0}")]
    InvalidEvent(String),
    #[error("audit signing key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("signed audit head {path}: {problem}")]
    Head { path: PathBuf, problem: String },
    #[error("audit signature: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("audit export: {0}")]
    Export(String),
    #[error("audit syslog: {0}")]
    Syslog(String),
}

impl Error {
    /// A stable machine-readable code, grouped by domain.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "config.invalid",
            Error::Store(StoreError::Connect { .. }) => "store.unavailable",
            Error::Store(StoreError::Pool(_)) => "store.unavailable",
            Error::Store(StoreError::Missing { .. }) => "store.missing",
            Error::Store(StoreError::Query(_)) => "store.query_failed",
            Error::Store(StoreError::Migration(_) | StoreError::MigrationLock { .. }) => {
                "store.migration_failed"
            }
            Error::Audit(AuditError::InvalidEvent(_)) => "audit.invalid_event",
            Error::Audit(AuditError::Key { .. } | AuditError::Crypto(_)) => "audit.key",
            Error::Audit(AuditError::Head { .. }) => "audit.head",
            Error::Audit(AuditError::Export(_)) => "audit.export_failed",
            Error::Audit(AuditError::Syslog(_)) => "audit.syslog_failed",
            Error::Invalid { .. } => "request.invalid",
            Error::NotFound(_) => "request.not_found",
            Error::Conflict(_) => "request.conflict",
            Error::Forbidden(_) => "request.forbidden",
            Error::Key { .. } => "appliance.key",
            Error::NotInitialised { .. } => "appliance.not_initialised",
        }
    }

    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            problem: problem.into(),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(err: diesel::result::Error) -> Self {
        Error::Store(StoreError::Query(err))
    }
}

impl From<openssl::error::ErrorStack> for Error {
    fn from(err: openssl::error::ErrorStack) -> Self {
        Error::Audit(AuditError::Crypto(err))
    }
}
