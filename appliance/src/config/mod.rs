//! Configuration: a TOML file plus `PLANTGATE_*` environment overrides, validated at start.
//!
//! Every key has a default, so `plantgate` runs with no file at all. Nested keys are
//! reached from the environment with a double underscore: `PLANTGATE_STORE__URL` sets
//! `store.url`. A bad value is reported as one [`ConfigError`] line naming the key, the
//! value and what is allowed.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Where the image's configuration lives; used when no file is named explicitly.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/plantgate/plantgate.toml";
/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "PLANTGATE_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Everything Plantgate keeps on disk: the SQLite store, signing keys, the signed audit head.
    /// `./var` in development; the image's config sets `/var/lib/plantgate`.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub network: NetworkConfig,
    pub firewall: FirewallConfig,
    pub ingest: IngestConfig,
    pub web: WebConfig,
    /// Remote access with approval: request expiry, the site signals and key switches.
    pub access: AccessConfig,
    /// The relay every email goes out through: alerts, access requests, invitations.
    pub smtp: SmtpConfig,
    /// The service accounts that key files belong to (`crate::keyring`); the image sets
    /// them. Unset, as in development, owners are left as they are.
    pub accounts: Option<AccountsConfig>,
}

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

/// The appliance's two ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The office/IT side, where the portal and API listen.
    pub uplink_interface: String,
    /// The machine/OT side, where the ingest listens and grants lead.
    pub device_interface: String,
    /// The machine network in CIDR form. No grant ever leads outside it.
    pub device_network: String,
}

/// What the firewall lets through besides grants. Ports are `tcp/443` or `udp/53`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// Reachable from uplink only.
    pub portal_ports: Vec<u16>,
    /// Reachable from device only.
    pub ingest_ports: Vec<u16>,
    /// SSH from uplink; off unless an admin turns it on.
    pub ssh: bool,
    /// DHCP and NTP served to the device network.
    pub device_dhcp: bool,
    pub device_ntp: bool,
    /// What the appliance itself may open on uplink: DNS, NTP, SMTP, webhooks, syslog.
    pub outbound: Vec<String>,
    pub icmp_echo_per_second: u32,
    /// The most ports one grant may open; longer port ranges are refused.
    pub max_ports_per_grant: u32,
    pub max_grant_minutes: u32,
    pub reconcile_seconds: u64,
    /// Every pinhole needs a lease the running controller renews every third of this; a
    /// controller that is down (or cannot read the store) lets it lapse, and every pinhole
    /// closes within this many seconds, revoked or not.
    pub lease_seconds: u64,
    /// A change to how admins reach the appliance (uplink interface, portal ports, SSH) is
    /// rolled back unless `plantgate-firewall confirm` runs within this many seconds.
    pub confirm_seconds: u64,
    /// The controller's Unix socket. Unset: `{data_dir}/firewall.sock`.
    pub socket: Option<PathBuf>,
}

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
    /// How often the writer looks for readings past retention.
    pub retention_check_seconds: u64,
    /// One deadline for a new connection to prove who it is: MQTT's TLS handshake and
    /// CONNECT together; HTTPS's TLS handshake and first request head together (half each),
    /// and again any body read before the request authenticated. Slow or silent clients are
    /// closed.
    pub handshake_timeout_seconds: u64,
    /// MQTT connections not yet authenticated (in the TLS handshake or before their CONNECT
    /// was accepted), in all. At the limit, a new connection closes the oldest of the
    /// address that holds the most, so that a device is never refused for them.
    pub max_unauthenticated: usize,
    /// The same, per source address.
    pub max_unauthenticated_per_address: usize,
    /// HTTPS connections at once, in all (shared out between the HTTP workers).
    pub https_max_connections: usize,
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

