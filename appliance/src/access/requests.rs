//! Asking and deciding: a technician's request, checked against the site's policy and the
//! firewall's rules and then put to the site's approvers (or approved at once where the
//! policy needs no approval), and an approver's decision. Approval stores the firewall
//! grant in the same transaction as the decision.

use std::net::Ipv4Addr;

use diesel::prelude::*;

use super::messages::Context;
use super::policy::SitePolicy;
use super::sites::{Machine, approvers, is_approver, site_of, user_site};
use super::state::{AccessRequest, MICROS, State, already_decided};
use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::grants::{Agent, Grant, GrantRequest};
use crate::ids::{AccessRequestId, MachineId, UserId};
use crate::models::{Role, User};
use crate::schema::{access_requests, machines, users};
use crate::store::{DbConnection, on_backend};
use crate::time::format_us;
use crate::{emails, mail};

/// What a technician fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    pub machine_id: MachineId,
    pub agent: String,
    pub minutes: String,
    pub reason: String,
    /// An address other than the one the portal sees, which the site's policy must allow.
    pub declared_address: String,
}

impl Default for NewRequest {
    /// Nothing filled in: machine id 0, which names no machine.
    fn default() -> NewRequest {
        NewRequest {
            machine_id: MachineId(0),
            agent: String::new(),
            minutes: String::new(),
            reason: String::new(),
            declared_address: String::new(),
        }
    }
}

/// Who may ask for remote access at all: technicians, approvers and administrators (a
/// viewer only reads).
pub fn may_request(role: Role) -> bool {
    matches!(role, Role::Technician | Role::Approver | Role::Admin)
}

/// The site, machine, requester and agent of `request`, for its emails and pages.
pub(super) fn context(conn: &mut DbConnection, request: &AccessRequest) -> Result<Context> {
    let site = site_of(conn, request.organisation_id, request.site_id)?;
    let machine = machines::table
        .find(request.machine_id)
        .select(Machine::as_select())
        .first(conn)?;
    let requester = users::table
        .find(request.requester_id)
        .select(User::as_select())
        .first(conn)?;
    let agent = Agent::find(conn, &request.agent)?;
    Ok(Context {
        site,
        machine,
        requester,
        agent,
    })
}

/// False once the account is disabled or expired, or its organisation is disabled.
pub(super) fn account_active(conn: &mut DbConnection, user: UserId, now: i64) -> Result<bool> {
    let account: Option<(Option<i64>, Option<i64>, Option<i64>)> = users::table
        .inner_join(crate::schema::organisations::table)
        .filter(users::id.eq(user))
        .select((
            users::disabled_at_us,
            users::expires_at_us,
            crate::schema::organisations::disabled_at_us,
        ))
        .first(conn)
        .optional()?;
    Ok(account.is_some_and(|(disabled, expires, org_disabled)| {
        disabled.is_none() && expires.is_none_or(|at| at > now) && org_disabled.is_none()
    }))
}

/// Everything a request must pass, at request time and again at approval: the key switch,
/// the hours, the allowlist, and every check a firewall grant makes.
#[allow(clippy::too_many_arguments)]
fn check_grantable(
    conn: &mut DbConnection,
    config: &Config,
    policy: &SitePolicy,
    machine: &Machine,
    requester_addr: &str,
    agent: &str,
    seconds: i64,
    reason: &str,
    now: i64,
) -> Result<crate::grants::ValidGrant> {
    if !policy.remote_enabled {
        return Err(Error::Conflict(
            "remote access is switched off at this site (key switch)".into(),
        ));
    }
    policy.check_hours(now)?;
    let address: Ipv4Addr = machine
        .address
        .parse()
        .map_err(|_| Error::invalid("machine", "stored address is invalid"))?;
    if !policy.allows_device(address) {
        return Err(Error::invalid(
            "machine",
            format!(
                "{} ({address}) is no longer on the site's device allowlist",
                machine.name
            ),
        ));
    }
    Grant::validate(
        conn,
        config,
        &GrantRequest {
            requester: requester_addr.to_owned(),
            device: machine.address.clone(),
            agent: agent.to_owned(),
            duration_seconds: u64::try_from(seconds).unwrap_or(0),
            reason: reason.to_owned(),
            dnat_port: None,
        },
    )
}

