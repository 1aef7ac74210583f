//! Firewall grants and device agents: the domain side of the pinholes.
//!
//! A grant lets one requester address reach one device address on the ports of one agent,
//! until it expires or is revoked. Grants are written here, validated before anything is
//! stored; the firewall controller reads the live ones and applies them to nftables.

pub mod control;

use std::net::Ipv4Addr;

use diesel::prelude::*;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::GrantId;
use crate::schema::{device_agents, firewall_grants};
use crate::store::DbConnection;
use crate::store::on_backend;
use crate::time::format_us;
pub use crate::values::{PortList, PortRange, Protocol};

/// Named templates of protocol and ports per kind of equipment.
pub const BUILTIN_AGENTS: [(&str, &str, &str); 7] = [
    ("s7", "Siemens S7", "tcp/102"),
    ("modbus", "Modbus/TCP", "tcp/502"),
    ("ethernet-ip", "EtherNet/IP", "tcp/44818,udp/2222"),
    ("opc-ua", "OPC UA", "tcp/4840"),
    ("rdp", "Remote Desktop", "tcp/3389"),
    ("vnc", "VNC", "tcp/5900"),
    ("http", "HTTP/HTTPS", "tcp/80,tcp/443"),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    pub name: String,
    pub label: String,
    pub ports: PortList,
    pub builtin: bool,
}

impl Agent {
    pub fn all(conn: &mut DbConnection) -> Result<Vec<Agent>> {
        let mut agents: Vec<Agent> = BUILTIN_AGENTS
            .iter()
            .filter_map(|(name, label, ports)| {
                Some(Agent {
                    name: (*name).into(),
                    label: (*label).into(),
                    ports: PortList::parse(ports).ok()?,
                    builtin: true,
                })
            })
            .collect();
        let custom: Vec<(String, String, String)> = device_agents::table
            .select((
                device_agents::name,
                device_agents::label,
                device_agents::ports,
            ))
            .order(device_agents::name)
            .load(conn)?;
        for (name, label, ports) in custom {
            let ports =
                PortList::parse(&ports).map_err(|problem| Error::invalid("ports", problem))?;
            agents.push(Agent {
                name,
                label,
                ports,
                builtin: false,
            });
        }
        Ok(agents)
    }

    pub fn find(conn: &mut DbConnection, name: &str) -> Result<Agent> {
        Agent::all(conn)?
            .into_iter()
            .find(|agent| agent.name == name)
            .ok_or_else(|| Error::invalid("agent", format!("no device agent named {name:?}")))
    }

    /// Adds a custom agent, such as a vendor's service port range, as of `now`.
    pub fn create(
        audit: &Audit,
        actor: &Actor,
        config: &Config,
        name: &str,
        label: &str,
        ports: &str,
        now: i64,
    ) -> Result<Agent> {
        let valid_name = (1..=40).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err(Error::invalid("name", "1-40 of a-z, 0-9 and -"));
        }
        if BUILTIN_AGENTS
            .iter()
            .any(|(builtin, _, _)| *builtin == name)
        {
            return Err(Error::Conflict(format!("{name:?} is a built-in agent")));
        }
        let ports = PortList::parse(ports).map_err(|problem| Error::invalid("ports", problem))?;
        check_port_count(&ports, config)?;
        let label = if label.trim().is_empty() {
            name
        } else {
            label.trim()
        };
        audit.record_with(|conn| {
            diesel::insert_into(device_agents::table)
                .values((
                    device_agents::name.eq(name),
                    device_agents::label.eq(label),
                    device_agents::ports.eq(ports.to_string()),
                    device_agents::created_at_us.eq(now),
                ))
                .execute(conn)
                .map_err(|err| match err {
                    diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::UniqueViolation,
                        _,
                    ) => Error::Conflict(format!("an agent named {name:?} already exists")),
                    other => other.into(),
                })?;
            let event = AuditEvent::new(actor.clone(), "agent.created")
                .target(format!("agent:{name}"))
                .details(serde_json::json!({ "ports": ports.to_string(), "label": label }));
            Ok((
                Agent {
                    name: name.to_owned(),
                    label: label.to_owned(),
                    ports: ports.clone(),
                    builtin: false,
                },
                vec![event],
            ))
        })
    }
}

