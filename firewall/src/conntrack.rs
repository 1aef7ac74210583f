//! Removing conntrack entries, so that a revoked grant leaves no established state behind.
//!
//! The entries are matched on the reply tuple's source, which is the device and its port
//! whether or not the connection was port-forwarded.

use std::process::Command;

use appliance::grants::Pinhole;

use crate::{FirewallError, Result};

/// Deletes the conntrack entries of `pinhole` and returns how many there were.
pub fn cut(pinhole: &Pinhole) -> Result<u32> {
    let output = Command::new("conntrack")
        .args(["-D", "-p", pinhole.protocol.as_str(), "-s"])
        .arg(pinhole.requester.to_string())
        .arg("--reply-src")
        .arg(pinhole.device.to_string())
        .arg("--reply-port-src")
        .arg(pinhole.port.to_string())
        .output()
        .map_err(|err| FirewallError::Conntrack(format!("cannot run conntrack: {err}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // conntrack reports "conntrack v1.4.7 (conntrack-tools): N flow entries have been
    // deleted." and exits 1 when N is 0.
    let deleted = stderr
        .lines()
        .filter(|line| line.contains("deleted"))
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words
                .windows(2)
                .find(|pair| pair[1] == "flow")
                .and_then(|pair| pair[0].parse::<u32>().ok())
        });
    match deleted {
        Some(n) => Ok(n),
        None if output.status.success() => Ok(0),
        None => Err(FirewallError::Conntrack(stderr.trim().to_owned())),
    }
}
