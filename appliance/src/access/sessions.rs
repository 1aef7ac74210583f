//! What an approved request became: a session that its technician may extend or end, that
//! an approver revokes, that the site's key switch cuts, or that the periodic tick ends when
//! its grant ran out or its technician's account ended. The tick also expires requests
//! nobody decided on in time.

use diesel::prelude::*;

use super::allowed::Allowed;
use super::policy::SitePolicy;
use super::requests::{account_active, context, visible_request};
use super::sites::is_approver;
use super::state::{AccessRequest, MICROS, State, already_decided};
use crate::audit::{Actor, Audit, AuditEvent};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::grants::{Grant, Lifecycle};
use crate::ids::{AccessRequestId, GrantId, SiteId};
use crate::models::{Site, User};
use crate::schema::access_requests;
use crate::store::DbConnection;
use crate::time::format_us;
use crate::{emails, mail};

/// Moves a request from `from` to a final state `to`, recording when, why and by whom.
/// The update is conditional on `from`, so a request that changed meanwhile is refused with
/// the state it is in, and nothing is written.
fn finish(
    conn: &mut DbConnection,
    request: &AccessRequest,
    from: State,
    to: State,
    why: &str,
    by: &Actor,
    now: i64,
) -> Result<()> {
    let updated = diesel::update(
        access_requests::table
            .find(request.id)
            .filter(access_requests::state.eq(from.as_str())),
    )
    .set((
        access_requests::state.eq(to.as_str()),
        access_requests::ended_at_us.eq(now),
        access_requests::end_reason.eq(why),
        access_requests::ended_by.eq(by.to_string()),
    ))
    .execute(conn)?;
    if updated == 1 {
        Ok(())
    } else {
        Err(already_decided(conn, request.id))
    }
}

/// Ends a request: its requester cancels it while pending or ends the session; an approver
/// of the site or an administrator revokes it. Everyone else gets "not found".
pub fn end(
    audit: &Audit,
    config: &Config,
    user: &User,
    id: AccessRequestId,
    reason: &str,
    source: &str,
    now: i64,
) -> Result<AccessRequest> {
    let actor = Actor::User(user.id);
    audit.record_with(|conn| {
        let request = visible_request(conn, user, id)?;
        let own = request.requester_id == user.id;
        let may_revoke = Allowed::of(conn, user, &request)?.revoke;
        let state = request.state()?;
        match state {
            State::Pending if own => {
                finish(
                    conn,
                    &request,
                    State::Pending,
                    State::Cancelled,
                    "cancelled by the requester",
                    &actor,
                    now,
                )?;
                let event = AuditEvent::new(actor.clone(), "access.cancelled")
                    .source(source)
                    .target(request.target());
                Ok((AccessRequest::find(conn, id)?, vec![event]))
            }
            State::Approved if own || may_revoke => {
                let (why, action) = if own {
                    ("ended by the technician".to_owned(), "access.ended")
                } else {
                    let reason = reason.trim();
                    (
                        if reason.is_empty() {
                            format!("revoked by {}", user.name)
                        } else {
                            format!("revoked by {}: {reason}", user.name)
                        },
                        "access.revoked",
                    )
                };
                let events = close_in(conn, config, &actor, &request, &why, action, source, now)?;
                Ok((AccessRequest::find(conn, id)?, events))
            }
            State::Pending | State::Approved => Err(Error::Forbidden(
                "only the requester or the site's approvers can end this".into(),
            )),
            _ => Err(Error::Conflict(format!(
                "request {} is already {}; nothing was changed",
                id.0, request.state
            ))),
        }
    })
}

