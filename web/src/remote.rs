//! Remote access pages: sites (policy, approvers, machines, key switch, invitations) and
//! requests (ask, decide, connect, end, history, export). The rules live in
//! `appliance::access`; these handlers check who is asking and render the answer.

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::access::{
    self, Decision, Machine, NewRequest, PolicyChange, RequestView, Show, SitePolicy, State,
};
use appliance::grants::control::FirewallStatus;
use appliance::grants::{Agent, Grant};
use appliance::models::{Role, Site, User};
use appliance::{Actor, AuditEvent};
use askama::Template;
use serde::Deserialize;

use crate::{AppState, CsrfForm, Nav, SignedIn, WebError, html_with_status, see_other, source};

mod firewall;

pub use firewall::firewall_overview;
use firewall::{after_grant_change, revoke_pending};

type Page = Result<HttpResponse, WebError>;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/access", web::get().to(access_page))
        .route("/access", web::post().to(create_request))
        .route("/access/export", web::get().to(export))
        .route("/access/{id}", web::get().to(request_page))
        .route("/access/{id}/approve", web::post().to(approve))
        .route("/access/{id}/deny", web::post().to(deny))
        .route("/access/{id}/end", web::post().to(end))
        .route("/access/{id}/extend", web::post().to(extend))
        .route("/sites", web::get().to(sites_page))
        .route("/sites", web::post().to(create_site))
        .route("/sites/{id}", web::get().to(site_page))
        .route("/sites/{id}/details", web::post().to(set_details))
        .route("/sites/{id}/delete", web::post().to(delete_site))
        .route("/sites/{id}/policy", web::post().to(set_policy))
        .route("/sites/{id}/approvers", web::post().to(set_approver))
        .route("/sites/{id}/machines", web::post().to(add_machine))
        .route(
            "/sites/{id}/machines/{machine}/remove",
            web::post().to(remove_machine),
        )
        .route("/sites/{id}/key-switch", web::post().to(key_switch))
        .route("/sites/{id}/invite", web::post().to(invite));
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> appliance::error::Result<T> + Send + 'static,
) -> Result<T, WebError> {
    Ok(web::block(work).await??)
}

/// Asks the firewall to act now and the access worker to send what is owed. A firewall
/// that does not answer still applies the store's state at its next reconcile.
async fn after_change(state: &web::Data<AppState>) {
    state.worker.poke();
    let config = state.app.config.clone();
    if let Ok(Err(why)) = web::block(move || appliance::grants::poke_firewall(&config)).await {
        tracing::warn!(%why, "firewall did not answer the poke; it applies the change at its next reconcile");
    }
}

/// 422 for a page shown again with the reason its form was refused, else 200.
fn status_for(problem: &Option<String>) -> actix_web::http::StatusCode {
    if problem.is_some() {
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        actix_web::http::StatusCode::OK
    }
}

/// A refusal the person can act on is shown on the page they were on; anything else is an
/// error page.
fn problem_of(err: appliance::Error) -> Result<String, WebError> {
    match err {
        appliance::Error::Invalid { field, problem } => Ok(format!("{field}: {problem}")),
        appliance::Error::Conflict(problem) => Ok(problem),
        other => Err(other.into()),
    }
}

// ----- requests -----

struct MachineChoice {
    id: i64,
    label: String,
    agents: Vec<(String, String)>,
}

struct RequestRow {
    id: i64,
    state: String,
    site: String,
    machine: String,
    agent: String,
    requester: String,
    created: String,
    until: String,
    reason: String,
}

