//! Remote-access requests: a technician asks for a machine and agent, an approver decides,
//! the requester connects and ends (or extends) the session, an approver or administrator
//! revokes it; the history, and its export.

use actix_web::{HttpRequest, web};
use appliance::access::{self, Decision, Machine, NewRequest, RequestView, Show};
use appliance::grants::control::FirewallStatus;
use appliance::grants::{Agent, Grant};
use appliance::ids::{AccessRequestId, MachineId};
use appliance::{Actor, AuditEvent};
use askama::Template;
use serde::Deserialize;

use super::firewall::{after_change, after_grant_change, revoke_pending};
use super::shared::{blocking, problem_of};
use crate::client::source;
use crate::download::{attachment, export_format};
use crate::error::WebError;
use crate::render::{Nav, Page, html_with_status, see_other, status_for};
use crate::session::SignedIn;
use crate::state::AppState;

struct MachineChoice {
    id: MachineId,
    label: String,
    agents: Vec<(String, String)>,
}

pub(super) struct RequestRow {
    pub(super) id: AccessRequestId,
    pub(super) state: String,
    pub(super) site: String,
    pub(super) machine: String,
    pub(super) agent: String,
    pub(super) requester: String,
    pub(super) created: String,
    pub(super) until: String,
    pub(super) reason: String,
}

impl RequestRow {
    pub(super) fn of(view: &RequestView) -> RequestRow {
        let r = &view.request;
        RequestRow {
            id: r.id,
            state: r.state.clone(),
            site: view.site.clone(),
            machine: view.machine.clone(),
            agent: r.agent.clone(),
            requester: view.requester.clone(),
            created: access::short_time(r.created_at_us),
            until: view
                .expires_at_us
                .map(access::short_time)
                .unwrap_or_default(),
            reason: r.reason.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "access.html")]
struct AccessPage {
    signed_in: Option<Nav>,
    csrf: String,
    may_request: bool,
    machines: Vec<MachineChoice>,
    open: Vec<RequestRow>,
    history: Vec<RequestRow>,
    problem: Option<String>,
    form: RequestForm,
    source: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct RequestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    minutes: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    declared_address: String,
}

async fn access_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    req: &HttpRequest,
    problem: Option<String>,
    form: RequestForm,
) -> Page {
    let account = user.user.clone();
    let app = state.app.clone();
    let (machines, open, history) = blocking(move || {
        let mut conn = app.store.conn()?;
        let agents = Agent::all(&mut conn)?;
        let mut machines = Vec::new();
        for site in access::sites_for(&mut conn, &account)? {
            for machine in Machine::of_site(&mut conn, site.id)? {
                let offered = machine
                    .agent_names()
                    .iter()
                    .filter_map(|name| agents.iter().find(|a| a.name == *name))
                    .map(|a| (a.name.clone(), format!("{} ({})", a.label, a.ports)))
                    .collect();
                machines.push(MachineChoice {
                    id: machine.id,
                    label: format!("{} — {} ({})", site.name, machine.name, machine.address),
                    agents: offered,
                });
            }
        }
        let open = access::visible(&mut conn, &account, Show::Open, 200)?;
        let all = access::visible(&mut conn, &account, Show::All, 200)?;
        Ok((machines, open, all))
    })
    .await?;
    let status = status_for(&problem);
    html_with_status(
        &AccessPage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            may_request: access::may_request(user.role),
            machines,
            open: open.iter().map(RequestRow::of).collect(),
            history: history
                .iter()
                .filter(|v| !matches!(v.request.state.as_str(), "pending" | "approved"))
                .map(RequestRow::of)
                .collect(),
            problem,
            form,
            source: source(req),
        },
        status,
    )
}

pub async fn access_page(state: web::Data<AppState>, user: SignedIn, req: HttpRequest) -> Page {
    access_page_with(&state, &user, &req, None, RequestForm::default()).await
}

