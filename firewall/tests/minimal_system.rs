//! The appliance image is a minimal system: it has no `/etc/protocols` (Debian's `netbase`
//! is not installed), and nft refuses a whole table that names a protocol it can only find
//! there. The image test saw the controller fail every start that way ("Could not resolve
//! protocol name") while this machine, which has the file, passed. Here the controller runs
//! with `/etc/protocols` hidden behind a private bind mount of an empty file, in a network
//! namespace with real nftables, and must apply its whole table, grants of both protocols
//! and a forwarded one included. Needs root.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use std::process::Command;

use common::*;

/// `command` run in a mount namespace of its own where `/etc/protocols` reads as empty.
fn without_protocols_file(command: &Command) -> Command {
    let mut hidden = Command::new("unshare");
    hidden
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind /dev/null /etc/protocols && exec \"$@\"")
        .arg("sh")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => hidden.env(key, value),
            None => hidden.env_remove(key),
        };
    }
    hidden
}

#[test]
fn the_whole_table_applies_without_etc_protocols() {
    require_root();
    let mut t = Topology::new();
    // EtherNet/IP opens TCP and UDP ports; a forwarded grant adds the DNAT maps' elements.
    t.open_grant(REQUESTER, DEVICE, "ethernet-ip", 600)
        .expect("grant");
    t.open_forwarded_grant(OTHER_REQUESTER, OTHER_DEVICE, "s7", 600, Some(10102))
        .expect("forwarded grant");

    // The check is real: with the file hidden, nft cannot resolve a name only it knows.
    let probe = without_protocols_file(Command::new("getent").args(["protocols", "ipv6-icmp"]))
        .output()
        .expect("getent");
    assert!(
        !probe.status.success(),
        "/etc/protocols is still readable inside the mount namespace"
    );

    let output = without_protocols_file(&t.firewall_command(&["reconcile"]))
        .output()
        .expect("run plantgate-firewall reconcile");
    assert!(
        output.status.success(),
        "the controller could not apply its table without /etc/protocols: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // What it applied is the whole table: the IPv6 neighbour discovery rules, and the
    // grants' elements of both protocols.
    let listing = t.table_listing();
    assert!(
        listing.contains("nd-neighbor-solicit"),
        "no neighbour discovery rule in the table:\n{listing}"
    );
    for element in ["tcp . 44818", "udp . 2222", "10102"] {
        assert!(
            listing.contains(element),
            "no element `{element}` in the table:\n{listing}"
        );
    }

    // And the controller as a daemon starts and answers there too.
    t.start_daemon_command(without_protocols_file(&t.firewall_command(&["run"])), &[]);
    t.poke().expect("the running controller reconciles");
}
