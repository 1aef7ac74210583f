//! The updater's errors. A [`Rejection`] is why a bundle or anchor set was refused, always
//! decided before anything is written; [`UpdaterError`] is everything else. Both carry a
//! stable dotted `code()`.

use std::path::PathBuf;

pub type Result<T, E = UpdaterError> = std::result::Result<T, E>;

/// Why a bundle (or a new anchor set) is refused. The message says what is wrong and, where
/// it helps, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the file is not a {expected}: {problem}")]
    Malformed {
        expected: &'static str,
        problem: String,
    },
    #[error("the file is truncated: {0}")]
    Truncated(String),
    #[error("the file is {extra} bytes longer than its manifest says; refusing endless data")]
    Oversized { extra: u64 },
    #[error("the bundle is unsigned")]
    Unsigned,
    #[error(
        "signature {index} does not match the signed content: it was tampered with or corrupted"
    )]
    BadSignature { index: usize },
    #[error("signature {index} is not from a trusted key: {reason}")]
    UntrustedSigner { index: usize, reason: String },
    #[error(
        "only {valid} of the {required} required signatures from distinct trusted keys{}",
        details_suffix(.problems)
    )]
    BelowThreshold {
        valid: usize,
        required: usize,
        problems: Vec<String>,
    },
    #[error("it is for {found}, this box needs {expected}")]
    WrongTarget { expected: String, found: String },
    #[error("it expired at {expires_at} (now {now}); ask the vendor for a current bundle")]
    Expired { expires_at: String, now: String },
    #[error("it claims to be signed at {created_at}, later than now ({now})")]
    NotYetValid { created_at: String, now: String },
    #[error("it is valid for {days} days, more than the {max_days} allowed")]
    ValidityTooLong { days: i64, max_days: i64 },
    #[error("it is for hardware {supported:?}, this box is {actual:?}")]
    WrongHardware {
        actual: String,
        supported: Vec<String>,
    },
    #[error("version {offered} is a downgrade: {than}")]
    Downgrade { offered: String, than: String },
    #[error(
        "security version {offered} is below this box's floor {floor}: a replay of an older, vulnerable release"
    )]
    SecurityReplay { offered: u64, floor: u64 },
    #[error("it needs version {required} or later installed first; this box runs {installed}")]
    InstalledTooOld { required: String, installed: String },
    #[error("payload {name:?}: SHA-256 {actual} does not match the manifest's {expected}")]
    PayloadMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("anchor set version {offered} is not newer than the current version {current}")]
    TrustReplay { offered: u64, current: u64 },
}

fn details_suffix(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" ({})", problems.join("; "))
    }
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed { .. } => "bundle.malformed",
            Rejection::Truncated(_) => "bundle.truncated",
            Rejection::Oversized { .. } => "bundle.oversized",
            Rejection::Unsigned => "bundle.unsigned",
            Rejection::BadSignature { .. } => "bundle.bad_signature",
            Rejection::UntrustedSigner { .. } => "bundle.untrusted_signer",
            Rejection::BelowThreshold { .. } => "bundle.below_threshold",
            Rejection::WrongTarget { .. } => "bundle.wrong_target",
            Rejection::Expired { .. } => "bundle.expired",
            Rejection::NotYetValid { .. } => "bundle.not_yet_valid",
            Rejection::ValidityTooLong { .. } => "bundle.validity_too_long",
            Rejection::WrongHardware { .. } => "bundle.wrong_hardware",
            Rejection::Downgrade { .. } => "bundle.downgrade",
            Rejection::SecurityReplay { .. } => "bundle.security_replay",
            Rejection::InstalledTooOld { .. } => "bundle.installed_too_old",
            Rejection::PayloadMismatch { .. } => "bundle.payload_mismatch",
            Rejection::TrustReplay { .. } => "trust.replay",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    #[error("refused: {0}")]
    Rejected(#[from] Rejection),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("updater config: {0}")]
    Config(String),
    #[error(transparent)]
    Appliance(#[from] appliance::Error),
    #[error("openssl: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("boot environment {path}: {problem}")]
    BootEnv { path: PathBuf, problem: String },
    #[error("trust anchors: {0}")]
    Trust(String),
    #[error("install into slot {slot} failed: {reason}; the slot is marked bad and will not boot")]
    InstallFailed { slot: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl UpdaterError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> UpdaterError {
        let path = path.into();
        move |source| UpdaterError::Io { path, source }
    }

    pub fn code(&self) -> &'static str {
        match self {
            UpdaterError::Rejected(rejection) => rejection.code(),
            UpdaterError::Io { .. } => "updater.io",
            UpdaterError::Config(_) => "config.invalid",
            UpdaterError::Appliance(err) => err.code(),
            UpdaterError::Crypto(_) => "updater.crypto",
            UpdaterError::BootEnv { .. } => "updater.boot_env",
            UpdaterError::Trust(_) => "updater.trust",
            UpdaterError::InstallFailed { .. } => "updater.install_failed",
            UpdaterError::Usage(_) => "updater.usage",
        }
    }

    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            UpdaterError::Rejected(rejection) => Some(rejection),
            _ => None,
        }
    }
}
