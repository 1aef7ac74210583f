//! Where a listener's certificate and key files are.

use std::path::{Path, PathBuf};

/// Where a listener's certificate and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificatePaths {
    /// `{dir}/{name}.crt` and `{dir}/{name}.key`.
    pub fn in_dir(dir: &Path, name: &str) -> CertificatePaths {
        CertificatePaths {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}
