//! A bad setting, as the configuration reports it: one line naming the key, the value, what
//! is allowed, and where the value came from.

use std::fmt;

/// One bad setting: which key, what value, what is allowed, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub value: Option<String>,
    pub problem: String,
    pub origin: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config: {}", self.key)?;
        if let Some(value) = &self.value {
            write!(f, " = {value}")?;
        }
        write!(f, ": {}", self.problem)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(key: &str, value: impl fmt::Display, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_owned(),
            value: Some(value.to_string()),
            problem: problem.into(),
            origin: None,
        }
    }
}
