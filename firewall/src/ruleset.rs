//! The ruleset as a typed model, rendered to nftables objects.
//!
//! Forwarding between uplink and device is default drop. A packet crosses only when its
//! (requester, device, protocol, device port) is an element of the `grants` set. The lookup
//! runs for every forwarded packet, not only new connections, so deleting an element (revoke)
//! or its timeout running out (expiry) stops an established flow at the next packet. It is
//! pinned to the conntrack direction, so a device cannot originate a flow that rides a grant.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use appliance::config::{Config, StoreTarget};
use appliance::grants::{Pinhole, PortRange, Protocol};
use nftables::expr::{
    CT, Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, SetItem,
};
use nftables::schema::{
    Chain, Counter as CounterObject, Element, FlushObject, Map, NfCmd, NfListObject, NfObject,
    Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Counter, Limit, Log, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::{FirewallError, Result};

mod ipv6;

pub const TABLE: &str = "plantgate";
pub const GRANTS: &str = "grants";
/// The controller's lease: one element (the uplink's name) with a short timeout that the
/// running controller keeps renewing. Every grant lookup needs it as well.
pub const LEASE: &str = "lease";
/// Port forwards: (requester, protocol, uplink port) to the device's address, and to its port.
pub const FORWARD_ADDRS: &str = "forward_addrs";
pub const FORWARD_PORTS: &str = "forward_ports";

/// Why a packet was dropped; each has a named counter and a rate-limited log prefix.
pub const DROP_REASONS: [&str; 6] = [
    "invalid",
    "input_uplink",
    "input_device",
    "input_other",
    "forward",
    "output",
];

/// What the table allows besides grants, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub uplink: String,
    pub device: String,
    pub portal_ports: Vec<u16>,
    pub ingest_ports: Vec<u16>,
    pub ssh: bool,
    pub device_dhcp: bool,
    pub device_ntp: bool,
    pub outbound: Vec<PortRange>,
    pub icmp_echo_per_second: u32,
    /// How long the pinholes stay open after the controller's last renewal.
    pub lease_seconds: u32,
}

impl Policy {
    pub fn from_config(config: &Config) -> Result<Policy> {
        let mut outbound = Vec::new();
        for entry in &config.firewall.outbound {
            outbound.push(
                PortRange::parse(entry)
                    .map_err(|problem| appliance::Error::invalid("firewall.outbound", problem))?,
            );
        }
        // A PostgreSQL store elsewhere must stay reachable, or the controller locks itself out.
        if let Ok(StoreTarget::Postgres(url)) = config.store_target() {
            let port = url::Url::parse(&url)
                .ok()
                .and_then(|u| u.port())
                .unwrap_or(5432);
            outbound.push(PortRange {
                protocol: Protocol::Tcp,
                first: port,
                last: port,
            });
        }
        outbound.sort();
        outbound.dedup();
        Ok(Policy {
            uplink: config.network.uplink_interface.clone(),
            device: config.network.device_interface.clone(),
            portal_ports: config.firewall.portal_ports.clone(),
            ingest_ports: config.firewall.ingest_ports.clone(),
            ssh: config.firewall.ssh,
            device_dhcp: config.firewall.device_dhcp,
            device_ntp: config.firewall.device_ntp,
            outbound,
            icmp_echo_per_second: config.firewall.icmp_echo_per_second,
            lease_seconds: u32::try_from(config.firewall.lease_seconds).unwrap_or(u32::MAX),
        })
    }

    /// Refuses interfaces this machine does not have, before anything is applied.
    pub fn check_interfaces(&self) -> Result<()> {
        for (key, name) in [
            ("network.uplink_interface", &self.uplink),
            ("network.device_interface", &self.device),
        ] {
            if !std::path::Path::new("/sys/class/net").join(name).exists() {
                return Err(FirewallError::NoSuchInterface {
                    key,
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// An uplink port forwarded to a device port, for one requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortForward {
    pub requester: Ipv4Addr,
    pub protocol: Protocol,
    pub uplink_port: u16,
    pub device: Ipv4Addr,
    pub device_port: u16,
    pub timeout_seconds: u32,
}

/// What identifies a forward in the kernel's maps.
pub type ForwardKey = (Ipv4Addr, Protocol, u16);

impl PortForward {
    pub fn key(&self) -> ForwardKey {
        (self.requester, self.protocol, self.uplink_port)
    }
}

/// A grant's pinhole with the seconds it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimedPinhole {
    pub pinhole: Pinhole,
    pub timeout_seconds: u32,
}

// Small constructors, so that rules below read close to nft syntax.

fn s(text: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(text.to_owned()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &str, name: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_owned()),
            field: Cow::Owned(name.to_owned()),
        },
    )))
}

fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Owned(key.to_owned()),
        family: None,
        dir: None,
    }))
}

fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

fn set_of(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_in(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::IN,
    })
}

fn ports(list: &[u16]) -> Expression<'static> {
    set_of(
        list.iter()
            .map(|p| Expression::Number(u32::from(*p)))
            .collect(),
    )
}

fn ip(addr: Ipv4Addr) -> Expression<'static> {
    s(&addr.to_string())
}

/// The packet's key in the grants set: uplink side first, then device side.
fn grant_key(uplink_addr: &str, device_addr: &str, device_port: &str) -> Expression<'static> {
    concat(vec![
        field("ip", uplink_addr),
        field("ip", device_addr),
        meta(MetaKey::L4proto),
        field("th", device_port),
    ])
}

/// A rate-limited log line followed by a counted drop: two rules sharing `matches`.
fn logged_drop(matches: Vec<Statement<'static>>, reason: &str) -> [Vec<Statement<'static>>; 2] {
    let mut log = matches.clone();
    log.push(Statement::Limit(Limit {
        rate: 10,
        rate_unit: None,
        per: Some(Cow::Borrowed("minute")),
        burst: Some(5),
        burst_unit: None,
        inv: None,
    }));
    log.push(Statement::Log(Some(Log {
        prefix: Some(Cow::Owned(format!("plantgate drop {reason}: "))),
        group: None,
        snaplen: None,
        queue_threshold: None,
        level: None,
        flags: None,
    })));
    let mut drop = matches;
    drop.push(Statement::Counter(Counter::Named(Cow::Owned(format!(
        "drop_{reason}"
    )))));
    drop.push(Statement::Drop(None));
    [log, drop]
}

fn accept(mut matches: Vec<Statement<'static>>) -> Vec<Statement<'static>> {
    matches.push(Statement::Accept(None));
    matches
}

fn base_chain(
    name: &str,
    chain_type: NfChainType,
    hook: NfHook,
    prio: i32,
    policy: NfChainPolicy,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_owned()),
        _type: Some(chain_type),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(policy),
        ..Default::default()
    })
}