/// A technician's request. The form's `target` is `MACHINE_ID/AGENT`.
pub async fn create_request(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    form: web::Form<RequestForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let form = form.into_inner();
    let (machine_id, agent) = form
        .target
        .split_once('/')
        .and_then(|(m, a)| Some((MachineId(m.parse::<i64>().ok()?), a.to_owned())))
        .unwrap_or((MachineId(0), String::new()));
    let new = NewRequest {
        machine_id,
        agent,
        minutes: form.minutes.clone(),
        reason: form.reason.clone(),
        declared_address: form.declared_address.clone(),
    };
    let (app, account, from, now) = (
        state.app.clone(),
        user.user.clone(),
        source(&req),
        state.now(),
    );
    let created =
        web::block(move || access::request(&app.audit, &app.config, &account, &from, &new, now))
            .await?;
    match created {
        Ok(request) => {
            after_change(&state).await;
            Ok(see_other(&format!("/access/{}", request.id.0)))
        }
        Err(appliance::Error::NotFound(_)) if machine_id == MachineId(0) => {
            access_page_with(
                &state,
                &user,
                &req,
                Some("choose a machine and agent".into()),
                form,
            )
            .await
        }
        Err(err) => {
            let problem = problem_of(err)?;
            access_page_with(&state, &user, &req, Some(problem), form).await
        }
    }
}

#[derive(Template)]
#[template(path = "access_request.html")]
struct RequestPage {
    signed_in: Option<Nav>,
    csrf: String,
    view: RequestView,
    created: String,
    pending_until: String,
    decided_at: String,
    expires: String,
    connected: String,
    ended: String,
    minutes_left: i64,
    is_requester: bool,
    may_decide: bool,
    may_revoke: bool,
    own_request_as_approver: bool,
    may_extend: bool,
    approved_minutes: i64,
    requested_minutes: i64,
    problem: Option<String>,
    /// Set while a revoke waits for the firewall controller.
    revoke_pending: Option<String>,
}

async fn request_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    id: AccessRequestId,
    problem: Option<String>,
) -> Page {
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    let lease_seconds = state.app.config.firewall.lease_seconds;
    let (view, allowed, revoke_pending) = blocking(move || {
        let mut conn = app.store.conn()?;
        let view = access::find_visible(&mut conn, &account, id)?;
        let allowed = access::Allowed::of(&mut conn, &account, &view.request)?;
        let pending = match view.request.grant_id {
            Some(grant) => {
                let grant = Grant::find(&mut conn, grant)?;
                let health = FirewallStatus::health(FirewallStatus::read(&mut conn)?, now);
                revoke_pending(&grant, &health, lease_seconds, now)
            }
            None => None,
        };
        Ok((view, allowed, pending))
    })
    .await?;
    let r = &view.request;
    let is_requester = r.requester_id == user.user.id;
    let time = |us: Option<i64>| us.map(access::short_time).unwrap_or_default();
    let page = RequestPage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        created: access::short_time(r.created_at_us),
        pending_until: access::short_time(r.pending_until_us),
        decided_at: time(r.decided_at_us),
        expires: time(view.expires_at_us),
        connected: time(view.connected_at_us),
        ended: time(r.ended_at_us),
        minutes_left: view
            .expires_at_us
            .map(|e| ((e - now).max(0) + 59_999_999) / 60_000_000)
            .unwrap_or(0),
        may_decide: allowed.decide,
        own_request_as_approver: allowed.own_request_as_approver,
        may_extend: allowed.extend,
        may_revoke: allowed.revoke,
        is_requester,
        approved_minutes: r.approved_seconds.unwrap_or(0) / 60,
        requested_minutes: r.requested_seconds / 60,
        problem: problem.clone(),
        revoke_pending,
        view,
    };
    let status = status_for(&problem);
    html_with_status(&page, status)
}

pub async fn request_page(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
) -> Page {
    request_page_with(&state, &user, AccessRequestId(path.into_inner()), None).await
}

#[derive(Debug, Default, Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    minutes: String,
    #[serde(default)]
    reason: String,
}

