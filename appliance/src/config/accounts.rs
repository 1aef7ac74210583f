//! `[accounts]`: the service accounts that `plantgate init` gives key files to.

use serde::{Deserialize, Serialize};

/// The accounts `plantgate init` gives key files to: names (resolved through /etc/passwd and
/// /etc/group) or numeric ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    pub web: String,
    pub ingest: String,
    pub firewall: String,
    /// Every service's group: the shared store, the audit signing key.
    pub group: String,
    /// The portal's and the ingest's group: the mail relay's sealing key.
    pub mail_group: String,
}
