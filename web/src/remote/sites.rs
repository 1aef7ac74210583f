//! Sites: their details, remote-access policy, approvers and machines, the key switch, and
//! contractors invited to one site.

use actix_web::{HttpRequest, web};
use appliance::Actor;
use appliance::access::{self, Machine, NewMachine, PolicyChange, Show, SitePolicy};
use appliance::grants::Agent;
use appliance::ids::MachineId;
use appliance::models::{Role, Site, User};
use askama::Template;
use serde::Deserialize;

use super::firewall::{after_change, after_grant_change};
use super::requests::RequestRow;
use super::shared::{blocking, problem_of};
use crate::client::source;
use crate::error::WebError;
use crate::forms::CsrfForm;
use crate::render::{Nav, Page, html_with_status, see_other, status_for};
use crate::session::SignedIn;
use crate::state::AppState;

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
    let now = state.now();
    let created = web::block(move || {
        Site::create(
            &app.audit,
            &Actor::User(account.id),
            account.organisation_id,
            &form.name,
            &form.location,
            now,
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
    id: MachineId,
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
    /// The metrics its devices send, for charts of them side by side.
    metrics: Vec<String>,
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
        let site = access::visible_site(&mut conn, &account, site)?;
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
        let mut metrics = Vec::new();
        for device in appliance::devices::Device::list_for_site(&mut conn, site.id)? {
            metrics.extend(appliance::series::metrics_of(&mut conn, device.id)?);
        }
        metrics.sort();
        metrics.dedup();
        Ok((
            site,
            policy,
            approvers,
            candidates,
            machines,
            agents,
            active,
            is_approver,
            metrics,
        ))
    })
    .await?;
    let (site, policy, approvers, candidates, machines, agents, active, is_approver, metrics) =
        page;
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
            metrics,
            problem,
        },
        status,
    )
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
        let found = access::visible_site(&mut *app.store.conn()?, &account, site)?;
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
        let site = access::visible_site(&mut *app.store.conn()?, &account, id)?;
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
    let now = state.now();
    change_site(state, user, path.into_inner(), move |app, account, site| {
        SitePolicy::set(
            &app.audit,
            &Actor::User(account.id),
            &app.config,
            site,
            &change,
            now,
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
    let now = state.now();
    change_site(state, user, path.into_inner(), move |app, account, site| {
        Machine::add(
            &app.audit,
            &Actor::User(account.id),
            &app.config,
            site,
            &NewMachine {
                name: &form.name,
                address: &form.address,
                agents: &agents,
            },
            now,
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
    let machine = MachineId(machine);
    let now = state.now();
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
            now,
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
    let (actor, after) = (Actor::User(user.user.id), state.clone());
    let (cut_grants, cut) = std::sync::mpsc::channel();
    let page = change_site(state, user, path.into_inner(), move |app, account, site| {
        let grants =
            access::set_key_switch(&app.audit, &app.config, Some(account), site, on, &from, now)?;
        let _ = cut_grants.send(grants);
        Ok(())
    })
    .await;
    // Each session cut is a revoke: confirmed by the controller, or audited and mailed as
    // pending, and shown so on its request's page, as when an approver ends one.
    for grant in cut.try_iter().flatten() {
        after_grant_change(&after, actor.clone(), Some(grant)).await;
    }
    page
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