/// The table's sets, counters, chains and rules: everything but the grants themselves.
pub fn table_objects(policy: &Policy) -> Vec<NfListObject<'static>> {
    let uplink = || is(meta(MetaKey::Iifname), s(&policy.uplink));
    let device = || is(meta(MetaKey::Iifname), s(&policy.device));
    let tcp = || is(meta(MetaKey::L4proto), s("tcp"));
    let udp = || is(meta(MetaKey::L4proto), s("udp"));
    let invalid = || is_in(ct("state"), s("invalid"));

    let mut objects = vec![NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    })];
    objects.push(NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(GRANTS),
        set_type: SetTypeValue::Concatenated(Cow::Owned(vec![
            SetType::Ipv4Addr,
            SetType::Ipv4Addr,
            SetType::InetProto,
            SetType::InetService,
        ])),
        flags: Some(HashSet::from([SetFlag::Timeout])),
        ..Default::default()
    })));
    // A killed controller, or one that cannot read the store, stops renewing this element:
    // within the lease every grant lookup fails, so a revoke it never applied still holds.
    objects.push(NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(LEASE),
        set_type: SetTypeValue::Single(SetType::Ifname),
        flags: Some(HashSet::from([SetFlag::Timeout])),
        ..Default::default()
    })));
    // Two plain maps rather than one with concatenated data: nft 1.0.6 crashes parsing the
    // JSON of a `dnat ... map` whose data is a concatenation.
    for (name, data) in [
        (FORWARD_ADDRS, SetType::Ipv4Addr),
        (FORWARD_PORTS, SetType::InetService),
    ] {
        objects.push(NfListObject::Map(Box::new(Map {
            family: NfFamily::INet,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(name),
            set_type: SetTypeValue::Concatenated(Cow::Owned(vec![
                SetType::Ipv4Addr,
                SetType::InetProto,
                SetType::InetService,
            ])),
            map: SetTypeValue::Single(data),
            flags: Some(HashSet::from([SetFlag::Timeout])),
            ..Default::default()
        })));
    }
    for reason in DROP_REASONS {
        objects.push(NfListObject::Counter(CounterObject {
            family: NfFamily::INet,
            table: Cow::Borrowed(TABLE),
            name: Cow::Owned(format!("drop_{reason}")),
            ..Default::default()
        }));
    }

    let mut rules: Vec<(&str, Vec<Statement<'static>>)> = Vec::new();

    // input: the portal from uplink, the ingest from device, little else.
    objects.push(base_chain(
        "input",
        NfChainType::Filter,
        NfHook::Input,
        0,
        NfChainPolicy::Drop,
    ));
    rules.push(("input", accept(vec![is(meta(MetaKey::Iifname), s("lo"))])));
    for rule in logged_drop(vec![invalid()], "invalid") {
        rules.push(("input", rule));
    }
    rules.push((
        "input",
        accept(vec![is_in(
            ct("state"),
            set_of(vec![s("established"), s("related")]),
        )]),
    ));
    for rule in ipv6::neighbour_discovery(policy, ipv6::Direction::In) {
        rules.push(("input", rule));
    }
    rules.push((
        "input",
        accept(vec![
            uplink(),
            tcp(),
            is_in(field("th", "dport"), ports(&policy.portal_ports)),
        ]),
    ));
    rules.push((
        "input",
        vec![
            uplink(),
            is(meta(MetaKey::L4proto), s("icmp")),
            is(field("icmp", "type"), s("echo-request")),
            Statement::Limit(Limit {
                rate: policy.icmp_echo_per_second,
                rate_unit: None,
                per: Some(Cow::Borrowed("second")),
                burst: Some(5),
                burst_unit: None,
                inv: None,
            }),
            Statement::Accept(None),
        ],
    ));
    rules.push(("input", ipv6::icmpv6_echo(policy)));
    if policy.ssh {
        rules.push((
            "input",
            accept(vec![
                uplink(),
                tcp(),
                is(field("th", "dport"), Expression::Number(22)),
            ]),
        ));
    }
    rules.push((
        "input",
        accept(vec![
            device(),
            tcp(),
            is_in(field("th", "dport"), ports(&policy.ingest_ports)),
        ]),
    ));
    if policy.device_dhcp {
        rules.push((
            "input",
            accept(vec![
                device(),
                udp(),
                is(field("th", "dport"), Expression::Number(67)),
            ]),
        ));
    }
    if policy.device_ntp {
        rules.push((
            "input",
            accept(vec![
                device(),
                udp(),
                is(field("th", "dport"), Expression::Number(123)),
            ]),
        ));
    }
    for (matches, reason) in [
        (vec![uplink()], "input_uplink"),
        (vec![device()], "input_device"),
        (vec![], "input_other"),
    ] {
        for rule in logged_drop(matches, reason) {
            rules.push(("input", rule));
        }
    }

    // forward: only packets of live grants, in both directions, every packet.
    objects.push(base_chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
        NfChainPolicy::Drop,
    ));
    for rule in logged_drop(vec![invalid()], "invalid") {
        rules.push(("forward", rule));
    }
    let grants = s(&format!("@{GRANTS}"));
    let lease = s(&format!("@{LEASE}"));
    rules.push((
        "forward",
        accept(vec![
            uplink(),
            is(meta(MetaKey::Oifname), s(&policy.device)),
            is(meta(MetaKey::Iifname), lease.clone()),
            is(ct("direction"), s("original")),
            is(grant_key("saddr", "daddr", "dport"), grants.clone()),
        ]),
    ));
    rules.push((
        "forward",
        accept(vec![
            device(),
            is(meta(MetaKey::Oifname), s(&policy.uplink)),
            is(meta(MetaKey::Oifname), lease),
            is(ct("direction"), s("reply")),
            is(grant_key("daddr", "saddr", "sport"), grants),
        ]),
    ));
    for rule in logged_drop(vec![], "forward") {
        rules.push(("forward", rule));
    }

    // output: what the appliance itself needs, on uplink.
    objects.push(base_chain(
        "output",
        NfChainType::Filter,
        NfHook::Output,
        0,
        NfChainPolicy::Drop,
    ));
    rules.push(("output", accept(vec![is(meta(MetaKey::Oifname), s("lo"))])));
    rules.push((
        "output",
        accept(vec![is_in(
            ct("state"),
            set_of(vec![s("established"), s("related")]),
        )]),
    ));
    for rule in ipv6::neighbour_discovery(policy, ipv6::Direction::Out) {
        rules.push(("output", rule));
    }
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let wanted: Vec<Expression<'static>> = policy
            .outbound
            .iter()
            .filter(|range| range.protocol == protocol)
            .map(|range| {
                if range.first == range.last {
                    Expression::Number(u32::from(range.first))
                } else {
                    Expression::Range(Box::new(nftables::expr::Range {
                        range: [
                            Expression::Number(u32::from(range.first)),
                            Expression::Number(u32::from(range.last)),
                        ],
                    }))
                }
            })
            .collect();
        if !wanted.is_empty() {
            rules.push((
                "output",
                accept(vec![
                    is(meta(MetaKey::Oifname), s(&policy.uplink)),
                    is(meta(MetaKey::L4proto), s(protocol.as_str())),
                    is_in(field("th", "dport"), set_of(wanted)),
                ]),
            ));
        }
    }
    if policy.device_dhcp {
        rules.push((
            "output",
            accept(vec![
                is(meta(MetaKey::Oifname), s(&policy.device)),
                udp(),
                is(field("th", "sport"), Expression::Number(67)),
            ]),
        ));
    }
    for rule in logged_drop(vec![], "output") {
        rules.push(("output", rule));
    }

    // nat: forwarded uplink ports reach their device; machines see the appliance as the
    // source, so they need no route back.
    objects.push(base_chain(
        "prerouting",
        NfChainType::NAT,
        NfHook::Prerouting,
        -100,
        NfChainPolicy::Accept,
    ));
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let key = || {
            concat(vec![
                field("ip", "saddr"),
                meta(MetaKey::L4proto),
                field(protocol.as_str(), "dport"),
            ])
        };
        let lookup = |data: &str| {
            Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
                key: key(),
                data: s(&format!("@{data}")),
            })))
        };
        rules.push((
            "prerouting",
            vec![
                uplink(),
                is(meta(MetaKey::L4proto), s(protocol.as_str())),
                Statement::DNAT(Some(NAT {
                    addr: Some(lookup(FORWARD_ADDRS)),
                    family: Some(NATFamily::IP),
                    port: Some(lookup(FORWARD_PORTS)),
                    flags: None,
                })),
            ],
        ));
    }
    objects.push(base_chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
        NfChainPolicy::Accept,
    ));
    rules.push((
        "postrouting",
        vec![
            is(meta(MetaKey::Oifname), s(&policy.device)),
            Statement::Masquerade(None),
        ],
    ));

    objects.extend(rules.into_iter().map(|(chain, expr)| {
        NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: Cow::Borrowed(TABLE),
            chain: Cow::Owned(chain.to_owned()),
            expr: Cow::Owned(expr),
            ..Default::default()
        })
    }));
    objects
}