/// Ends an approved request's session inside the caller's transaction: revokes its grant
/// (if still live), marks it ended, tells the requester. Returns the audit events.
#[allow(clippy::too_many_arguments)]
fn close_in(
    conn: &mut DbConnection,
    config: &Config,
    actor: &Actor,
    request: &AccessRequest,
    why: &str,
    action: &str,
    source: &str,
    now: i64,
) -> Result<Vec<AuditEvent>> {
    let mut events = Vec::new();
    if let Some(grant) = request.grant_id
        && let Ok((_, event)) = Grant::revoke_in(conn, actor, grant, why, now)
    {
        events.push(event);
    }
    finish(
        conn,
        request,
        State::Approved,
        State::Ended,
        why,
        actor,
        now,
    )?;
    let cx = context(conn, request)?;
    let email = emails::access_ended(config, &cx.names(request), why);
    mail::enqueue(conn, &cx.requester.email, &email, &request.target(), now)?;
    events.push(
        AuditEvent::new(actor.clone(), action)
            .source(source)
            .target(request.target())
            .details(serde_json::json!({ "why": why, "grant": request.grant_id })),
    );
    Ok(events)
}

/// The technician adds `minutes` to their own live session, where the site's policy lets
/// requesters extend; the whole session stays within the site's longest session.
#[allow(clippy::too_many_arguments)]
pub fn extend(
    audit: &Audit,
    user: &User,
    id: AccessRequestId,
    minutes: &str,
    source: &str,
    now: i64,
) -> Result<AccessRequest> {
    let actor = Actor::User(user.id);
    audit.record_with(|conn| {
        let request = visible_request(conn, user, id)?;
        if request.requester_id != user.id {
            return Err(Error::Forbidden(
                "only the technician who asked can extend a session".into(),
            ));
        }
        if request.state()? != State::Approved {
            return Err(Error::Conflict(format!(
                "request {} is {}, not a live session",
                id.0, request.state
            )));
        }
        let policy = SitePolicy::of(conn, request.site_id)?;
        if !policy.requester_may_extend {
            return Err(Error::Forbidden(
                "this site does not let technicians extend sessions; ask again".into(),
            ));
        }
        if !policy.remote_enabled {
            return Err(Error::Conflict(
                "remote access is switched off at this site (key switch)".into(),
            ));
        }
        policy.check_hours(now)?;
        let grant_id = request
            .grant_id
            .ok_or_else(|| Error::Conflict(format!("request {} has no grant", id.0)))?;
        let grant = Grant::find(conn, grant_id)?;
        let started = request.decided_at_us.unwrap_or(grant.created_at_us);
        let ceiling = started + i64::from(policy.max_minutes) * 60 * MICROS;
        let room = (ceiling - grant.expires_at_us).max(0) / (60 * MICROS);
        let added: i64 = minutes
            .trim()
            .parse()
            .ok()
            .filter(|m| (1..=room).contains(m))
            .ok_or_else(|| {
                Error::invalid(
                    "duration",
                    format!(
                        "{minutes:?}: sessions at this site last at most {} minutes; up to {room} can be added",
                        policy.max_minutes
                    ),
                )
            })?;
        let expires = grant.expires_at_us + added * 60 * MICROS;
        let (_, grant_event) = Grant::extend_in(conn, &actor, grant_id, expires, now)?;
        diesel::update(access_requests::table.find(id))
            .set(access_requests::approved_seconds.eq(
                request.approved_seconds.unwrap_or(0) + added * 60,
            ))
            .execute(conn)?;
        let event = AuditEvent::new(actor.clone(), "access.extended")
            .source(source)
            .target(request.target())
            .details(serde_json::json!({ "minutes": added, "until": format_us(expires) }));
        Ok((AccessRequest::find(conn, id)?, vec![grant_event, event]))
    })
}