impl RequestRow {
    fn of(view: &RequestView) -> RequestRow {
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

fn may_request(role: Role) -> bool {
    matches!(role, Role::Technician | Role::Approver | Role::Admin)
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
            may_request: may_request(user.role),
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
        .and_then(|(m, a)| Some((m.parse::<i64>().ok()?, a.to_owned())))
        .unwrap_or((0, String::new()));
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
            Ok(see_other(&format!("/access/{}", request.id)))
        }
        Err(appliance::Error::NotFound(_)) if machine_id == 0 => {
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
    id: i64,
    problem: Option<String>,
) -> Page {
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    let lease_seconds = state.app.config.firewall.lease_seconds;
    let (view, approver, extendable, revoke_pending) = blocking(move || {
        let mut conn = app.store.conn()?;
        let view = access::find_visible(&mut conn, &account, id)?;
        let approver = access::is_approver(&mut conn, &account, view.request.site_id)?;
        let extendable = SitePolicy::of(&mut conn, view.request.site_id)?.requester_may_extend;
        let pending = match view.request.grant_id {
            Some(grant) => {
                let grant = Grant::find(&mut conn, grant)?;
                let health = FirewallStatus::health(FirewallStatus::read(&mut conn)?, now);
                revoke_pending(&grant, &health, lease_seconds, now)
            }
            None => None,
        };
        Ok((view, approver, extendable, pending))
    })
    .await?;
    let r = &view.request;
    let state_now = r.state()?;
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
        may_decide: approver && !is_requester && state_now == State::Pending,
        own_request_as_approver: approver && is_requester && state_now == State::Pending,
        may_extend: extendable && is_requester && state_now == State::Approved,
        may_revoke: (approver || user.role == Role::Admin)
            && !is_requester
            && state_now == State::Approved,
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
    request_page_with(&state, &user, path.into_inner(), None).await
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
    id: i64,
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
            Ok(see_other(&format!("/access/{id}")))
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
    decide_with(state, user, req, path.into_inner(), decision).await
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
    decide_with(state, user, req, path.into_inner(), decision).await
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
    let id = path.into_inner();
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
                .unwrap_or_else(|| format!("/access/{id}"));
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
    let id = path.into_inner();
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
            Ok(see_other(&format!("/access/{id}")))
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
    let (format, content_type, extension) = crate::pages::export_format(query.format.as_deref())?;
    let (app, account, from) = (state.app.clone(), user.user.clone(), source(&req));
    let file_name = format!("plantgate-access.{extension}");
    Ok(crate::download::attachment(
        content_type,
        &file_name,
        move |writer| {
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
        },
    ))
}

// ----- sites -----

struct SiteRow {
    id: i64,
    name: String,
    location: String,
    remote_enabled: bool,
    active: bool,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesPage {
    signed_in: Option<Nav>,
    csrf: String,
    rows: Vec<SiteRow>,
    is_admin: bool,
    problem: Option<String>,
}

async fn sites_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    problem: Option<String>,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let rows = blocking(move || {
        let mut conn = app.store.conn()?;
        let active = access::active_sites(&mut conn)?;
        let mut rows = Vec::new();
        for site in access::sites_for(&mut conn, &account)? {
            let policy = SitePolicy::of(&mut conn, site.id)?;
            rows.push(SiteRow {
                id: site.id.0,
                active: active.iter().any(|(s, on)| s.id == site.id && *on),
                name: site.name,
                location: site.location,
                remote_enabled: policy.remote_enabled,
            });
        }
        Ok(rows)
    })
    .await?;
    let status = status_for(&problem);
    html_with_status(
        &SitesPage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            rows,
            is_admin: user.role == Role::Admin,
            problem,
        },
        status,
    )
}

pub async fn sites_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    sites_page_with(&state, &user, None).await
}

#[derive(Debug, Default, Deserialize)]
pub struct SiteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    location: String,
}

pub async fn create_site(
    state: web::Data<AppState>,
    user: SignedIn,
    form: web::Form<SiteForm>,
) -> Page {
    user.admin_only("Changing sites")?;
    user.check_csrf(&form.csrf)?;
    let (app, account, form) = (state.app.clone(), user.user.clone(), form.into_inner());
    let created = web::block(move || {
        Site::create(
            &app.audit,
            &Actor::User(account.id),
            account.organisation_id,
            &form.name,
            &form.location,
        )
    })
    .await?;
    match created {
        Ok(site) => Ok(see_other(&format!("/sites/{}", site.id.0))),
        Err(err) => sites_page_with(&state, &user, Some(problem_of(err)?)).await,
    }
}

struct ApproverRow {
    id: i64,
    name: String,
    email: String,
}

struct MachineRow {
    id: i64,
    name: String,
    address: String,
    agents: String,
}

#[derive(Template)]
#[template(path = "site.html")]
struct SitePage {
    signed_in: Option<Nav>,
    csrf: String,
    site: Site,
    policy: SitePolicy,
    is_admin: bool,
    is_approver: bool,
    approvers: Vec<ApproverRow>,
    candidates: Vec<ApproverRow>,
    machines: Vec<MachineRow>,
    agents: Vec<(String, String)>,
    active: Vec<RequestRow>,
    problem: Option<String>,
}