/// Where alert emails go out. `security`: `none` (loopback tests only), `starttls` or `tls`.
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`. Unset means `sqlite://{data_dir}/plantgate.db`.
    pub url: Option<String>,
    pub pool_size: u32,
    /// How long SQLite waits for another writer before giving up.
    pub busy_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A signed checkpoint of the chain head is taken every this many records...
    pub checkpoint_every_records: u64,
    /// ...and when the head moved and the last checkpoint is older than this.
    pub checkpoint_every_minutes: u64,
    /// A local syslog socket (usually `/dev/log`) that receives every checkpoint, so that
    /// a witness outside the appliance holds them.
    pub syslog_socket: Option<PathBuf>,
}

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

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./var"),
            store: StoreConfig::default(),
            audit: AuditConfig::default(),
            log: LogConfig::default(),
            network: NetworkConfig::default(),
            firewall: FirewallConfig::default(),
            ingest: IngestConfig::default(),
            web: WebConfig::default(),
            access: AccessConfig::default(),
            smtp: SmtpConfig::default(),
            accounts: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            pool_size: 8,
            busy_timeout_ms: 10_000,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every_records: 1000,
            checkpoint_every_minutes: 10,
            syslog_socket: None,
        }
    }
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

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            uplink_interface: "eth0".to_owned(),
            device_interface: "eth1".to_owned(),
            device_network: "192.168.50.0/24".to_owned(),
        }
    }
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            portal_ports: vec![443, 80],
            ingest_ports: vec![8443, 8883],
            ssh: false,
            device_dhcp: false,
            device_ntp: false,
            outbound: [
                "udp/53", "tcp/53", "udp/123", "tcp/25", "tcp/465", "tcp/587", "tcp/443",
                "udp/514", "tcp/6514",
            ]
            .map(str::to_owned)
            .to_vec(),
            icmp_echo_per_second: 5,
            max_ports_per_grant: 16,
            max_grant_minutes: 8 * 60,
            reconcile_seconds: 30,
            lease_seconds: 60,
            confirm_seconds: 120,
            socket: None,
        }
    }
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
            group_commit_readings: 20_000,
            silent_check_seconds: 30,
            http_workers: 2,
            certificate: None,
            private_key: None,
            connectors: ConnectorsConfig::default(),
            retention_days: None,
            retention_check_seconds: 3600,
            handshake_timeout_seconds: 10,
            max_unauthenticated: 256,
            max_unauthenticated_per_address: 32,
            https_max_connections: 1024,
        }
    }
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

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

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
    fn new(key: &str, value: impl fmt::Display, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_owned(),
            value: Some(value.to_string()),
            problem: problem.into(),
            origin: None,
        }
    }
}

/// Which database the store URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreTarget {
    /// The URL with any password replaced, safe to print and log.
    pub fn redacted(&self) -> String {
        match self {
            StoreTarget::Sqlite(path) => format!("sqlite://{}", path.display()),
            StoreTarget::Postgres(url) => redact_url(url),
        }
    }
}