fn pinhole_key(p: &Pinhole) -> Expression<'static> {
    concat(vec![
        ip(p.requester),
        ip(p.device),
        s(p.protocol.as_str()),
        Expression::Number(u32::from(p.port)),
    ])
}

fn forward_key(key: &ForwardKey) -> Expression<'static> {
    concat(vec![
        ip(key.0),
        s(key.1.as_str()),
        Expression::Number(u32::from(key.2)),
    ])
}

fn timed(val: Expression<'static>, timeout_seconds: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(val),
        timeout: Some(timeout_seconds.max(1)),
        expires: None,
        comment: None,
        counter: None,
    }))
}

fn elements(name: &'static str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        elem: Cow::Owned(elem),
    })
}

/// The grant set's elements and both forward maps' elements, for adding.
fn additions(pinholes: &[TimedPinhole], forwards: &[PortForward]) -> Vec<NfObject<'static>> {
    let mut objects = Vec::new();
    if !pinholes.is_empty() {
        objects.push(elements(
            GRANTS,
            pinholes
                .iter()
                .map(|t| timed(pinhole_key(&t.pinhole), t.timeout_seconds))
                .collect(),
        ));
    }
    if !forwards.is_empty() {
        let entry = |f: &PortForward, value: Expression<'static>| {
            Expression::List(vec![timed(forward_key(&f.key()), f.timeout_seconds), value])
        };
        objects.push(elements(
            FORWARD_ADDRS,
            forwards.iter().map(|f| entry(f, ip(f.device))).collect(),
        ));
        objects.push(elements(
            FORWARD_PORTS,
            forwards
                .iter()
                .map(|f| entry(f, Expression::Number(u32::from(f.device_port))))
                .collect(),
        ));
    }
    objects
        .into_iter()
        .map(|object| NfObject::CmdObject(NfCmd::Add(object)))
        .collect()
}