async fn site_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    site: i64,
    problem: Option<String>,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let page = blocking(move || {
        let mut conn = app.store.conn()?;
        let site = visible_site(&mut conn, &account, site)?;
        let policy = SitePolicy::of(&mut conn, site.id)?;
        let approvers = access::approvers(&mut conn, site.id)?;
        let candidates = appliance::accounts::accounts_of(&mut conn, site.organisation_id)?
            .into_iter()
            .filter(|a| a.role == "approver" && a.disabled_at_us.is_none())
            .filter(|a| !approvers.iter().any(|u| u.id == a.id))
            .map(|a| ApproverRow {
                id: a.id.0,
                name: a.name,
                email: a.email,
            })
            .collect();
        let machines = Machine::of_site(&mut conn, site.id)?
            .into_iter()
            .map(|m| MachineRow {
                id: m.id,
                name: m.name,
                address: m.address,
                agents: m.agents.replace(',', ", "),
            })
            .collect();
        let agents = Agent::all(&mut conn)?
            .into_iter()
            .map(|a| (a.name, format!("{} ({})", a.label, a.ports)))
            .collect();
        let active = access::visible(&mut conn, &account, Show::Open, 500)?
            .into_iter()
            .filter(|v| v.request.site_id == site.id && v.request.state == "approved")
            .collect::<Vec<_>>();
        let is_approver = access::is_approver(&mut conn, &account, site.id)?;
        Ok((
            site,
            policy,
            approvers,
            candidates,
            machines,
            agents,
            active,
            is_approver,
        ))
    })
    .await?;
    let (site, policy, approvers, candidates, machines, agents, active, is_approver) = page;
    let status = status_for(&problem);
    html_with_status(
        &SitePage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            site,
            policy,
            is_admin: user.role == Role::Admin,
            is_approver,
            approvers: approvers
                .into_iter()
                .map(|u: User| ApproverRow {
                    id: u.id.0,
                    name: u.name,
                    email: u.email,
                })
                .collect(),
            candidates,
            machines,
            agents,
            active: active.iter().map(RequestRow::of).collect(),
            problem,
        },
        status,
    )
}

/// A site the user can see (their organisation's, or their one site), or "not found".
fn visible_site(
    conn: &mut appliance::DbConnection,
    user: &User,
    id: i64,
) -> appliance::error::Result<Site> {
    access::sites_for(conn, user)?
        .into_iter()
        .find(|s| s.id.0 == id)
        .ok_or(appliance::Error::NotFound("site"))
}

pub async fn site_page(state: web::Data<AppState>, user: SignedIn, path: web::Path<i64>) -> Page {
    site_page_with(&state, &user, path.into_inner(), None).await
}

/// Runs a change to a site and shows the site again: with the problem, if it was refused.
async fn change_site<T: Send + 'static>(
    state: web::Data<AppState>,
    user: SignedIn,
    site: i64,
    change: impl FnOnce(&appliance::Appliance, &User, &Site) -> appliance::error::Result<T>
    + Send
    + 'static,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let done = web::block(move || {
        let found = visible_site(&mut *app.store.conn()?, &account, site)?;
        change(&app, &account, &found)
    })
    .await?;
    match done {
        Ok(_) => {
            after_change(&state).await;
            Ok(see_other(&format!("/sites/{site}")))
        }
        Err(appliance::Error::Forbidden(why)) => Err(WebError::Forbidden(why)),
        Err(err) => {
            let problem = problem_of(err)?;
            site_page_with(&state, &user, site, Some(problem)).await
        }
    }
}

/// Renames a site or changes its location.
pub async fn set_details(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<SiteForm>,
) -> Page {
    user.admin_only("Changing sites")?;
    user.check_csrf(&form.csrf)?;
    let form = form.into_inner();
    change_site(state, user, path.into_inner(), move |app, account, site| {
        Site::update(
            &app.audit,
            &Actor::User(account.id),
            account.organisation_id,
            site.id,
            &form.name,
            &form.location,
        )
    })
    .await
}