/// Records a technician's request; nothing is stored when any check fails. The site's
/// approvers are emailed, or, where the policy needs no approval, it is approved at once.
pub fn request(
    audit: &Audit,
    config: &Config,
    requester: &User,
    source: &str,
    new: &NewRequest,
    now: i64,
) -> Result<AccessRequest> {
    if !may_request(requester.role()?) {
        return Err(Error::Forbidden(
            "only technicians, approvers and administrators can ask for remote access".into(),
        ));
    }
    let mut conn = audit.store().conn()?;
    let machine = Machine::find(&mut conn, requester.organisation_id, new.machine_id)?;
    if user_site(&mut conn, requester.id)?.is_some_and(|only| only != machine.site_id) {
        return Err(Error::NotFound("machine"));
    }
    let site = site_of(&mut conn, machine.organisation_id, machine.site_id)?;
    let policy = SitePolicy::of(&mut conn, site.id)?;
    let agent = new.agent.trim();
    if !machine.agent_names().contains(&agent) {
        return Err(Error::invalid(
            "agent",
            format!(
                "{} offers {}, not {agent:?}",
                machine.name,
                machine.agent_names().join(", ")
            ),
        ));
    }
    let minutes: i64 = new
        .minutes
        .trim()
        .parse()
        .ok()
        .filter(|m| (1..=i64::from(policy.max_minutes)).contains(m))
        .ok_or_else(|| {
            Error::invalid(
                "duration",
                format!(
                    "{:?}: a number of minutes from 1 to {}, this site's maximum",
                    new.minutes, policy.max_minutes
                ),
            )
        })?;
    let (requester_addr, declared) = match new.declared_address.trim() {
        "" => (source.to_owned(), false),
        declared => {
            let address: Ipv4Addr = declared.parse().map_err(|_| {
                Error::invalid("address", format!("{declared:?} is not an IPv4 address"))
            })?;
            if !policy.declarable().iter().any(|net| net.contains(&address)) {
                return Err(Error::invalid(
                    "address",
                    format!(
                        "{address} is not in the networks this site lets requesters declare ({})",
                        if policy.declared_networks.is_empty() {
                            "none"
                        } else {
                            &policy.declared_networks
                        }
                    ),
                ));
            }
            (address.to_string(), true)
        }
    };
    if requester_addr.parse::<Ipv4Addr>().is_err() {
        return Err(Error::invalid(
            "address",
            format!(
                "the portal sees you at {requester_addr}, which is not IPv4; declare your IPv4 address"
            ),
        ));
    }
    let reason = new.reason.trim();
    check_grantable(
        &mut conn,
        config,
        &policy,
        &machine,
        &requester_addr,
        agent,
        minutes * 60,
        reason,
        now,
    )?;
    let approvers: Vec<User> = approvers(&mut conn, site.id)?
        .into_iter()
        .filter(|u| u.id != requester.id)
        .collect();
    if policy.approval_required && approvers.is_empty() {
        return Err(Error::invalid(
            "site",
            format!(
                "nobody can approve requests for {} yet; an administrator names an approver first",
                site.name
            ),
        ));
    }
    drop(conn);
    let actor = Actor::User(requester.id);
    let created = audit.record_with(|conn| {
        let request = on_backend!(conn, c => diesel::insert_into(access_requests::table)
            .values((
                access_requests::organisation_id.eq(site.organisation_id),
                access_requests::site_id.eq(site.id),
                access_requests::machine_id.eq(machine.id),
                access_requests::agent.eq(agent),
                access_requests::requester_id.eq(requester.id),
                access_requests::requester_addr.eq(&requester_addr),
                access_requests::address_declared.eq(declared),
                access_requests::requested_seconds.eq(minutes * 60),
                access_requests::reason.eq(reason),
                access_requests::state.eq(State::Pending.as_str()),
                access_requests::created_at_us.eq(now),
                access_requests::pending_until_us.eq(now + i64::from(config.access.pending_hours) * 3600 * MICROS),
            ))
            .returning(AccessRequest::as_returning())
            .get_result(c))?;
        let mut events = vec![
            AuditEvent::new(actor.clone(), "access.requested")
                .source(source)
                .target(request.target())
                .details(serde_json::json!({
                    "site": site.id, "machine": machine.name, "device": machine.address,
                    "agent": agent, "requester_addr": requester_addr, "declared": declared,
                    "minutes": minutes, "reason": reason,
                })),
        ];
        if policy.approval_required {
            let cx = context(conn, &request)?;
            let email = emails::access_approval_wanted(
                config,
                &cx.names(&request),
                request.requested_seconds,
                &request.reason,
                request.pending_until_us,
            );
            for approver in &approvers {
                mail::enqueue(conn, &approver.email, &email, &request.target(), now)?;
            }
            events.push(
                AuditEvent::new(actor.clone(), "access.notified")
                    .source(source)
                    .target(request.target())
                    .details(serde_json::json!({
                        "approvers": approvers.iter().map(|a| &a.email).collect::<Vec<_>>(),
                    })),
            );
            Ok((request, events))
        } else {
            let system = Actor::System("access-policy".into());
            let (request, more) =
                approve_in(conn, config, &system, None, &request, None, source, now)?;
            events.extend(more);
            Ok((request, events))
        }
    })?;
    Ok(created)
}