impl Config {
    /// Reads `file` (or the system file when it exists), applies `PLANTGATE_*` overrides
    /// from the process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError {
                    key: "config file".to_owned(),
                    value: Some(path.display().to_string()),
                    problem: "no such file".to_owned(),
                    origin: None,
                });
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(SYSTEM_CONFIG_PATH).is_file() => {
                figment = figment.merge(Toml::file_exact(SYSTEM_CONFIG_PATH))
            }
            None => {}
        }
        // `PLANTGATE_CONFIG` and `PLANTGATE_UPDATER_CONFIG` name files; they are not settings.
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .ignore(&["config", "updater_config"]),
        );
        let config: Config = figment.extract().map_err(from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that serde's types cannot, without touching the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store_target()?;
        if !(1..=64).contains(&self.store.pool_size) {
            return Err(ConfigError::new(
                "store.pool_size",
                self.store.pool_size,
                "must be between 1 and 64",
            ));
        }
        if !(1..=600_000).contains(&self.store.busy_timeout_ms) {
            return Err(ConfigError::new(
                "store.busy_timeout_ms",
                self.store.busy_timeout_ms,
                "must be between 1 and 600000 milliseconds",
            ));
        }
        if !(1..=1_000_000).contains(&self.audit.checkpoint_every_records) {
            return Err(ConfigError::new(
                "audit.checkpoint_every_records",
                self.audit.checkpoint_every_records,
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=24 * 60).contains(&self.audit.checkpoint_every_minutes) {
            return Err(ConfigError::new(
                "audit.checkpoint_every_minutes",
                self.audit.checkpoint_every_minutes,
                "must be between 1 and 1440",
            ));
        }
        for (key, name) in [
            ("network.uplink_interface", &self.network.uplink_interface),
            ("network.device_interface", &self.network.device_interface),
        ] {
            if !is_interface_name(name) {
                return Err(ConfigError::new(
                    key,
                    format!("{name:?}"),
                    "not an interface name (1-15 of A-Z a-z 0-9 . _ -)",
                ));
            }
        }
        if self.network.uplink_interface == self.network.device_interface {
            return Err(ConfigError::new(
                "network.device_interface",
                format!("{:?}", self.network.device_interface),
                "must differ from network.uplink_interface",
            ));
        }
        self.device_network()?;
        for (key, ports) in [
            ("firewall.portal_ports", &self.firewall.portal_ports),
            ("firewall.ingest_ports", &self.firewall.ingest_ports),
        ] {
            if ports.is_empty() || ports.contains(&0) {
                return Err(ConfigError::new(
                    key,
                    format!("{ports:?}"),
                    "a non-empty list of ports 1-65535",
                ));
            }
        }
        for entry in &self.firewall.outbound {
            crate::grants::PortRange::parse(entry).map_err(|problem| {
                ConfigError::new("firewall.outbound", format!("{entry:?}"), problem)
            })?;
        }
        if !(1..=1024).contains(&self.firewall.max_ports_per_grant) {
            return Err(ConfigError::new(
                "firewall.max_ports_per_grant",
                self.firewall.max_ports_per_grant,
                "must be between 1 and 1024",
            ));
        }
        if !(1..=7 * 24 * 60).contains(&self.firewall.max_grant_minutes) {
            return Err(ConfigError::new(
                "firewall.max_grant_minutes",
                self.firewall.max_grant_minutes,
                "must be between 1 and 10080",
            ));
        }
        if !(1..=3600).contains(&self.firewall.reconcile_seconds) {
            return Err(ConfigError::new(
                "firewall.reconcile_seconds",
                self.firewall.reconcile_seconds,
                "must be between 1 and 3600",
            ));
        }
        // Renewal runs on a one-second tick every third of the lease: below 3 s a busy
        // moment could let it lapse; above 10 minutes a revoke would not hold in any sense.
        if !(3..=600).contains(&self.firewall.lease_seconds) {
            return Err(ConfigError::new(
                "firewall.lease_seconds",
                self.firewall.lease_seconds,
                "must be between 3 and 600",
            ));
        }
        if !(1..=3600).contains(&self.firewall.confirm_seconds) {
            return Err(ConfigError::new(
                "firewall.confirm_seconds",
                self.firewall.confirm_seconds,
                "must be between 1 and 3600",
            ));
        }
        self.validate_ingest()?;
        self.validate_mail_and_access()?;
        self.validate_web()?;
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(ConfigError::new(
                "log.level",
                format!("{:?}", self.log.level),
                format!("not a tracing filter ({err}); use e.g. \"info\" or \"appliance=debug\""),
            ));
        }
        Ok(())
    }

    fn validate_ingest(&self) -> Result<(), ConfigError> {
        let ingest = &self.ingest;
        let listeners = [
            ("ingest.https_listen", Some(&ingest.https_listen)),
            ("ingest.mqtt_listen", ingest.mqtt_listen.as_ref()),
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
            (
                "ingest.max_body_bytes",
                ingest.max_body_bytes,
                1024,
                64 << 20,
            ),
            (
                "ingest.max_decoded_bytes",
                ingest.max_decoded_bytes,
                1024,
                256 << 20,
            ),
            (
                "ingest.max_batch_readings",
                ingest.max_batch_readings,
                1,
                100_000,
            ),
            (
                "ingest.group_commit_readings",
                ingest.group_commit_readings,
                1,
                1_000_000,
            ),
            ("ingest.http_workers", ingest.http_workers, 1, 64),
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
        if ingest.max_decoded_bytes < ingest.max_body_bytes {
            return Err(ConfigError::new(
                "ingest.max_decoded_bytes",
                ingest.max_decoded_bytes,
                "must be at least ingest.max_body_bytes",
            ));
        }
        if !(0..=7 * 24 * 3600).contains(&ingest.max_future_skew_seconds) {
            return Err(ConfigError::new(
                "ingest.max_future_skew_seconds",
                ingest.max_future_skew_seconds,
                "must be between 0 and 604800",
            ));
        }
        if let Some(days) = ingest.retention_days
            && !(1..=36_500).contains(&days)
        {
            return Err(ConfigError::new(
                "ingest.retention_days",
                days,
                "must be 1-36500, or unset to keep readings for ever",
            ));
        }
        if !(1..=86_400).contains(&ingest.retention_check_seconds) {
            return Err(ConfigError::new(
                "ingest.retention_check_seconds",
                ingest.retention_check_seconds,
                "must be 1-86400",
            ));
        }
        if !(1..=3600).contains(&ingest.silent_check_seconds) {
            return Err(ConfigError::new(
                "ingest.silent_check_seconds",
                ingest.silent_check_seconds,
                "must be between 1 and 3600",
            ));
        }
        if ingest.certificate.is_some() != ingest.private_key.is_some() {
            return Err(ConfigError::new(
                "ingest.certificate",
                format!("{:?}", ingest.certificate),
                "set ingest.certificate and ingest.private_key together, or neither",
            ));
        }
        let connectors = &ingest.connectors;
        if !(1..=1000).contains(&connectors.max_attempts) {
            return Err(ConfigError::new(
                "ingest.connectors.max_attempts",
                connectors.max_attempts,
                "must be between 1 and 1000",
            ));
        }
        if !(1..=86_400).contains(&connectors.max_backoff_seconds) {
            return Err(ConfigError::new(
                "ingest.connectors.max_backoff_seconds",
                connectors.max_backoff_seconds,
                "must be between 1 and 86400",
            ));
        }
        if !(1..=300).contains(&connectors.timeout_seconds) {
            return Err(ConfigError::new(
                "ingest.connectors.timeout_seconds",
                connectors.timeout_seconds,
                "must be between 1 and 300",
            ));
        }
        Ok(())
    }

    fn validate_mail_and_access(&self) -> Result<(), ConfigError> {
        let smtp = &self.smtp;
        if smtp.port == 0 {
            return Err(ConfigError::new("smtp.port", 0, "must be 1-65535"));
        }
        if !(1..=1000).contains(&smtp.max_attempts) {
            return Err(ConfigError::new(
                "smtp.max_attempts",
                smtp.max_attempts,
                "must be between 1 and 1000",
            ));
        }
        if smtp.from.parse::<url::Url>().is_ok() || !smtp.from.contains('@') {
            return Err(ConfigError::new(
                "smtp.from",
                format!("{:?}", smtp.from),
                "not an email address",
            ));
        }
        if smtp.username.is_some() != smtp.password.is_some() {
            return Err(ConfigError::new(
                "smtp.username",
                format!("{:?}", smtp.username),
                "set smtp.username and smtp.password together, or neither",
            ));
        }
        let access = &self.access;
        if !(1..=24 * 30).contains(&access.pending_hours) {
            return Err(ConfigError::new(
                "access.pending_hours",
                access.pending_hours,
                "must be between 1 and 720",
            ));
        }
        if !(1..=60).contains(&access.tick_seconds) {
            return Err(ConfigError::new(
                "access.tick_seconds",
                access.tick_seconds,
                "must be between 1 and 60",
            ));
        }
        if let Some(url) = &access.portal_url
            && !url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
        {
            return Err(ConfigError::new(
                "access.portal_url",
                format!("{url:?}"),
                "an https:// address, such as https://plantgate.example.com",
            ));
        }
        if let Some(url) = &access.signal_webhook {
            crate::connectors::check_url(url).map_err(|problem| {
                ConfigError::new(
                    "access.signal_webhook",
                    format!("{url:?}"),
                    problem.to_string(),
                )
            })?;
        }
        Ok(())
    }

    /// What links in emails start with.
    pub fn portal_url(&self) -> String {
        self.access
            .portal_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.web.host_name))
            .trim_end_matches('/')
            .to_owned()
    }

    /// The portal's certificate and key: made at first start, replaced by an administrator.
    pub fn portal_certificate(&self) -> crate::tls::CertificatePaths {
        crate::tls::CertificatePaths::in_dir(&self.data_dir.join("tls"), "portal")
    }

    /// The ingest listener's certificate and key.
    pub fn ingest_certificate(&self) -> crate::tls::CertificatePaths {
        match (&self.ingest.certificate, &self.ingest.private_key) {
            (Some(cert), Some(key)) => crate::tls::CertificatePaths {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => crate::tls::CertificatePaths::in_dir(&self.data_dir.join("tls"), "ingest"),
        }
    }

    /// Creates the data directory if needed and proves that it is writable.
    pub fn prepare_data_dir(&self) -> Result<(), ConfigError> {
        let dir = &self.data_dir;
        let unwritable = |err: std::io::Error| {
            ConfigError::new(
                "data_dir",
                format!("{:?}", dir.display().to_string()),
                format!("not a writable directory ({err})"),
            )
        };
        std::fs::create_dir_all(dir).map_err(unwritable)?;
        let probe = tempfile::NamedTempFile::new_in(dir).map_err(unwritable)?;
        probe.close().map_err(unwritable)
    }

    /// The database the store URL names; `sqlite://{data_dir}/plantgate.db` when unset.
    pub fn store_target(&self) -> Result<StoreTarget, ConfigError> {
        let Some(raw) = &self.store.url else {
            return Ok(StoreTarget::Sqlite(self.data_dir.join("plantgate.db")));
        };
        let allowed = "allowed: sqlite://PATH or postgres://USER@HOST[:PORT]/DATABASE";
        let shown = format!("{:?}", redact_url(raw));
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(ConfigError::new(
                    "store.url",
                    shown,
                    format!("no file path; {allowed}"),
                ));
            }
            return Ok(StoreTarget::Sqlite(PathBuf::from(path)));
        }
        match url::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => {
                Ok(StoreTarget::Postgres(raw.clone()))
            }
            Ok(url) => Err(ConfigError::new(
                "store.url",
                shown,
                format!("unsupported scheme `{}`; {allowed}", url.scheme()),
            )),
            Err(err) => Err(ConfigError::new(
                "store.url",
                shown,
                format!("not a URL ({err}); {allowed}"),
            )),
        }
    }

    fn validate_web(&self) -> Result<(), ConfigError> {
        let web = &self.web;
        let listens = std::iter::once(("web.https_listen", &web.https_listen))
            .chain(web.http_listen.iter().map(|l| ("web.http_listen", l)));
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
                web.session_absolute_minutes,
                1..=8 * 60,
            ),
            (
                "web.session_idle_minutes",
                web.session_idle_minutes,
                1..=8 * 60,
            ),
            ("web.lockout_attempts", web.lockout_attempts, 1..=100),
            ("web.lockout_minutes", web.lockout_minutes, 1..=24 * 60),
            ("web.password_min_chars", web.password_min_chars, 10..=128),
            ("web.logins_per_minute", web.logins_per_minute, 1..=10_000),
            (
                "web.refusal_summary_seconds",
                web.refusal_summary_seconds,
                1..=3600,
            ),
            (
                "web.api_requests_per_minute",
                web.api_requests_per_minute,
                1..=1_000_000,
            ),
            (
                "web.reauthenticate_seconds",
                web.reauthenticate_seconds,
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
        for role in &web.second_factor_roles {
            if role.parse::<crate::models::Role>().is_err() {
                return Err(ConfigError::new(
                    "web.second_factor_roles",
                    format!("{role:?}"),
                    "not a role; allowed: admin, approver, technician, viewer, auditor",
                ));
            }
        }
        if !(1024..=64 * 1024 * 1024).contains(&web.max_body_bytes) {
            return Err(ConfigError::new(
                "web.max_body_bytes",
                web.max_body_bytes,
                "must be between 1024 and 67108864",
            ));
        }
        if !((1 << 20)..=(8 << 30)).contains(&web.max_firmware_bytes) {
            return Err(ConfigError::new(
                "web.max_firmware_bytes",
                web.max_firmware_bytes,
                "must be between 1048576 (1 MiB) and 8589934592 (8 GiB)",
            ));
        }
        Ok(())
    }

    /// The machine network; grants may only lead into it.
    pub fn device_network(&self) -> Result<ipnet::Ipv4Net, ConfigError> {
        self.network
            .device_network
            .parse::<ipnet::Ipv4Net>()
            .map(|net| net.trunc())
            .map_err(|_| {
                ConfigError::new(
                    "network.device_network",
                    format!("{:?}", self.network.device_network),
                    "not an IPv4 network in CIDR form, such as 192.168.50.0/24",
                )
            })
    }

    pub fn firewall_socket(&self) -> PathBuf {
        self.firewall
            .socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("firewall.sock"))
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// A rendering of the effective configuration with secrets removed.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.store.url = self.store_target().ok().map(|target| target.redacted());
        if shown.smtp.password.is_some() {
            shown.smtp.password = Some("REDACTED".to_owned());
        }
        toml::to_string(&shown).unwrap_or_else(|err| format!("# cannot render config: {err}"))
    }
}

