//! Applying and reading the table through `nft -j`, via the nftables crate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use appliance::grants::{Pinhole, Protocol};
use nftables::helper;
use nftables::schema::Nftables;
use serde_json::Value;

use crate::ruleset::{FORWARD_ADDRS, ForwardKey, GRANTS, TABLE};
use crate::{FirewallError, Result};

/// Applies `batch` as one transaction. nft 1.0.6 crashes reading JSON from standard
/// input (the crate's helper does that), so the batch goes through a private temp file, and
/// nft's own explanation reaches the error.
pub fn apply(batch: &Nftables) -> Result<()> {
    use std::io::Write;
    let failed = |err: &dyn std::fmt::Display| FirewallError::Nft(err.to_string());
    let mut file = tempfile::NamedTempFile::new().map_err(|e| failed(&e))?;
    serde_json::to_writer(&mut file, batch).map_err(|e| failed(&e))?;
    file.flush().map_err(|e| failed(&e))?;
    let child = std::process::Command::new("nft")
        .args(["-j", "-f"])
        .arg(file.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| FirewallError::Nft(format!("cannot run nft: {err}")))?;
    // So the drift watcher does not take our own transaction for someone else's.
    crate::monitor::note_own_transaction(child.id());
    let output = child
        .wait_with_output()
        .map_err(|err| FirewallError::Nft(format!("cannot run nft: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.lines().next().unwrap_or("").trim();
        Err(FirewallError::Nft(format!(
            "{reason} (exit status {})",
            output.status
        )))
    }
}

/// The live table as `nft -j` lists it, or `None` when it does not exist.
pub fn list_table() -> Result<Option<Value>> {
    let list = |args: &[&str]| -> Result<Value> {
        let raw = helper::get_current_ruleset_raw(helper::DEFAULT_NFT, args)
            .map_err(|err| FirewallError::Nft(err.to_string()))?;
        serde_json::from_str(&raw).map_err(|err| FirewallError::Nft(err.to_string()))
    };
    // Listing a missing table is an error that nft does not tell apart; ask first.
    let tables = list(&["-j", "list", "tables"])?;
    let ours = tables
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|object| {
            object.get("table").is_some_and(|t| {
                t.get("family") == Some(&Value::from("inet"))
                    && t.get("name") == Some(&Value::from(TABLE))
            })
        });
    if ours {
        list(&["-j", "list", "table", "inet", TABLE]).map(Some)
    } else {
        Ok(None)
    }
}

/// The table's shape with everything that changes on its own removed: handles, set
/// elements, counter values. Two listings with equal shapes enforce the same rules.
pub fn shape(listing: &Value) -> Value {
    fn strip(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(key, _)| {
                        !matches!(
                            key.as_str(),
                            "handle" | "elem" | "packets" | "bytes" | "metainfo"
                        )
                    })
                    .map(|(key, value)| (key.clone(), strip(value)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .filter(|item| item.get("metainfo").is_none())
                    .map(strip)
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    strip(listing)
}

/// The keys of the grants set and of the forward-address map, as the kernel holds them now.
/// The grant elements in a listing, each with the seconds its timeout has left (when the
/// kernel reports it), and the forwarded addresses.
pub fn elements(listing: &Value) -> (BTreeMap<Pinhole, Option<u64>>, BTreeSet<ForwardKey>) {
    let objects = listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let mut pinholes = BTreeMap::new();
    let mut forwards = BTreeSet::new();
    for body in objects.filter_map(|o| o.get("set").or_else(|| o.get("map"))) {
        let name = body.get("name").and_then(Value::as_str);
        for elem in body
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // A map element is [key, value]; a key with a timeout is {"elem": {"val": ...}}.
            let key = if elem.is_array() {
                elem.get(0).unwrap_or(&Value::Null)
            } else {
                elem
            };
            let expires = key
                .get("elem")
                .and_then(|e| e.get("expires"))
                .and_then(Value::as_u64);
            let key = key.get("elem").and_then(|e| e.get("val")).unwrap_or(key);
            let parts: Vec<&Value> = key
                .get("concat")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect();
            match (name, parts.as_slice()) {
                (Some(GRANTS), [requester, device, protocol, port]) => {
                    if let (Some(requester), Some(device), Some(protocol), Some(port)) = (
                        addr(requester),
                        addr(device),
                        proto(protocol),
                        port_of(port),
                    ) {
                        pinholes.insert(
                            Pinhole {
                                requester,
                                device,
                                protocol,
                                port,
                            },
                            expires,
                        );
                    }
                }
                (Some(FORWARD_ADDRS), [requester, protocol, port]) => {
                    if let (Some(requester), Some(protocol), Some(port)) =
                        (addr(requester), proto(protocol), port_of(port))
                    {
                        forwards.insert((requester, protocol, port));
                    }
                }
                _ => {}
            }
        }
    }
    (pinholes, forwards)
}

fn addr(value: &Value) -> Option<Ipv4Addr> {
    value.as_str()?.parse().ok()
}

/// The protocol of an element. nft prints it by name ("tcp") or, with other kernels and
/// nft builds (Debian bookworm's 6.1 kernel on the image), by number (6): both are the
/// same element, and an element not recognised is one the controller can never remove.
fn proto(value: &Value) -> Option<Protocol> {
    let number = value
        .as_u64()
        .or_else(|| value.as_str().and_then(|text| text.parse().ok()));
    match (value.as_str(), number) {
        (Some("tcp"), _) | (_, Some(6)) => Some(Protocol::Tcp),
        (Some("udp"), _) | (_, Some(17)) => Some(Protocol::Udp),
        _ => None,
    }
}

fn port_of(value: &Value) -> Option<u16> {
    value.as_u64().and_then(|p| u16::try_from(p).ok())
}

/// The named drop counters and their packet counts.
pub fn drop_counters(listing: &Value) -> Vec<(String, u64)> {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|object| {
            let counter = object.get("counter")?;
            Some((
                counter.get("name")?.as_str()?.to_owned(),
                counter.get("packets")?.as_u64()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant element as `nft -j list table` gives it, with the protocol as `protocol`.
    fn listing(protocol: Value) -> Value {
        serde_json::json!({"nftables": [{"set": {"name": GRANTS, "elem": [{"elem": {
            "val": {"concat": ["10.77.0.1", "192.168.50.20", protocol, 4840]},
            "timeout": 1800, "expires": 1690
        }}]}}]})
    }

    #[test]
    fn an_element_is_recognised_whether_its_protocol_is_a_name_or_a_number() {
        let want = Pinhole {
            requester: Ipv4Addr::new(10, 77, 0, 1),
            device: Ipv4Addr::new(192, 168, 50, 20),
            protocol: Protocol::Tcp,
            port: 4840,
        };
        for protocol in [Value::from("tcp"), Value::from(6), Value::from("6")] {
            let (pinholes, _) = elements(&listing(protocol.clone()));
            assert_eq!(
                pinholes.into_iter().collect::<Vec<_>>(),
                vec![(want, Some(1690))],
                "{protocol}"
            );
        }
        let (pinholes, _) = elements(&listing(Value::from(17)));
        assert!(pinholes.keys().all(|p| p.protocol == Protocol::Udp) && pinholes.len() == 1);
    }
}
