//! The core library's one error type. Each variant has a stable, dotted machine code
//! (`Error::code`) that the web crate maps to HTTP status and JSON in one place.
//!
//! The errors stand on the lowest floor and import nothing of the crate. What a variant
//! carries lives beside it: [`ConfigError`] (one bad setting) and [`Discontinuity`] (a store
//! that does not extend the signed audit head).

pub mod config_error;
pub mod discontinuity;

use std::path::PathBuf;

pub use config_error::ConfigError;
pub use discontinuity::Discontinuity;

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
    /// An OpenSSL operation failed outside the audit log's signing (a hash, a seal, a
    /// certificate); the audit key's own failures are [`AuditError::Crypto`].
    #[error("cryptography: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    /// The data partition (or the database server's disk) has no space left: nothing was
    /// stored. It clears by itself once space is freed, so callers refuse with "retry
    /// later" rather than fail. `what` says what could not be written (no file paths: the
    /// message reaches devices and browsers).
    #[error("storage full: {what} could not be written; nothing was stored, retry later")]
    StorageFull { what: &'static str },
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
    /// Stored data that cannot be read back: a block of sealed readings that does not
    /// decode to what its row says it holds.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
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
    /// The store does not extend the signed audit head (truncated, replaced or diverged):
    /// nothing may append until the real store is back or a restore is accepted.
    #[error("{0}")]
    Discontinuity(Box<Discontinuity>),
    #[error("audit signature: {0}")]
    Crypto(openssl::error::ErrorStack),
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
            Error::Store(StoreError::Corrupt(_)) => "store.corrupt",
            Error::Store(StoreError::Migration(_) | StoreError::MigrationLock { .. }) => {
                "store.migration_failed"
            }
            Error::Audit(AuditError::InvalidEvent(_)) => "audit.invalid_event",
            Error::Audit(AuditError::Key { .. } | AuditError::Crypto(_)) => "audit.key",
            Error::Audit(AuditError::Head { .. }) => "audit.head",
            Error::Audit(AuditError::Discontinuity(found)) => found.code(),
            Error::Audit(AuditError::Export(_)) => "audit.export_failed",
            Error::Audit(AuditError::Syslog(_)) => "audit.syslog_failed",
            Error::Invalid { .. } => "request.invalid",
            Error::NotFound(_) => "request.not_found",
            Error::Conflict(_) => "request.conflict",
            Error::Forbidden(_) => "request.forbidden",
            Error::Key { .. } => "appliance.key",
            Error::NotInitialised { .. } => "appliance.not_initialised",
            Error::Crypto(_) => "crypto.failed",
            Error::StorageFull { .. } => "storage.full",
        }
    }

    /// Whether this is [`Error::StorageFull`]: the one question callers ask to answer 503
    /// with a reason instead of a generic failure.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Error::StorageFull { .. })
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
        if is_disk_full(&err) {
            return Error::StorageFull { what: "the store" };
        }
        Error::Store(StoreError::Query(err))
    }
}

/// Whether a store error says the disk is full. Neither backend gives diesel a distinct
/// kind for it, so the text decides: SQLite's `SQLITE_FULL` is "database or disk is full"
/// (for the database, its WAL or a temporary file); PostgreSQL reports `ENOSPC` as "could
/// not extend file ...: No space left on device" (SQLSTATE 53100) or a failed write with
/// the same suffix.
pub fn is_disk_full(err: &diesel::result::Error) -> bool {
    let message = match err {
        diesel::result::Error::DatabaseError(_, info) => info.message(),
        // A COMMIT that failed for want of space, and whose rollback failed too.
        diesel::result::Error::RollbackErrorOnCommit { commit_error, .. } => {
            return is_disk_full(commit_error);
        }
        _ => return false,
    };
    let message = message.to_ascii_lowercase();
    message.contains("database or disk is full") || message.contains("no space left on device")
}

/// Whether a file system error means no space is left: `ENOSPC`, or `EDQUOT` (a quota
/// fills the same way and clears the same way).
pub fn is_io_full(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind};

    struct Message(&'static str);

    impl DatabaseErrorInformation for Message {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    fn database(message: &'static str) -> diesel::result::Error {
        diesel::result::Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(Message(message)))
    }

    #[test]
    fn either_backends_words_for_a_full_disk_are_storage_full() {
        // SQLite's SQLITE_FULL, and PostgreSQL's ENOSPC (SQLSTATE 53100), which the loop
        // mount test cannot provoke: the server's disk is the machine's.
        for message in [
            "database or disk is full",
            "could not extend file \"base/16384/16385\": No space left on device",
        ] {
            let err = Error::from(database(message));
            assert!(err.is_storage_full(), "{message}");
            assert_eq!(err.code(), "storage.full");
        }
        let commit = diesel::result::Error::RollbackErrorOnCommit {
            rollback_error: Box::new(diesel::result::Error::BrokenTransactionManager),
            commit_error: Box::new(database("database or disk is full")),
        };
        assert!(Error::from(commit).is_storage_full());
        for other in [
            "disk I/O error",
            "duplicate key value violates unique constraint",
        ] {
            assert_eq!(Error::from(database(other)).code(), "store.query_failed");
        }
        assert!(is_io_full(&std::io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(is_io_full(&std::io::Error::from_raw_os_error(122))); // EDQUOT
        assert!(!is_io_full(&std::io::Error::from_raw_os_error(13))); // EACCES
    }

    #[test]
    fn an_openssl_failure_is_named_for_what_failed_not_for_the_audit_key() {
        // A certificate that does not parse: the device CA's kind of failure.
        let stack = openssl::x509::X509::from_pem(b"not a certificate").expect_err("garbage");
        let err = Error::from(stack);
        assert_eq!(err.code(), "crypto.failed");
        assert!(err.to_string().starts_with("cryptography: "), "{err}");
        let stack = openssl::x509::X509::from_pem(b"not a certificate").expect_err("garbage");
        assert_eq!(Error::from(AuditError::Crypto(stack)).code(), "audit.key");
    }
}
