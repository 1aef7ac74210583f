//! `[web]`: the portal and API: listeners, sessions and lockout, request limits, who must
//! use a second factor, and which reverse proxies are believed.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::values::Role;

/// The portal and API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    pub https_listen: String,
    /// Plain HTTP, which only redirects to HTTPS. Unset: no plain HTTP at all.
    pub http_listen: Option<String>,
    /// The name people type; it goes into the self-signed certificate and redirects.
    pub host_name: String,
    pub session_absolute_minutes: u32,
    pub session_idle_minutes: u32,
    pub lockout_attempts: u32,
    pub lockout_minutes: u32,
    /// At least 10 (seed 000's rule); 12 by default.
    pub password_min_chars: u32,
    /// Login attempts per source address per minute.
    pub logins_per_minute: u32,
    /// Refused sign-ins from one address: the first of each kind in a window this long is
    /// audited in full, the rest in one summary record when it ends (`appliance::refusals`).
    pub refusal_summary_seconds: u32,
    pub max_body_bytes: usize,
    /// Roles that must use a second factor; they enrol one at their first login.
    pub second_factor_roles: Vec<String>,
    /// REST API requests per minute, per token and per source address.
    pub api_requests_per_minute: u32,
    /// Sensitive actions (users, certificates, firewall, firmware) ask for the password again
    /// when it was last given longer ago than this.
    pub reauthenticate_seconds: u32,
    /// The largest firmware bundle the portal and API accept; a bigger upload is refused
    /// while it streams, before it is verified.
    pub max_firmware_bytes: u64,
    /// The updater's settings (trust anchors, product), which firmware uploads are
    /// verified with.
    pub updater_config: std::path::PathBuf,
    /// Reverse proxies in front of the portal, by address. Only from these TCP peers are
    /// `Forwarded`, `X-Forwarded-Host`, `-Proto` and `-For` believed (for the origin check,
    /// source addresses and per-address limits). Empty: the portal is reached directly.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            https_listen: "0.0.0.0:443".to_owned(),
            http_listen: Some("0.0.0.0:80".to_owned()),
            host_name: "plantgate.local".to_owned(),
            session_absolute_minutes: 8 * 60,
            session_idle_minutes: 30,
            lockout_attempts: 5,
            lockout_minutes: 15,
            password_min_chars: 12,
            logins_per_minute: 10,
            refusal_summary_seconds: 60,
            max_body_bytes: 64 * 1024,
            second_factor_roles: vec!["admin".to_owned()],
            api_requests_per_minute: 600,
            reauthenticate_seconds: 600,
            max_firmware_bytes: 128 * 1024 * 1024,
            updater_config: "/etc/plantgate/updater.toml".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl WebConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let listens = std::iter::once(("web.https_listen", &self.https_listen))
            .chain(self.http_listen.iter().map(|l| ("web.http_listen", l)));
        for (key, listen) in listens {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::new(
                    key,
                    format!("{listen:?}"),
                    "an address and port, such as 0.0.0.0:443",
                ));
            }
        }
        let ranges: [(&str, u32, std::ops::RangeInclusive<u32>); 9] = [
            (
                "web.session_absolute_minutes",
                self.session_absolute_minutes,
                1..=8 * 60,
            ),
            (
                "web.session_idle_minutes",
                self.session_idle_minutes,
                1..=8 * 60,
            ),
            ("web.lockout_attempts", self.lockout_attempts, 1..=100),
            ("web.lockout_minutes", self.lockout_minutes, 1..=24 * 60),
            ("web.password_min_chars", self.password_min_chars, 10..=128),
            ("web.logins_per_minute", self.logins_per_minute, 1..=10_000),
            (
                "web.refusal_summary_seconds",
                self.refusal_summary_seconds,
                1..=3600,
            ),
            (
                "web.api_requests_per_minute",
                self.api_requests_per_minute,
                1..=1_000_000,
            ),
            (
                "web.reauthenticate_seconds",
                self.reauthenticate_seconds,
                1..=3600,
            ),
        ];
        for (key, value, range) in ranges {
            if !range.contains(&value) {
                return Err(ConfigError::new(
                    key,
                    value,
                    format!("must be between {} and {}", range.start(), range.end()),
                ));
            }
        }
        for role in &self.second_factor_roles {
            if role.parse::<Role>().is_err() {
                return Err(ConfigError::new(
                    "web.second_factor_roles",
                    format!("{role:?}"),
                    "not a role; allowed: admin, approver, technician, viewer, auditor",
                ));
            }
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "web.max_body_bytes",
                self.max_body_bytes,
                "must be between 1024 and 67108864",
            ));
        }
        if !((1 << 20)..=(8 << 30)).contains(&self.max_firmware_bytes) {
            return Err(ConfigError::new(
                "web.max_firmware_bytes",
                self.max_firmware_bytes,
                "must be between 1048576 (1 MiB) and 8589934592 (8 GiB)",
            ));
        }
        Ok(())
    }
}