async fn decide_with(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    id: AccessRequestId,
    decision: Decision,
) -> Page {
    let (app, account, from, now) = (
        state.app.clone(),
        user.user.clone(),
        source(&req),
        state.now(),
    );
    let decided = web::block(move || {
        access::decide(&app.audit, &app.config, &account, id, &decision, &from, now)
    })
    .await?;
    match decided {
        Ok(request) => {
            after_grant_change(&state, Actor::User(user.user.id), request.grant_id).await;
            Ok(see_other(&format!("/access/{}", id.0)))
        }
        Err(err) => {
            let problem = problem_of(err)?;
            request_page_with(&state, &user, id, Some(problem)).await
        }
    }
}

pub async fn approve(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<DecisionForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let decision = Decision::Approve {
        minutes: form.minutes.clone(),
    };
    decide_with(
        state,
        user,
        req,
        AccessRequestId(path.into_inner()),
        decision,
    )
    .await
}

pub async fn deny(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<DecisionForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let decision = Decision::Deny {
        reason: form.reason.clone(),
    };
    decide_with(
        state,
        user,
        req,
        AccessRequestId(path.into_inner()),
        decision,
    )
    .await
}

/// Cancel (requester, pending), end (requester, approved) or revoke (approver, admin).
pub async fn end(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<DecisionForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let id = AccessRequestId(path.into_inner());
    let (app, account, from, now, reason) = (
        state.app.clone(),
        user.user.clone(),
        source(&req),
        state.now(),
        form.reason.clone(),
    );
    let ended =
        web::block(move || access::end(&app.audit, &app.config, &account, id, &reason, &from, now))
            .await?;
    match ended {
        Ok(request) => {
            after_grant_change(&state, Actor::User(user.user.id), request.grant_id).await;
            let back = req
                .headers()
                .get("referer")
                .and_then(|r| r.to_str().ok())
                .and_then(|r| url::Url::parse(r).ok())
                .filter(|u| u.path().starts_with("/sites/"))
                .map(|u| u.path().to_owned())
                .unwrap_or_else(|| format!("/access/{}", id.0));
            Ok(see_other(&back))
        }
        Err(err) => {
            let problem = problem_of(err)?;
            request_page_with(&state, &user, id, Some(problem)).await
        }
    }
}

/// The technician adds minutes to their own live session, where the site allows it.
pub async fn extend(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<DecisionForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let id = AccessRequestId(path.into_inner());
    let (app, account, from, now, minutes) = (
        state.app.clone(),
        user.user.clone(),
        source(&req),
        state.now(),
        form.minutes.clone(),
    );
    let extended =
        web::block(move || access::extend(&app.audit, &account, id, &minutes, &from, now)).await?;
    match extended {
        Ok(request) => {
            after_grant_change(&state, Actor::User(user.user.id), request.grant_id).await;
            Ok(see_other(&format!("/access/{}", id.0)))
        }
        Err(appliance::Error::Forbidden(why)) => Err(WebError::Forbidden(why)),
        Err(err) => {
            let problem = problem_of(err)?;
            request_page_with(&state, &user, id, Some(problem)).await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
}

/// Every request the user may see, for forensics; the export itself is audited.
pub async fn export(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    query: web::Query<ExportQuery>,
) -> Page {
    let (format, content_type, extension) = export_format(query.format.as_deref())?;
    let (app, account, from) = (state.app.clone(), user.user.clone(), source(&req));
    let file_name = format!("plantgate-access.{extension}");
    Ok(attachment(content_type, &file_name, move |writer| {
        let result = app
            .store
            .conn()
            .and_then(|mut conn| access::export(&mut conn, &account, format, writer))
            .map_err(|e| e.to_string());
        let event = AuditEvent::new(Actor::User(account.id), "access.exported").source(from);
        let event = match &result {
            Ok(count) => {
                event.details(serde_json::json!({ "format": extension, "requests": count }))
            }
            Err(problem) => event
                .outcome(appliance::Outcome::Failure)
                .details(serde_json::json!({ "format": extension, "error": problem })),
        };
        if let Err(err) = app.audit.record(event) {
            tracing::error!(error = %err, "could not audit an access export");
        }
        result.map(|_| ())
    }))
}
