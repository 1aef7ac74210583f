//! Logs: `tracing` to stderr, human-readable or JSON as `log.format` says.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. The level was validated with the config; a second call
/// (tests) keeps the first subscriber.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::builder().parse_lossy(&config.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