/// One transaction that replaces the whole table, grants included. `add` before `delete`
/// makes it work whether or not the table exists; the kernel applies all or nothing.
pub fn replace_table(
    policy: &Policy,
    pinholes: &[TimedPinhole],
    forwards: &[PortForward],
) -> Nftables<'static> {
    let table = || {
        NfListObject::Table(Table {
            family: NfFamily::INet,
            name: Cow::Borrowed(TABLE),
            handle: None,
        })
    };
    let mut commands = vec![
        NfObject::CmdObject(NfCmd::Add(table())),
        NfObject::CmdObject(NfCmd::Delete(table())),
    ];
    commands.extend(
        table_objects(policy)
            .into_iter()
            .map(|object| NfObject::CmdObject(NfCmd::Add(object))),
    );
    commands.extend(additions(pinholes, forwards));
    commands.push(NfObject::CmdObject(NfCmd::Add(lease_element(policy))));
    Nftables {
        objects: Cow::Owned(commands),
    }
}

fn lease_element(policy: &Policy) -> NfListObject<'static> {
    elements(LEASE, vec![timed(s(&policy.uplink), policy.lease_seconds)])
}

/// One transaction that renews the lease: emptied and filled again, so it works whether
/// the element is there, lapsed or deleted; packets see the old or the new, never neither.
pub fn renew_lease(policy: &Policy) -> Nftables<'static> {
    let set = Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(LEASE),
        ..Default::default()
    };
    Nftables {
        objects: Cow::Owned(vec![
            NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(Box::new(set)))),
            NfObject::CmdObject(NfCmd::Add(lease_element(policy))),
        ]),
    }
}

/// One transaction that changes one grant's elements and touches no others: `put` ends
/// up in the kernel with its timeout, `remove` ends up absent, whatever was there before.
/// Each key is first added (a no-op when present), then deleted, then `put` is added again:
/// nft refuses to delete what is absent, and an add alone keeps an older, shorter timeout
/// on kernels before 6.10. The kernel applies the three steps at once.
pub fn grant_change(
    put: &[TimedPinhole],
    remove: &[Pinhole],
    put_forwards: &[PortForward],
    remove_forwards: &[PortForward],
) -> Nftables<'static> {
    let touched: Vec<TimedPinhole> = put
        .iter()
        .copied()
        .chain(remove.iter().map(|&pinhole| TimedPinhole {
            pinhole,
            timeout_seconds: 1,
        }))
        .collect();
    let touched_forwards: Vec<PortForward> = put_forwards
        .iter()
        .chain(remove_forwards)
        .copied()
        .collect();
    let mut commands = additions(&touched, &touched_forwards);
    let keys: Vec<Pinhole> = touched.iter().map(|t| t.pinhole).collect();
    let forward_keys: Vec<ForwardKey> = touched_forwards.iter().map(PortForward::key).collect();
    commands.extend(
        change_elements(&[], &keys, &[], &forward_keys)
            .objects
            .into_owned(),
    );
    commands.extend(additions(put, put_forwards));
    Nftables {
        objects: Cow::Owned(commands),
    }
}

/// One transaction that adds and deletes grant elements and port forwards.
pub fn change_elements(
    add: &[TimedPinhole],
    delete: &[Pinhole],
    add_forwards: &[PortForward],
    delete_forwards: &[ForwardKey],
) -> Nftables<'static> {
    let mut commands = Vec::new();
    if !delete.is_empty() {
        commands.push(NfObject::CmdObject(NfCmd::Delete(elements(
            GRANTS,
            delete.iter().map(pinhole_key).collect(),
        ))));
    }
    if !delete_forwards.is_empty() {
        for name in [FORWARD_ADDRS, FORWARD_PORTS] {
            commands.push(NfObject::CmdObject(NfCmd::Delete(elements(
                name,
                delete_forwards.iter().map(forward_key).collect(),
            ))));
        }
    }
    commands.extend(additions(add, add_forwards));
    Nftables {
        objects: Cow::Owned(commands),
    }
}