/// An approver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Approve, for at most the minutes asked for (empty: as asked).
    Approve {
        minutes: String,
    },
    Deny {
        reason: String,
    },
}

/// Approves inside the caller's transaction: stores the grant, marks the request approved
/// if it is still pending, and tells the requester. `approver` is `None` for the policy.
#[allow(clippy::too_many_arguments)]
fn approve_in(
    conn: &mut DbConnection,
    config: &Config,
    actor: &Actor,
    approver: Option<&User>,
    request: &AccessRequest,
    seconds: Option<i64>,
    source: &str,
    now: i64,
) -> Result<(AccessRequest, Vec<AuditEvent>)> {
    let cx = context(conn, request)?;
    if !account_active(conn, request.requester_id, now)? {
        return Err(Error::Conflict(format!(
            "{}'s account is disabled or has ended; the request cannot be approved",
            cx.requester.name
        )));
    }
    let policy = SitePolicy::of(conn, request.site_id)?;
    let seconds = seconds.unwrap_or(request.requested_seconds);
    let valid = check_grantable(
        conn,
        config,
        &policy,
        &cx.machine,
        &request.requester_addr,
        &request.agent,
        seconds,
        &format!("access request {}: {}", request.id.0, request.reason),
        now,
    )?;
    let (grant, grant_event) = Grant::insert(conn, actor, &valid, now)?;
    let updated = diesel::update(
        access_requests::table
            .find(request.id)
            .filter(access_requests::state.eq(State::Pending.as_str())),
    )
    .set((
        access_requests::state.eq(State::Approved.as_str()),
        access_requests::decided_by.eq(approver.map(|a| a.id)),
        access_requests::decided_at_us.eq(now),
        access_requests::approved_seconds.eq(seconds),
        access_requests::grant_id.eq(grant.id),
    ))
    .execute(conn)?;
    if updated != 1 {
        return Err(already_decided(conn, request.id));
    }
    let approved = AccessRequest::find(conn, request.id)?;
    let email = emails::access_approved(
        config,
        &cx.names(request),
        approver.map(|a| a.name.as_str()),
        seconds,
        grant.expires_at_us,
    );
    mail::enqueue(conn, &cx.requester.email, &email, &request.target(), now)?;
    let event = AuditEvent::new(actor.clone(), "access.approved")
        .source(source)
        .target(request.target())
        .details(serde_json::json!({
            "grant": grant.id,
            "minutes": seconds / 60,
            "requested_minutes": request.requested_seconds / 60,
            "requester": cx.requester.email,
            "expires": format_us(grant.expires_at_us),
            "by_policy": approver.is_none(),
        }));
    Ok((approved, vec![grant_event, event]))
}

