//! `[ingest]`: the device-side telemetry service, `plantgate-ingest`: its listeners, its
//! limits, how long readings are kept, and `[ingest.connectors]`, webhook delivery.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The device-side telemetry service, `plantgate-ingest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// HTTPS listener, `ADDRESS:PORT`; on the image, the device interface's address.
    pub https_listen: String,
    /// MQTT over TLS listener; unset to turn MQTT off.
    pub mqtt_listen: Option<String>,
    /// The largest request body (compressed, as sent) and MQTT packet accepted.
    pub max_body_bytes: usize,
    /// The largest body after gzip decompression; a bigger one is refused as a gzip bomb.
    pub max_decoded_bytes: usize,
    pub max_batch_readings: usize,
    /// Readings timestamped further than this in the future are refused.
    pub max_future_skew_seconds: i64,
    /// Readings timestamped before this (RFC 3339) are refused: a device whose clock was
    /// never set, or that sends seconds where milliseconds are asked for, reports 1970.
    pub earliest_timestamp: String,
    /// The most readings the writer commits in one transaction.
    pub group_commit_readings: usize,
    /// How often devices are checked for silence.
    pub silent_check_seconds: u64,
    /// The HTTP worker threads.
    pub http_workers: usize,
    /// Certificate and key; unset: `{data_dir}/tls/ingest.crt` and `.key`, self-signed at start.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub connectors: ConnectorsConfig,
    /// Readings are deleted this many days after they were received; unset: kept for ever.
    pub retention_days: Option<u32>,
    /// How many MiB of the data partition the SQLite store may use for telemetry: above it,
    /// the oldest readings are deleted first. Unset: no size limit.
    pub retention_max_mib: Option<u64>,
    /// How often the writer looks for readings past retention.
    pub retention_check_seconds: u64,
    /// Readings stay rows until the period (counted in whole periods from the Unix epoch,
    /// so a day is a UTC day) they were received in has ended; then the writer seals them
    /// into compressed blocks ([`crate::blocks`]).
    pub seal_period_seconds: u64,
    /// One deadline for a new connection to prove who it is: MQTT's TLS handshake and
    /// CONNECT together; HTTPS's TLS handshake and first request head together (half each),
    /// and again any body read before the request authenticated. Slow or silent clients are
    /// closed.
    pub handshake_timeout_seconds: u64,
    /// Connections not yet authenticated (in the TLS handshake, before their MQTT CONNECT
    /// was accepted or an HTTPS request on them authenticated), both protocols together. At
    /// the limit, a new connection closes the oldest of the address that holds the most, so
    /// that a device is never refused for them.
    pub max_unauthenticated: usize,
    /// The same, per source address.
    pub max_unauthenticated_per_address: usize,
    /// HTTPS connections at once, in all (shared out between the HTTP workers).
    pub https_max_connections: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            https_listen: "0.0.0.0:8443".to_owned(),
            mqtt_listen: Some("0.0.0.0:8883".to_owned()),
            max_body_bytes: 1024 * 1024,
            max_decoded_bytes: 8 * 1024 * 1024,
            max_batch_readings: 10_000,
            max_future_skew_seconds: 300,
            earliest_timestamp: "2000-01-01T00:00:00Z".to_owned(),
            group_commit_readings: 20_000,
            silent_check_seconds: 30,
            http_workers: 2,
            certificate: None,
            private_key: None,
            connectors: ConnectorsConfig::default(),
            retention_days: None,
            retention_max_mib: None,
            retention_check_seconds: 3600,
            seal_period_seconds: 86_400,
            handshake_timeout_seconds: 10,
            max_unauthenticated: 256,
            max_unauthenticated_per_address: 32,
            https_max_connections: 1024,
        }
    }
}

