//! `[access]`: remote access with approval: how long a request waits, how often the portal
//! ends expired sessions, and the site signals (a command, a webhook).

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::values::check_url;

/// Remote access with approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// A request nobody decided on expires after this many hours.
    pub pending_hours: u32,
    /// How often the portal ends expired sessions and drives the signals, in seconds.
    pub tick_seconds: u64,
    /// The portal's address as people reach it, for links in emails. Unset:
    /// `https://{web.host_name}`.
    pub portal_url: Option<String>,
    /// "Remote access active": a command run as `COMMAND... on|off SITE_ID SITE_NAME`
    /// whenever a site's signal changes (and at start), such as a script that lights a lamp.
    pub signal_command: Vec<String>,
    /// "Remote access active": an HTTPS URL (or HTTP to loopback) that receives
    /// `{"site_id":..,"site":..,"active":..}` as a POST whenever a site's signal changes.
    pub signal_webhook: Option<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            pending_hours: 24,
            tick_seconds: 1,
            portal_url: None,
            signal_command: Vec::new(),
            signal_webhook: None,
        }
    }
}

impl AccessConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=24 * 30).contains(&self.pending_hours) {
            return Err(ConfigError::new(
                "access.pending_hours",
                self.pending_hours,
                "must be between 1 and 720",
            ));
        }
        if !(1..=60).contains(&self.tick_seconds) {
            return Err(ConfigError::new(
                "access.tick_seconds",
                self.tick_seconds,
                "must be between 1 and 60",
            ));
        }
        if let Some(url) = &self.portal_url
            && !url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
        {
            return Err(ConfigError::new(
                "access.portal_url",
                format!("{url:?}"),
                "an https:// address, such as https://plantgate.example.com",
            ));
        }
        if let Some(url) = &self.signal_webhook {
            check_url(url).map_err(|problem| {
                ConfigError::new(
                    "access.signal_webhook",
                    format!("{url:?}"),
                    problem.to_string(),
                )
            })?;
        }
        Ok(())
    }
}