fn check_port_count(ports: &PortList, config: &Config) -> Result<()> {
    let limit = config.firewall.max_ports_per_grant;
    if ports.count() > limit {
        return Err(Error::invalid(
            "ports",
            format!(
                "{ports} opens {} ports; the limit is {limit} (firewall.max_ports_per_grant)",
                ports.count()
            ),
        ));
    }
    Ok(())
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = firewall_grants)]
pub struct Grant {
    pub id: GrantId,
    pub requester_addr: String,
    pub device_addr: String,
    pub agent: String,
    pub ports: String,
    pub reason: String,
    pub created_by: String,
    pub created_at_us: i64,
    pub expires_at_us: i64,
    pub dnat_port: Option<i32>,
    pub revoked_at_us: Option<i64>,
    pub revoked_by: Option<String>,
    pub applied_at_us: Option<i64>,
    pub closed_at_us: Option<i64>,
    pub close_reason: Option<String>,
}

/// Where a grant is in its life, worked out in [`Grant::lifecycle`] only, from its stored
/// times and the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Open until it expires.
    Live,
    /// Revoked; the controller has not yet confirmed its pinholes gone.
    Revoked,
    /// Its time ran out; the controller closes it at its next reconcile.
    Expired,
    /// The controller removed its pinholes (after expiry, revoke or removal).
    Closed,
}

/// What someone asks the firewall to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    pub requester: String,
    pub device: String,
    pub agent: String,
    pub duration_seconds: u64,
    pub reason: String,
    /// Also forward this uplink port to the device, for requesters who cannot route to
    /// the device network. Only for agents with one port.
    pub dnat_port: Option<u16>,
}

/// A [`GrantRequest`] that passed every check, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidGrant {
    pub requester: Ipv4Addr,
    pub device: Ipv4Addr,
    pub agent: Agent,
    pub reason: String,
    pub duration_seconds: u64,
    pub dnat_port: Option<u16>,
}

/// One (requester, device, protocol, port) that a live grant opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pinhole {
    pub requester: Ipv4Addr,
    pub device: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

impl Grant {
    pub fn port_list(&self) -> Result<PortList> {
        PortList::parse(&self.ports).map_err(|problem| Error::invalid("ports", problem))
    }

    pub fn requester(&self) -> Result<Ipv4Addr> {
        self.requester_addr
            .parse()
            .map_err(|_| Error::invalid("requester", "stored address is invalid"))
    }

    pub fn device(&self) -> Result<Ipv4Addr> {
        self.device_addr
            .parse()
            .map_err(|_| Error::invalid("device", "stored address is invalid"))
    }

    /// Every pinhole this grant opens.
    pub fn pinholes(&self) -> Result<Vec<Pinhole>> {
        let (requester, device) = (self.requester()?, self.device()?);
        Ok(self
            .port_list()?
            .0
            .iter()
            .flat_map(|range| {
                range.ports().map(move |port| Pinhole {
                    requester,
                    device,
                    protocol: range.protocol,
                    port,
                })
            })
            .collect())
    }

    pub fn target(&self) -> String {
        self.id.to_string()
    }

    /// Where the grant is in its life at `now`.
    pub fn lifecycle(&self, now: i64) -> Lifecycle {
        if self.closed_at_us.is_some() {
            Lifecycle::Closed
        } else if self.revoked_at_us.is_some() {
            Lifecycle::Revoked
        } else if self.expires_at_us <= now {
            Lifecycle::Expired
        } else {
            Lifecycle::Live
        }
    }

    /// Validates `request` against the configuration and stores the grant, audited; it
    /// runs from `now`. Nothing is stored when any check fails.
    pub fn open(
        audit: &Audit,
        actor: &Actor,
        config: &Config,
        request: &GrantRequest,
        now: i64,
    ) -> Result<Grant> {
        let valid = Grant::validate(&mut *audit.store().conn()?, config, request)?;
        audit.record_with(|conn| {
            let (grant, event) = Grant::insert(conn, actor, &valid, now)?;
            Ok((grant, vec![event]))
        })
    }

