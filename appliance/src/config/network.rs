//! `[network]` and `[firewall]`: the appliance's two ports and the machine network behind
//! one of them, and what the firewall lets through besides grants.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::values::PortRange;

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

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            uplink_interface: "eth0".to_owned(),
            device_interface: "eth1".to_owned(),
            device_network: "192.168.50.0/24".to_owned(),
        }
    }
}

impl NetworkConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("network.uplink_interface", &self.uplink_interface),
            ("network.device_interface", &self.device_interface),
        ] {
            if !is_interface_name(name) {
                return Err(ConfigError::new(
                    key,
                    format!("{name:?}"),
                    "not an interface name (1-15 of A-Z a-z 0-9 . _ -)",
                ));
            }
        }
        if self.uplink_interface == self.device_interface {
            return Err(ConfigError::new(
                "network.device_interface",
                format!("{:?}", self.device_interface),
                "must differ from network.uplink_interface",
            ));
        }
        self.device_network()?;
        Ok(())
    }

    /// The machine network; grants may only lead into it.
    pub(super) fn device_network(&self) -> Result<ipnet::Ipv4Net, ConfigError> {
        self.device_network
            .parse::<ipnet::Ipv4Net>()
            .map(|net| net.trunc())
            .map_err(|_| {
                ConfigError::new(
                    "network.device_network",
                    format!("{:?}", self.device_network),
                    "not an IPv4 network in CIDR form, such as 192.168.50.0/24",
                )
            })
    }
}

/// Linux interface names: at most 15 bytes, no slashes, spaces or colons.
pub fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
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

impl FirewallConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, ports) in [
            ("firewall.portal_ports", &self.portal_ports),
            ("firewall.ingest_ports", &self.ingest_ports),
        ] {
            if ports.is_empty() || ports.contains(&0) {
                return Err(ConfigError::new(
                    key,
                    format!("{ports:?}"),
                    "a non-empty list of ports 1-65535",
                ));
            }
        }
        for entry in &self.outbound {
            PortRange::parse(entry).map_err(|problem| {
                ConfigError::new("firewall.outbound", format!("{entry:?}"), problem)
            })?;
        }
        if !(1..=1024).contains(&self.max_ports_per_grant) {
            return Err(ConfigError::new(
                "firewall.max_ports_per_grant",
                self.max_ports_per_grant,
                "must be between 1 and 1024",
            ));
        }
        if !(1..=7 * 24 * 60).contains(&self.max_grant_minutes) {
            return Err(ConfigError::new(
                "firewall.max_grant_minutes",
                self.max_grant_minutes,
                "must be between 1 and 10080",
            ));
        }
        if !(1..=3600).contains(&self.reconcile_seconds) {
            return Err(ConfigError::new(
                "firewall.reconcile_seconds",
                self.reconcile_seconds,
                "must be between 1 and 3600",
            ));
        }
        // Renewal runs on a one-second tick every third of the lease: below 3 s a busy
        // moment could let it lapse; above 10 minutes a revoke would not hold in any sense.
        if !(3..=600).contains(&self.lease_seconds) {
            return Err(ConfigError::new(
                "firewall.lease_seconds",
                self.lease_seconds,
                "must be between 3 and 600",
            ));
        }
        if !(1..=3600).contains(&self.confirm_seconds) {
            return Err(ConfigError::new(
                "firewall.confirm_seconds",
                self.confirm_seconds,
                "must be between 1 and 3600",
            ));
        }
        Ok(())
    }
}
