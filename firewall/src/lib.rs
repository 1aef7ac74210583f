//! The firewall controller: the only code in Plantgate that talks to nftables.
//!
//! It owns one table, `inet plantgate`, rendered from a typed [`ruleset::Policy`] and the
//! live grants in the store. Every change is one nftables transaction: the whole table is
//! replaced, or a batch of set elements is added and deleted at once.

pub mod conntrack;
pub mod controller;
pub mod management;
pub mod monitor;
pub mod nft;
pub mod ruleset;
pub mod text;

/// The controller's error: what went wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Appliance(#[from] appliance::Error),
    #[error("interface {name:?} ({key}) does not exist on this machine")]
    NoSuchInterface { key: &'static str, name: String },
    #[error("nft failed: {0}")]
    Nft(String),
    #[error("conntrack failed: {0}")]
    Conntrack(String),
    #[error("cannot keep the confirmed management settings: {0}")]
    ConfirmedSettings(std::io::Error),
    #[error("control socket {path}: {source}")]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = FirewallError> = std::result::Result<T, E>;
