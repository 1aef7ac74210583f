//! Plain values that the settings and the domain share: what a port range, a role, a
//! webhook's URL and a listener's certificate files are, and how their text is read.
//!
//! This floor knows nothing above [`crate::error`]: the configuration checks its settings
//! with these, and the modules that own the domain (grants, connectors, models, tls) hand
//! them on under their old names.

pub mod certificate_paths;
pub mod ports;
pub mod role;
pub mod webhook_url;

pub use certificate_paths::CertificatePaths;
pub use ports::{PortList, PortRange, Protocol};
pub use role::Role;
pub use webhook_url::check_url;
