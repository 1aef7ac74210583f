//! The IPv6 the appliance itself needs: neighbour discovery, and ping from uplink.

use std::borrow::Cow;

use nftables::expr::{Expression, MetaKey};
use nftables::stmt::{Limit, Statement};

use super::{Policy, accept, field, is, is_in, meta, s, set_of};

/// ICMPv6's protocol number. By number, not by name: nft looks a name such as `ipv6-icmp` up
/// in `/etc/protocols`, which the image does not have, and refuses the whole table without it.
const ICMPV6: Expression<'static> = Expression::Number(58);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    In,
    Out,
}

/// IPv6 neighbour discovery (RFC 4861), without which nothing reaches the appliance over
/// IPv6: neighbour solicitations and advertisements on both sides; router solicitations out
/// and advertisements in on uplink only (a device must not become the appliance's router).
/// Only with hop limit 255, which a packet has only if it was not routed: ND from beyond the
/// link is refused. Conntrack does not track ND, so the established rule does not cover it.
/// Forwarding is untouched: no IPv6 packet matches the `grants` lookup, so none crosses.
pub(super) fn neighbour_discovery(
    policy: &Policy,
    direction: Direction,
) -> Vec<Vec<Statement<'static>>> {
    let on = |name: &str| match direction {
        Direction::In => is(meta(MetaKey::Iifname), s(name)),
        Direction::Out => is(meta(MetaKey::Oifname), s(name)),
    };
    let router = match direction {
        Direction::In => "nd-router-advert",
        Direction::Out => "nd-router-solicit",
    };
    [(&policy.uplink, vec![router]), (&policy.device, vec![])]
        .into_iter()
        .map(|(interface, extra)| {
            let types = ["nd-neighbor-solicit", "nd-neighbor-advert"]
                .into_iter()
                .chain(extra)
                .map(s)
                .collect();
            accept(vec![
                on(interface),
                is(meta(MetaKey::L4proto), ICMPV6),
                is_in(field("icmpv6", "type"), set_of(types)),
                is(field("ip6", "hoplimit"), Expression::Number(255)),
            ])
        })
        .collect()
}

/// Ping over IPv6 from uplink, rate-limited as over IPv4.
pub(super) fn icmpv6_echo(policy: &Policy) -> Vec<Statement<'static>> {
    vec![
        is(meta(MetaKey::Iifname), s(&policy.uplink)),
        is(meta(MetaKey::L4proto), ICMPV6),
        is(field("icmpv6", "type"), s("echo-request")),
        Statement::Limit(Limit {
            rate: policy.icmp_echo_per_second,
            rate_unit: None,
            per: Some(Cow::Borrowed("second")),
            burst: Some(5),
            burst_unit: None,
            inv: None,
        }),
        Statement::Accept(None),
    ]
}