/// Turns a site's "remote access enabled" key switch on or off. Off cuts every session of
/// the site at once and refuses approvals until it is on again. `by` is the approver who
/// turned it, or `None` for the hardware switch. Returns the grants of the sessions cut,
/// whose revokes the caller has the firewall confirm (`grants::control::enforce_revoke`).
pub fn set_key_switch(
    audit: &Audit,
    config: &Config,
    by: Option<&User>,
    site: &Site,
    on: bool,
    source: &str,
    now: i64,
) -> Result<Vec<GrantId>> {
    let actor = by.map_or_else(|| Actor::System("key-switch".into()), |u| Actor::User(u.id));
    audit.record_with(|conn| {
        if let Some(user) = by
            && !is_approver(conn, user, site.id)?
        {
            return Err(Error::Forbidden(
                "only the site's approvers can turn its key switch".into(),
            ));
        }
        let mut policy = SitePolicy::of(conn, site.id)?;
        if policy.remote_enabled == on {
            return Ok((Vec::new(), Vec::new()));
        }
        policy.remote_enabled = on;
        policy.updated_at_us = now;
        policy.save(conn)?;
        let mut events = Vec::new();
        let mut cut = 0;
        let mut grants = Vec::new();
        if !on {
            for request in in_state(conn, Some(site.id), State::Approved)? {
                grants.extend(request.grant_id);
                events.extend(close_in(
                    conn,
                    config,
                    &actor,
                    &request,
                    "remote access switched off at the site",
                    "access.revoked",
                    source,
                    now,
                )?);
                cut += 1;
            }
        }
        let action = if on {
            "access.key_switch.on"
        } else {
            "access.key_switch.off"
        };
        events.insert(
            0,
            AuditEvent::new(actor.clone(), action)
                .source(source)
                .target(site.id)
                .details(serde_json::json!({ "sessions_cut": cut })),
        );
        Ok((grants, events))
    })
}

fn in_state(
    conn: &mut DbConnection,
    site: Option<SiteId>,
    state: State,
) -> Result<Vec<AccessRequest>> {
    let mut query = access_requests::table
        .filter(access_requests::state.eq(state.as_str()))
        .order(access_requests::id)
        .select(AccessRequest::as_select())
        .into_boxed();
    if let Some(site) = site {
        query = query.filter(access_requests::site_id.eq(site));
    }
    Ok(query.load(conn)?)
}

/// What a tick changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub expired: usize,
    pub ended: usize,
}

/// The periodic sweep: pending requests past their time expire; approved sessions whose
/// grant ended (expiry, or a revoke outside this module) end; sessions of accounts that
/// expired, were disabled or whose organisation was disabled are revoked.
pub fn tick(audit: &Audit, config: &Config, now: i64) -> Result<TickReport> {
    let actor = Actor::System("access".into());
    audit.record_with(|conn| {
        let mut report = TickReport::default();
        let mut events = Vec::new();
        for request in in_state(conn, None, State::Pending)? {
            if request.pending_until_us > now {
                continue;
            }
            finish(
                conn,
                &request,
                State::Pending,
                State::Expired,
                "nobody decided in time",
                &actor,
                now,
            )?;
            let cx = context(conn, &request)?;
            let email = emails::access_expired(&cx.names(&request));
            mail::enqueue(conn, &cx.requester.email, &email, &request.target(), now)?;
            events.push(
                AuditEvent::new(actor.clone(), "access.expired")
                    .target(request.target())
                    .details(
                        serde_json::json!({ "pending_until": format_us(request.pending_until_us) }),
                    ),
            );
            report.expired += 1;
        }
        for request in in_state(conn, None, State::Approved)? {
            let grant = match request.grant_id {
                Some(id) => Some(Grant::find(conn, id)?),
                None => None,
            };
            let grant_over = grant
                .as_ref()
                .is_none_or(|g| g.lifecycle(now) != Lifecycle::Live);
            let account_over = !account_active(conn, request.requester_id, now)?;
            if grant_over {
                let why = match &grant {
                    Some(g) if g.revoked_at_us.is_some() => "the firewall grant was revoked",
                    _ => "the approved time ran out",
                };
                finish(
                    conn,
                    &request,
                    State::Approved,
                    State::Ended,
                    why,
                    &actor,
                    now,
                )?;
                events.push(
                    AuditEvent::new(actor.clone(), "access.ended")
                        .target(request.target())
                        .details(serde_json::json!({ "why": why, "grant": request.grant_id })),
                );
                report.ended += 1;
            } else if account_over {
                events.extend(close_in(
                    conn,
                    config,
                    &actor,
                    &request,
                    "the technician's account ended",
                    "access.revoked",
                    "appliance",
                    now,
                )?);
                report.ended += 1;
            }
        }
        Ok((report, events))
    })
}