    /// Every check [`Grant::open`] makes, without storing anything.
    pub fn validate(
        conn: &mut DbConnection,
        config: &Config,
        request: &GrantRequest,
    ) -> Result<ValidGrant> {
        let requester: Ipv4Addr = request.requester.trim().parse().map_err(|_| {
            Error::invalid(
                "requester",
                format!("{:?} is not an IPv4 address", request.requester),
            )
        })?;
        let device: Ipv4Addr = request.device.trim().parse().map_err(|_| {
            Error::invalid(
                "device",
                format!("{:?} is not an IPv4 address", request.device),
            )
        })?;
        let network = config.device_network()?;
        if !network.contains(&device)
            || device == network.network()
            || device == network.broadcast()
        {
            return Err(Error::invalid(
                "device",
                format!("{device} is not a host in the device network {network}"),
            ));
        }
        if network.contains(&requester) {
            return Err(Error::invalid(
                "requester",
                format!("{requester} is inside the device network {network}"),
            ));
        }
        if requester.is_unspecified() || requester.is_broadcast() || requester.is_multicast() {
            return Err(Error::invalid(
                "requester",
                format!("{requester} is not a host address"),
            ));
        }
        let max_seconds = u64::from(config.firewall.max_grant_minutes) * 60;
        if !(1..=max_seconds).contains(&request.duration_seconds) {
            return Err(Error::invalid(
                "duration",
                format!(
                    "must be between 1 second and {} minutes",
                    config.firewall.max_grant_minutes
                ),
            ));
        }
        let reason = request.reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(Error::invalid(
                "reason",
                "say why access is needed (1-500 characters)",
            ));
        }
        let agent = Agent::find(conn, &request.agent)?;
        check_port_count(&agent.ports, config)?;
        if let Some(port) = request.dnat_port {
            let config_ports = &config.firewall;
            if port == 22
                || config_ports.portal_ports.contains(&port)
                || config_ports.ingest_ports.contains(&port)
            {
                return Err(Error::invalid(
                    "dnat_port",
                    format!("uplink port {port} belongs to the appliance's own services"),
                ));
            }
            if agent.ports.count() != 1 {
                return Err(Error::invalid(
                    "dnat_port",
                    format!(
                        "agent {} has several ports; forwarding needs exactly one",
                        agent.name
                    ),
                ));
            }
        }
        Ok(ValidGrant {
            requester,
            device,
            agent,
            reason: reason.to_owned(),
            duration_seconds: request.duration_seconds,
            dnat_port: request.dnat_port,
        })
    }

    /// Stores a validated grant inside the caller's transaction, and returns the audit
    /// event to record with it. Fails if the forwarded uplink port is taken.
    pub fn insert(
        conn: &mut DbConnection,
        actor: &Actor,
        valid: &ValidGrant,
        now: i64,
    ) -> Result<(Grant, AuditEvent)> {
        let (requester, device, agent) = (valid.requester, valid.device, &valid.agent);
        let expires = now.saturating_add(
            i64::try_from(valid.duration_seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
        );
        if let Some(port) = valid.dnat_port {
            let taken: i64 = firewall_grants::table
                .filter(firewall_grants::dnat_port.eq(i32::from(port)))
                .filter(firewall_grants::closed_at_us.is_null())
                .filter(firewall_grants::revoked_at_us.is_null())
                .filter(firewall_grants::expires_at_us.gt(now))
                .count()
                .get_result(conn)?;
            if taken > 0 {
                return Err(Error::Conflict(format!(
                    "uplink port {port} already forwards for another live grant"
                )));
            }
        }
        let grant = on_backend!(conn, c => diesel::insert_into(firewall_grants::table)
            .values((
                firewall_grants::requester_addr.eq(requester.to_string()),
                firewall_grants::device_addr.eq(device.to_string()),
                firewall_grants::agent.eq(&agent.name),
                firewall_grants::ports.eq(agent.ports.to_string()),
                firewall_grants::reason.eq(&valid.reason),
                firewall_grants::created_by.eq(format!("{}:{}", actor.kind(), actor.id())),
                firewall_grants::created_at_us.eq(now),
                firewall_grants::expires_at_us.eq(expires),
                firewall_grants::dnat_port.eq(valid.dnat_port.map(i32::from)),
            ))
            .returning(Grant::as_returning())
            .get_result(c))?;
        let event = AuditEvent::new(actor.clone(), "grant.created")
            .target(grant.target())
            .details(serde_json::json!({
                "requester": grant.requester_addr,
                "device": grant.device_addr,
                "agent": grant.agent,
                "ports": grant.ports,
                "expires": format_us(grant.expires_at_us),
                "dnat_port": grant.dnat_port,
                "reason": grant.reason,
            }));
        Ok((grant, event))
    }

    /// Revokes a live grant. The firewall cuts its connections when poked or at its next
    /// reconcile.
    pub fn revoke(
        audit: &Audit,
        actor: &Actor,
        id: GrantId,
        reason: &str,
        now: i64,
    ) -> Result<Grant> {
        audit.record_with(|conn| {
            let (grant, event) = Grant::revoke_in(conn, actor, id, reason, now)?;
            Ok((grant, vec![event]))
        })
    }

    /// [`Grant::revoke`] inside the caller's transaction.
    pub fn revoke_in(
        conn: &mut DbConnection,
        actor: &Actor,
        id: GrantId,
        reason: &str,
        now: i64,
    ) -> Result<(Grant, AuditEvent)> {
        let grant = Grant::find(conn, id)?;
        if grant.lifecycle(now) != Lifecycle::Live {
            return Err(Error::Conflict(format!("grant {} has already ended", id.0)));
        }
        diesel::update(firewall_grants::table.find(id))
            .set((
                firewall_grants::revoked_at_us.eq(now),
                firewall_grants::revoked_by.eq(format!("{}:{}", actor.kind(), actor.id())),
            ))
            .execute(conn)?;
        let grant = Grant::find(conn, id)?;
        let event = AuditEvent::new(actor.clone(), "grant.revoked")
            .target(grant.target())
            .details(serde_json::json!({ "reason": reason.trim() }));
        Ok((grant, event))
    }

    /// Moves a live grant's expiry later, inside the caller's transaction; the firewall
    /// refreshes the pinholes' timeouts at its next reconcile.
    pub fn extend_in(
        conn: &mut DbConnection,
        actor: &Actor,
        id: GrantId,
        expires_at_us: i64,
        now: i64,
    ) -> Result<(Grant, AuditEvent)> {
        let grant = Grant::find(conn, id)?;
        if grant.lifecycle(now) != Lifecycle::Live {
            return Err(Error::Conflict(format!("grant {} has already ended", id.0)));
        }
        if expires_at_us <= grant.expires_at_us {
            return Err(Error::invalid("expires", "an extension must end later"));
        }
        diesel::update(firewall_grants::table.find(id))
            .set(firewall_grants::expires_at_us.eq(expires_at_us))
            .execute(conn)?;
        let event = AuditEvent::new(actor.clone(), "grant.extended")
            .target(grant.target())
            .details(serde_json::json!({
                "from": format_us(grant.expires_at_us),
                "to": format_us(expires_at_us),
            }));
        Ok((Grant::find(conn, id)?, event))
    }

    pub fn find(conn: &mut DbConnection, id: GrantId) -> Result<Grant> {
        firewall_grants::table
            .find(id)
            .select(Grant::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("grant"))
    }

    /// Grants that should be open now: not revoked, not closed, not expired.
    pub fn live(conn: &mut DbConnection, now: i64) -> Result<Vec<Grant>> {
        Ok(firewall_grants::table
            .filter(firewall_grants::revoked_at_us.is_null())
            .filter(firewall_grants::closed_at_us.is_null())
            .filter(firewall_grants::expires_at_us.gt(now))
            .order(firewall_grants::id)
            .select(Grant::as_select())
            .load(conn)?)
    }

    /// Live grants from `requester` to `device`: the only ones that can share a pinhole
    /// with a grant between the two, so a change to one grant reads only these.
    pub fn live_between(
        conn: &mut DbConnection,
        requester: &str,
        device: &str,
        now: i64,
    ) -> Result<Vec<Grant>> {
        Ok(firewall_grants::table
            .filter(firewall_grants::requester_addr.eq(requester))
            .filter(firewall_grants::device_addr.eq(device))
            .filter(firewall_grants::revoked_at_us.is_null())
            .filter(firewall_grants::closed_at_us.is_null())
            .filter(firewall_grants::expires_at_us.gt(now))
            .order(firewall_grants::id)
            .select(Grant::as_select())
            .load(conn)?)
    }

    /// Grants that ended (revoked, or past their expiry) but are not yet marked closed.
    pub fn ended_unclosed(conn: &mut DbConnection, now: i64) -> Result<Vec<Grant>> {
        Ok(firewall_grants::table
            .filter(firewall_grants::closed_at_us.is_null())
            .filter(
                firewall_grants::revoked_at_us
                    .is_not_null()
                    .or(firewall_grants::expires_at_us.le(now)),
            )
            .order(firewall_grants::id)
            .select(Grant::as_select())
            .load(conn)?)
    }

    /// Grants not yet marked closed, live or not: what the controller still has to act on.
    pub fn unclosed(conn: &mut DbConnection) -> Result<Vec<Grant>> {
        Ok(firewall_grants::table
            .filter(firewall_grants::closed_at_us.is_null())
            .order(firewall_grants::id)
            .select(Grant::as_select())
            .load(conn)?)
    }

    pub fn recent(conn: &mut DbConnection, limit: i64) -> Result<Vec<Grant>> {
        Ok(firewall_grants::table
            .order(firewall_grants::id.desc())
            .limit(limit)
            .select(Grant::as_select())
            .load(conn)?)
    }

    /// Records that the firewall applied the grant; audited as `firewall.grant.opened`.
    pub fn mark_applied(audit: &Audit, actor: &Actor, id: GrantId, now: i64) -> Result<()> {
        audit.record_with(|conn| {
            let updated = diesel::update(
                firewall_grants::table
                    .find(id)
                    .filter(firewall_grants::applied_at_us.is_null()),
            )
            .set(firewall_grants::applied_at_us.eq(now))
            .execute(conn)?;
            let grant = Grant::find(conn, id)?;
            let events = (updated == 1)
                .then(|| {
                    AuditEvent::new(actor.clone(), "firewall.grant.opened")
                        .target(grant.target())
                        .details(serde_json::json!({
                            "requester": grant.requester_addr,
                            "device": grant.device_addr,
                            "ports": grant.ports,
                            "expires": format_us(grant.expires_at_us),
                        }))
                })
                .into_iter()
                .collect();
            Ok(((), events))
        })
    }

    /// Records that the grant's pinholes are closed; `why` is `expired`, `revoked` or
    /// `removed`. Audited as `firewall.grant.{why}`, with what was cut.
    pub fn mark_closed(
        audit: &Audit,
        actor: &Actor,
        id: GrantId,
        why: &str,
        details: serde_json::Value,
        now: i64,
    ) -> Result<()> {
        audit.record_with(|conn| {
            let updated = diesel::update(
                firewall_grants::table
                    .find(id)
                    .filter(firewall_grants::closed_at_us.is_null()),
            )
            .set((
                firewall_grants::closed_at_us.eq(now),
                firewall_grants::close_reason.eq(why),
            ))
            .execute(conn)?;
            let events = (updated == 1)
                .then(|| {
                    AuditEvent::new(actor.clone(), &format!("firewall.grant.{why}"))
                        .target(id)
                        .outcome(Outcome::Success)
                        .details(details)
                })
                .into_iter()
                .collect();
            Ok(((), events))
        })
    }
}

/// Asks the firewall controller to reconcile now, and returns its one-line answer. A
/// controller that is not running applies the store's state at its next start.
pub fn poke_firewall(config: &Config) -> std::result::Result<String, String> {
    match control::ask(config, control::Request::Reconcile)? {
        control::Answer::Done(words) => Ok(words),
        control::Answer::Failed(why) => Err(why),
        other => Err(format!("unexpected answer {:?}", other.line())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_agents_parse() {
        for (name, _, ports) in BUILTIN_AGENTS {
            assert!(PortList::parse(ports).is_ok(), "{name}");
        }
    }
}
