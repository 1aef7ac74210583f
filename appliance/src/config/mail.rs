//! `[smtp]`: the relay every email goes out through (alerts, access requests, invitations).

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Where every email goes out. `security`: `none` (loopback tests only), `starttls` or `tls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Unset: no email is sent, and the outbox keeps what is owed.
    pub host: Option<String>,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub max_attempts: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    None,
    Starttls,
    Tls,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: None,
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            from: "plantgate@localhost".to_owned(),
            max_attempts: 10,
        }
    }
}

impl SmtpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.port == 0 {
            return Err(ConfigError::new("smtp.port", 0, "must be 1-65535"));
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                "smtp.max_attempts",
                self.max_attempts,
                "must be between 1 and 1000",
            ));
        }
        if self.from.parse::<url::Url>().is_ok() || !self.from.contains('@') {
            return Err(ConfigError::new(
                "smtp.from",
                format!("{:?}", self.from),
                "not an email address",
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::new(
                "smtp.username",
                format!("{:?}", self.username),
                "set smtp.username and smtp.password together, or neither",
            ));
        }
        Ok(())
    }
}
