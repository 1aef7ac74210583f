//! `[log]`: how the services write their logs, human or JSON, and at what level.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `appliance=debug,warn`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.level) {
            return Err(ConfigError::new(
                "log.level",
                format!("{:?}", self.level),
                format!("not a tracing filter ({err}); use e.g. \"info\" or \"appliance=debug\""),
            ));
        }
        Ok(())
    }
}