/// An approver decides on a pending request. The approver must be named for the request's
/// site (anyone else gets "not found") and must not be its requester.
pub fn decide(
    audit: &Audit,
    config: &Config,
    approver: &User,
    id: AccessRequestId,
    decision: &Decision,
    source: &str,
    now: i64,
) -> Result<AccessRequest> {
    let actor = Actor::User(approver.id);
    let attempt = audit.record_with(|conn| {
        let request = visible_request(conn, approver, id)?;
        if !is_approver(conn, approver, request.site_id)? && request.requester_id != approver.id {
            return Err(Error::Forbidden(
                "only the site's named approvers decide on its requests".into(),
            ));
        }
        if request.requester_id == approver.id {
            return Err(Error::Forbidden(
                "nobody approves their own request; another approver of the site must decide"
                    .into(),
            ));
        }
        if request.state()? != State::Pending {
            return Err(already_decided(conn, id));
        }
        if request.pending_until_us <= now {
            return Err(Error::Conflict(format!(
                "request {} expired at {}; nothing was changed",
                id.0,
                format_us(request.pending_until_us)
            )));
        }
        match decision {
            Decision::Approve { minutes } => {
                let seconds = match minutes.trim() {
                    "" => None,
                    raw => Some(
                        raw.parse::<i64>()
                            .ok()
                            .filter(|m| (1..=request.requested_seconds / 60).contains(m))
                            .ok_or_else(|| {
                                Error::invalid(
                                    "duration",
                                    format!(
                                        "{raw:?}: approve for 1 to {} minutes, at most what was asked",
                                        request.requested_seconds / 60
                                    ),
                                )
                            })?
                            * 60,
                    ),
                };
                approve_in(conn, config, &actor, Some(approver), &request, seconds, source, now)
            }
            Decision::Deny { reason } => {
                let reason = reason.trim();
                if reason.is_empty() || reason.chars().count() > 500 {
                    return Err(Error::invalid(
                        "reason",
                        "say why the request is denied (1-500 characters)",
                    ));
                }
                let updated = diesel::update(
                    access_requests::table
                        .find(id)
                        .filter(access_requests::state.eq(State::Pending.as_str())),
                )
                .set((
                    access_requests::state.eq(State::Denied.as_str()),
                    access_requests::decided_by.eq(approver.id),
                    access_requests::decided_at_us.eq(now),
                    access_requests::decision_reason.eq(reason),
                ))
                .execute(conn)?;
                if updated != 1 {
                    return Err(already_decided(conn, id));
                }
                let cx = context(conn, &request)?;
                let email = emails::access_denied(config, &cx.names(&request), &approver.name, reason);
                mail::enqueue(conn, &cx.requester.email, &email, &request.target(), now)?;
                let event = AuditEvent::new(actor.clone(), "access.denied")
                    .source(source)
                    .target(request.target())
                    .details(serde_json::json!({ "reason": reason, "requester": cx.requester.email }));
                Ok((AccessRequest::find(conn, id)?, vec![event]))
            }
        }
    });
    if let Err(Error::Forbidden(why)) = &attempt {
        // A refused self-approval is itself worth a record.
        audit.record(
            AuditEvent::new(actor, "access.decision.refused")
                .source(source)
                .target(id)
                .outcome(Outcome::Denied)
                .details(serde_json::json!({ "why": why })),
        )?;
    }
    attempt
}

/// A request `user` may see, or "not found": their own, their sites' as an approver, and
/// their organisation's as an administrator.
pub(super) fn visible_request(
    conn: &mut DbConnection,
    user: &User,
    id: AccessRequestId,
) -> Result<AccessRequest> {
    let request = AccessRequest::find(conn, id)?;
    if may_see(conn, user, &request)? {
        Ok(request)
    } else {
        Err(Error::NotFound("access request"))
    }
}

fn may_see(conn: &mut DbConnection, user: &User, request: &AccessRequest) -> Result<bool> {
    if request.organisation_id != user.organisation_id {
        return Ok(false);
    }
    Ok(request.requester_id == user.id
        || user.role()? == Role::Admin
        || is_approver(conn, user, request.site_id)?)
}