impl IngestConfig {
    /// [`IngestConfig::earliest_timestamp`] in microseconds since the Unix epoch.
    pub fn earliest_timestamp_us(&self) -> Result<i64, ConfigError> {
        chrono::DateTime::parse_from_rfc3339(&self.earliest_timestamp)
            .map(|t| t.timestamp_micros())
            .map_err(|_| {
                ConfigError::new(
                    "ingest.earliest_timestamp",
                    &self.earliest_timestamp,
                    "must be an RFC 3339 time, such as 2000-01-01T00:00:00Z",
                )
            })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let listeners = [
            ("ingest.https_listen", Some(&self.https_listen)),
            ("ingest.mqtt_listen", self.mqtt_listen.as_ref()),
        ];
        for (key, value) in listeners {
            if let Some(value) = value
                && value.parse::<std::net::SocketAddr>().is_err()
            {
                return Err(ConfigError::new(
                    key,
                    format!("{value:?}"),
                    "not ADDRESS:PORT, such as 192.168.50.1:8443",
                ));
            }
        }
        let ranges: [(&str, usize, usize, usize); 5] = [
            ("ingest.max_body_bytes", self.max_body_bytes, 1024, 64 << 20),
            (
                "ingest.max_decoded_bytes",
                self.max_decoded_bytes,
                1024,
                256 << 20,
            ),
            (
                "ingest.max_batch_readings",
                self.max_batch_readings,
                1,
                100_000,
            ),
            (
                "ingest.group_commit_readings",
                self.group_commit_readings,
                1,
                1_000_000,
            ),
            ("ingest.http_workers", self.http_workers, 1, 64),
        ];
        for (key, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::new(
                    key,
                    value,
                    format!("must be between {low} and {high}"),
                ));
            }
        }
        if self.max_decoded_bytes < self.max_body_bytes {
            return Err(ConfigError::new(
                "ingest.max_decoded_bytes",
                self.max_decoded_bytes,
                "must be at least ingest.max_body_bytes",
            ));
        }
        if !(0..=7 * 24 * 3600).contains(&self.max_future_skew_seconds) {
            return Err(ConfigError::new(
                "ingest.max_future_skew_seconds",
                self.max_future_skew_seconds,
                "must be between 0 and 604800",
            ));
        }
        self.earliest_timestamp_us()?;
        if let Some(days) = self.retention_days
            && !(1..=36_500).contains(&days)
        {
            return Err(ConfigError::new(
                "ingest.retention_days",
                days,
                "must be 1-36500, or unset to keep readings for ever",
            ));
        }
        if let Some(mib) = self.retention_max_mib
            && !(1..=16 * 1024 * 1024).contains(&mib)
        {
            return Err(ConfigError::new(
                "ingest.retention_max_mib",
                mib,
                "must be 1-16777216 (MiB), or unset for no size limit",
            ));
        }
        if !(1..=86_400).contains(&self.retention_check_seconds) {
            return Err(ConfigError::new(
                "ingest.retention_check_seconds",
                self.retention_check_seconds,
                "must be 1-86400",
            ));
        }
        if !(1..=7 * 86_400).contains(&self.seal_period_seconds) {
            return Err(ConfigError::new(
                "ingest.seal_period_seconds",
                self.seal_period_seconds,
                "must be 1-604800 (a week)",
            ));
        }
        if !(1..=3600).contains(&self.silent_check_seconds) {
            return Err(ConfigError::new(
                "ingest.silent_check_seconds",
                self.silent_check_seconds,
                "must be between 1 and 3600",
            ));
        }
        if self.certificate.is_some() != self.private_key.is_some() {
            return Err(ConfigError::new(
                "ingest.certificate",
                format!("{:?}", self.certificate),
                "set ingest.certificate and ingest.private_key together, or neither",
            ));
        }
        self.connectors.validate()
    }
}

/// Webhook delivery: a failed attempt is retried after 1 s, doubling up to
/// `max_backoff_seconds`; after `max_attempts` the delivery is dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorsConfig {
    pub max_attempts: i32,
    pub max_backoff_seconds: u64,
    /// One attempt's limit: connect, TLS, request and response.
    pub timeout_seconds: u64,
}

impl Default for ConnectorsConfig {
    fn default() -> Self {
        ConnectorsConfig {
            max_attempts: 20,
            max_backoff_seconds: 300,
            timeout_seconds: 10,
        }
    }
}

impl ConnectorsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                "ingest.connectors.max_attempts",
                self.max_attempts,
                "must be between 1 and 1000",
            ));
        }
        if !(1..=86_400).contains(&self.max_backoff_seconds) {
            return Err(ConfigError::new(
                "ingest.connectors.max_backoff_seconds",
                self.max_backoff_seconds,
                "must be between 1 and 86400",
            ));
        }
        if !(1..=300).contains(&self.timeout_seconds) {
            return Err(ConfigError::new(
                "ingest.connectors.timeout_seconds",
                self.timeout_seconds,
                "must be between 1 and 300",
            ));
        }
        Ok(())
    }
}