/// Linux interface names: at most 15 bytes, no slashes, spaces or colons.
pub fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Replaces the password of a URL, if any, so that it can be printed.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one, which this has.
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

fn from_figment(err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = err.path.clone();
    let (value, problem) = match &err.kind {
        Kind::UnknownField(field, allowed) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            (
                None,
                format!("unknown key; allowed here: {}", allowed.join(", ")),
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            (Some(actual.to_string()), format!("expected {expected}"))
        }
        Kind::UnknownVariant(actual, allowed) => (
            Some(format!("{actual:?}")),
            format!("allowed: {}", allowed.join(", ")),
        ),
        // TOML syntax errors span several lines; the first names the place.
        Kind::Message(message) => (
            None,
            message
                .lines()
                .next()
                .unwrap_or("invalid")
                .trim()
                .to_owned(),
        ),
        other => (None, other.to_string()),
    };
    let origin = err.metadata.as_ref().map(|meta| match &meta.source {
        Some(figment::Source::File(file)) => file.display().to_string(),
        // The environment provider's own naming drops the prefix; name the real variable.
        _ if meta.name.contains("environment") => {
            format!("{ENV_PREFIX}{}", path.join("__").to_uppercase())
        }
        _ => meta.name.to_string(),
    });
    ConfigError {
        key: if path.is_empty() {
            "config file".to_owned()
        } else {
            path.join(".")
        },
        value,
        problem,
        origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_url_with_a_password_is_never_printed_in_errors() {
        let mut config = Config::default();
        config.store.url = Some("mysql://admin:hunter2@db/plantgate".to_owned());
        let err = config.store_target().expect_err("mysql is not supported");
        let line = err.to_string();
        assert!(line.contains("unsupported scheme `mysql`"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[test]
    fn unset_store_url_means_sqlite_in_the_data_dir() {
        let config = Config {
            data_dir: PathBuf::from("/srv/pg"),
            ..Config::default()
        };
        assert_eq!(
            config.store_target(),
            Ok(StoreTarget::Sqlite(PathBuf::from("/srv/pg/plantgate.db")))
        );
    }

    #[test]
    fn redacted_toml_hides_the_database_password() {
        let mut config = Config::default();
        config.store.url = Some("postgres://plantgate:s3cret@127.0.0.1/pg".to_owned());
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("[store]"), "{shown}");
    }
}