/// Deletes a site without history; one with history is kept, and the page says why.
pub async fn delete_site(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Changing sites")?;
    user.check_csrf(&form.csrf)?;
    let id = path.into_inner();
    let (app, account) = (state.app.clone(), user.user.clone());
    let deleted = web::block(move || {
        let site = visible_site(&mut *app.store.conn()?, &account, id)?;
        Site::delete(
            &app.audit,
            &Actor::User(account.id),
            account.organisation_id,
            site.id,
        )
    })
    .await?;
    match deleted {
        Ok(()) => {
            after_change(&state).await;
            Ok(see_other("/sites"))
        }
        Err(err) => {
            let problem = problem_of(err)?;
            site_page_with(&state, &user, id, Some(problem)).await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    approval_required: Option<String>,
    #[serde(default)]
    max_minutes: String,
    #[serde(default)]
    allowed_hours: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    requester_may_extend: Option<String>,
    #[serde(default)]
    declared_networks: String,
    #[serde(default)]
    device_allowlist: String,
}

pub async fn set_policy(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<PolicyForm>,
) -> Page {
    user.admin_only("Changing sites")?;
    user.check_csrf(&form.csrf)?;
    let form = form.into_inner();
    let change = PolicyChange {
        approval_required: form.approval_required.is_some(),
        max_minutes: form.max_minutes,
        allowed_hours: form.allowed_hours,
        timezone: form.timezone,
        requester_may_extend: form.requester_may_extend.is_some(),
        declared_networks: form.declared_networks,
        device_allowlist: form.device_allowlist,
    };
    change_site(state, user, path.into_inner(), move |app, account, site| {
        SitePolicy::set(
            &app.audit,
            &Actor::User(account.id),
            &app.config,
            site,
            &change,
        )
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct ApproverForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    action: String,
}

pub async fn set_approver(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<ApproverForm>,
) -> Page {
    user.admin_only("Changing sites")?;
    user.check_csrf(&form.csrf)?;
    let target = form.user.trim().parse::<i64>().unwrap_or(0);
    let add = form.action != "remove";
    change_site(state, user, path.into_inner(), move |app, account, site| {
        access::set_approver(
            &app.audit,
            &Actor::User(account.id),
            site,
            appliance::models::UserId(target),
            add,
        )
    })
    .await
}

#[derive(Debug, Default)]
struct MachineForm {
    csrf: String,
    name: String,
    address: String,
}

pub async fn add_machine(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    body: web::Bytes,
) -> Page {
    user.admin_only("Changing sites")?;
    // Several `agents` checkboxes arrive as repeated keys, which serde's form reader
    // cannot collect; read the pairs directly.
    let mut form = MachineForm::default();
    let mut agents = Vec::new();
    for (key, value) in url::form_urlencoded::parse(&body) {
        match key.as_ref() {
            "csrf" => form.csrf = value.into_owned(),
            "name" => form.name = value.into_owned(),
            "address" => form.address = value.into_owned(),
            "agents" => agents.extend(value.split(',').map(|a| a.trim().to_owned())),
            _ => {}
        }
    }
    user.check_csrf(&form.csrf)?;
    change_site(state, user, path.into_inner(), move |app, account, site| {
        Machine::add(
            &app.audit,
            &Actor::User(account.id),
            &app.config,
            site,
            &form.name,
            &form.address,
            &agents,
        )
    })
    .await
}

pub async fn remove_machine(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<(i64, i64)>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Changing sites")?;
    user.check_csrf(&form.csrf)?;
    let (site, machine) = path.into_inner();
    change_site(state, user, site, move |app, account, site| {
        let found = Machine::find(&mut *app.store.conn()?, account.organisation_id, machine)?;
        if found.site_id != site.id {
            return Err(appliance::Error::NotFound("machine"));
        }
        Machine::remove(
            &app.audit,
            &Actor::User(account.id),
            account.organisation_id,
            machine,
        )
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct KeySwitchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
}

pub async fn key_switch(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<KeySwitchForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let on = match form.enabled.as_str() {
        "on" => true,
        "off" => false,
        other => {
            return Err(WebError::BadRequest(format!(
                "enabled: {other:?} is not on or off"
            )));
        }
    };
    let (from, now) = (source(&req), state.now());
    change_site(state, user, path.into_inner(), move |app, account, site| {
        access::set_key_switch(&app.audit, &app.config, Some(account), site, on, &from, now)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct InviteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    days: String,
}

pub async fn invite(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<InviteForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let (from, now, form) = (source(&req), state.now(), form.into_inner());
    change_site(state, user, path.into_inner(), move |app, account, site| {
        access::invite_contractor(
            &app.audit,
            &app.config,
            account,
            site,
            &form.name,
            &form.email,
            &form.days,
            &from,
            now,
        )
    })
    .await
}
