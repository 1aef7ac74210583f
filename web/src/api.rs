//! The REST API under `/api/v1`: JSON, bearer tokens with scopes, errors in one shape
//! (`{"error": code, "message": ...}`), rate limits per token and per address, and an
//! OpenAPI 3 document generated from the handlers by utoipa.

use actix_web::http::Method;
use actix_web::{HttpResponse, Route, web};
use appliance::audit::export::{self, ExportFilter};
use appliance::models::{Role, User};
use appliance::time::{format_us, parse_instant};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::state::AppState;

mod alert_rules;
pub mod caller;
mod connectors;
mod devices;
pub mod error;
mod firmware;
pub mod stream;

pub use caller::ApiCaller;
pub use error::{ApiError, ErrorBody};
use firmware::FirmwareItem;

/// One operation of the API: its method, its path under `/api/v1`, and its handler.
pub struct ApiRoute {
    pub method: Method,
    pub path: &'static str,
    pub(crate) route: Route,
}

impl std::fmt::Debug for ApiRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} /api/v1{}", self.method, self.path)
    }
}

fn op(method: Method, path: &'static str, route: Route) -> ApiRoute {
    ApiRoute {
        method,
        path,
        route,
    }
}

/// The API's route table: the router is built from it ([`crate::routes`]), and the tests compare
/// it with the OpenAPI document, so neither can gain an operation the other lacks.
pub fn routes() -> Vec<ApiRoute> {
    vec![
        op(Method::GET, "/openapi.json", web::to(openapi)),
        op(Method::GET, "/me", web::to(me)),
        op(Method::GET, "/users", web::to(users)),
        op(Method::GET, "/audit", web::to(audit)),
        op(Method::GET, "/readings", web::to(readings)),
        op(Method::GET, "/readings/export", web::to(stream::export)),
        op(Method::GET, "/readings/stream", web::to(stream::stream)),
        op(Method::GET, "/machines", web::to(machines)),
        op(Method::GET, "/devices", web::to(devices::devices)),
        op(Method::POST, "/devices", web::to(devices::register_device)),
        op(
            Method::POST,
            "/devices/{serial}/rotate",
            web::to(devices::rotate_device),
        ),
        op(
            Method::POST,
            "/devices/{serial}/revoke",
            web::to(devices::revoke_device),
        ),
        op(
            Method::POST,
            "/devices/{serial}/move",
            web::to(devices::move_device),
        ),
        op(
            Method::GET,
            "/alert-rules",
            web::to(alert_rules::alert_rules),
        ),
        op(
            Method::POST,
            "/alert-rules",
            web::to(alert_rules::create_alert_rule),
        ),
        op(
            Method::PUT,
            "/alert-rules/{id}",
            web::to(alert_rules::update_alert_rule),
        ),
        op(
            Method::DELETE,
            "/alert-rules/{id}",
            web::to(alert_rules::remove_alert_rule),
        ),
        op(
            Method::POST,
            "/alert-rules/{id}/disable",
            web::to(alert_rules::disable_alert_rule),
        ),
        op(
            Method::POST,
            "/alert-rules/{id}/enable",
            web::to(alert_rules::enable_alert_rule),
        ),
        op(
            Method::POST,
            "/alert-tests",
            web::to(alert_rules::test_alert_rule),
        ),
        op(Method::GET, "/alerts", web::to(alert_rules::alerts)),
        op(Method::GET, "/connectors", web::to(connectors::connectors)),
        op(
            Method::GET,
            "/connectors/{id}/deliveries",
            web::to(connectors::deliveries),
        ),
        op(
            Method::POST,
            "/connectors/{id}/pause",
            web::to(connectors::pause_connector),
        ),
        op(
            Method::POST,
            "/connectors/{id}/resume",
            web::to(connectors::resume_connector),
        ),
        op(
            Method::DELETE,
            "/connectors/{id}",
            web::to(connectors::remove_connector),
        ),
        op(Method::GET, "/access-requests", web::to(access_requests)),
        op(Method::GET, "/firmware", web::to(firmware::firmware_list)),
        op(
            Method::POST,
            "/firmware",
            web::to(firmware::firmware_upload),
        ),
    ]
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Plantgate API", version = "1", description = "The appliance's REST API. Authenticate with `Authorization: Bearer pgt_...`."),
    paths(openapi, me, users, audit, readings, machines, access_requests, firmware::firmware_list, firmware::firmware_upload,
        devices::devices, devices::register_device, devices::rotate_device, devices::revoke_device, devices::move_device,
        alert_rules::alert_rules, alert_rules::create_alert_rule, alert_rules::update_alert_rule, alert_rules::remove_alert_rule,
        alert_rules::disable_alert_rule, alert_rules::enable_alert_rule, alert_rules::test_alert_rule, alert_rules::alerts,
        connectors::connectors, connectors::deliveries, connectors::pause_connector, connectors::resume_connector,
        connectors::remove_connector),
    components(schemas(Me, UserItem, AuditItem, AuditPage, ReadingItem, ReadingsPage, MachineItem, AgentItem, AccessRequestItem, FirmwareItem, ErrorBody,
        devices::DeviceItem, devices::NewDeviceBody, devices::NewDevice, devices::DeviceSecret, devices::MoveBody,
        alert_rules::RuleItem, alert_rules::AlertItem, alert_rules::TestItem, alert_rules::EpisodeItem,
        connectors::ConnectorItem, connectors::DeliveryItem,
        crate::telemetry::input::RuleInput)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole OpenAPI document of the API: every operation of [`routes`].
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(<stream::ReadingsDoc as OpenApi>::openapi());
    doc
}

/// This document: the API's operations, parameters and answers (OpenAPI 3.1).
#[utoipa::path(get, path = "/api/v1/openapi.json", responses(
    (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)
))]
async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    user_id: i64,
    email: String,
    role: String,
    organisation_id: i64,
    token_name: String,
    scopes: Vec<String>,
    token_expires: String,
}

/// The token's owner and what the token may do.
#[utoipa::path(get, path = "/api/v1/me", responses(
    (status = 200, body = Me), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = [])))]
async fn me(caller: ApiCaller) -> HttpResponse {
    HttpResponse::Ok().json(Me {
        user_id: caller.user.id.0,
        email: caller.user.email.clone(),
        role: caller.role.to_string(),
        organisation_id: caller.user.organisation_id.0,
        token_name: caller.token.name.clone(),
        scopes: caller.token.scopes.split(',').map(str::to_owned).collect(),
        token_expires: format_us(caller.token.expires_at_us),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserItem {
    id: i64,
    name: String,
    email: String,
    role: String,
}

/// The users of the caller's own organisation; other organisations are invisible.
#[utoipa::path(get, path = "/api/v1/users", responses(
    (status = 200, body = [UserItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["users:read"])))]
async fn users(state: web::Data<AppState>, caller: ApiCaller) -> Result<HttpResponse, ApiError> {
    caller.require("users:read")?;
    let organisation = caller.user.organisation_id;
    let listing = web::block(move || User::list_all(&mut *state.app.store.conn()?)).await??;
    let items: Vec<UserItem> = listing
        .into_iter()
        .filter(|l| l.user.organisation_id == organisation)
        .map(|l| UserItem {
            id: l.user.id.0,
            name: l.user.name,
            email: l.user.email,
            role: l.user.role,
        })
        .collect();
    Ok(HttpResponse::Ok().json(items))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditParams {
    /// RFC 3339 time (a date alone also works); records at or after it.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Records before it.
    #[param(format = DateTime)]
    until: Option<String>,
    /// An action code, or a prefix ending in `.`.
    #[param(pattern = r"^[^\x00]*$")]
    action: Option<String>,
    #[param(pattern = r"^[^\x00]*$")]
    actor: Option<String>,
    #[param(pattern = r"^[^\x00]*$")]
    target: Option<String>,
    /// Only records with this outcome.
    #[param(inline)]
    outcome: Option<AuditOutcome>,
    /// Records older than this sequence number (the previous page's `next_before`).
    before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// An audit record's outcome, as the `outcome` filter takes it.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Success,
    Failure,
    Denied,
}

impl AuditOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Failure => "failure",
            AuditOutcome::Denied => "denied",
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditItem {
    seq: i64,
    time: String,
    actor_kind: String,
    actor_id: String,
    source: String,
    action: String,
    target: String,
    outcome: String,
    details: serde_json::Value,
    hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    records: Vec<AuditItem>,
    /// Pass as `before` for the next, older page; absent on the last page.
    next_before: Option<i64>,
}

/// The audit log, newest first, filtered and paged.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditParams), responses(
    (status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["audit:read"])))]
async fn audit(
    state: web::Data<AppState>,
    caller: ApiCaller,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require("audit:read")?;
    // The log holds every organisation's actions: the operator organisation's only.
    let organisation = caller.user.organisation_id;
    let operator = {
        let state = state.clone();
        web::block(move || {
            appliance::models::Organisation::find(&mut *state.app.store.conn()?, organisation)
        })
        .await??
        .operator
    };
    if !matches!(caller.role, Role::Admin | Role::Auditor) || !operator {
        return Err(ApiError::MissingScope(
            "audit:read (for an administrator or auditor of the organisation that runs the appliance)",
        ));
    }
    let params = params.into_inner();
    let instant = |raw: &Option<String>| {
        raw.as_deref()
            .map(parse_instant)
            .transpose()
            .map_err(ApiError::Invalid)
    };
    let filter = ExportFilter {
        since_us: instant(&params.since)?,
        until_us: instant(&params.until)?,
        actor: params.actor,
        action: params.action,
        target: params.target,
        outcome: params.outcome.map(|o| o.as_str().to_owned()),
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid("limit: between 1 and 1000".into()));
    }
    let before = params.before;
    let records =
        web::block(move || export::page(&mut *state.app.store.conn()?, &filter, before, limit + 1))
            .await??;
    let next_before = (records.len() as i64 > limit).then(|| records[limit as usize - 1].seq);
    let records = records
        .into_iter()
        .take(limit as usize)
        .map(|r| AuditItem {
            seq: r.seq,
            time: format_us(r.occurred_at_us),
            details: serde_json::from_str(&r.details)
                .unwrap_or(serde_json::Value::String(r.details)),
            actor_kind: r.actor_kind,
            actor_id: r.actor_id,
            source: r.source,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            hash: hex::encode(&r.hash),
        })
        .collect();
    Ok(HttpResponse::Ok().json(AuditPage {
        records,
        next_before,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ReadingsParams {
    /// The device's serial.
    #[param(pattern = r"^[^\x00]*$")]
    device: String,
    /// Only this metric, such as `temperature_c`.
    #[param(pattern = r"^[^\x00]*$")]
    metric: Option<String>,
    /// RFC 3339 time (a date alone also works); readings measured at or after it.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Readings measured before it.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Readings stored after this id (the previous page's `next_after`).
    after: Option<i64>,
    /// Page size, 1 to 5000 (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadingItem {
    id: i64,
    seq: i64,
    metric: String,
    value: f64,
    measured_at: String,
    received_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadingsPage {
    device: String,
    readings: Vec<ReadingItem>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<i64>,
}

/// A device's readings, paged in storage order. Devices of other organisations are not found.
#[utoipa::path(get, path = "/api/v1/readings", params(ReadingsParams), responses(
    (status = 200, body = ReadingsPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["readings:read"])))]
async fn readings(
    state: web::Data<AppState>,
    caller: ApiCaller,
    params: web::Query<ReadingsParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require("readings:read")?;
    let params = params.into_inner();
    let instant = |raw: &Option<String>| {
        raw.as_deref()
            .map(parse_instant)
            .transpose()
            .map_err(ApiError::Invalid)
    };
    let (since, until) = (instant(&params.since)?, instant(&params.until)?);
    let limit = params.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::Invalid("limit: between 1 and 5000".into()));
    }
    let organisation = caller.user.organisation_id;
    let (serial, metric, after) = (params.device, params.metric, params.after);
    let found = web::block(
        move || -> appliance::error::Result<Option<(String, Vec<appliance::readings::Reading>)>> {
            let mut conn = state.app.store.conn()?;
            let Some(device) = appliance::devices::Device::find_by_serial(&mut conn, &serial)?
            else {
                return Ok(None);
            };
            if device.organisation_id != organisation {
                return Ok(None);
            }
            let page = appliance::readings::page(
                &mut conn,
                device.id,
                metric.as_deref(),
                since,
                until,
                after,
                limit + 1,
            )?;
            Ok(Some((device.serial, page)))
        },
    )
    .await??;
    let Some((device, rows)) = found else {
        return Err(ApiError::NotFound);
    };
    let next_after = (rows.len() as i64 > limit).then(|| rows[limit as usize - 1].id);
    let readings = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| ReadingItem {
            id: r.id,
            seq: r.seq,
            metric: r.metric,
            value: r.value,
            measured_at: format_us(r.measured_at_us),
            received_at: format_us(r.received_at_us),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ReadingsPage {
        device,
        readings,
        next_after,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentItem {
    name: String,
    label: String,
    /// Such as `tcp/102` or `tcp/44818,udp/2222`.
    ports: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MachineItem {
    id: i64,
    site_id: i64,
    site: String,
    name: String,
    /// Its address on the device network.
    address: String,
    agents: Vec<AgentItem>,
}

/// The machines on the device network at the sites the caller can see, with their device
/// agents.
#[utoipa::path(get, path = "/api/v1/machines", responses(
    (status = 200, body = [MachineItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["access:read"])))]
async fn machines(state: web::Data<AppState>, caller: ApiCaller) -> Result<HttpResponse, ApiError> {
    caller.require("access:read")?;
    let user = caller.user.clone();
    let items = web::block(move || -> appliance::error::Result<Vec<MachineItem>> {
        let mut conn = state.app.store.conn()?;
        let agents = appliance::grants::Agent::all(&mut conn)?;
        let mut items = Vec::new();
        for site in appliance::access::sites_for(&mut conn, &user)? {
            for machine in appliance::access::Machine::of_site(&mut conn, site.id)? {
                items.push(MachineItem {
                    id: machine.id.0,
                    site_id: site.id.0,
                    site: site.name.clone(),
                    agents: machine
                        .agent_names()
                        .iter()
                        .filter_map(|name| agents.iter().find(|a| a.name == *name))
                        .map(|a| AgentItem {
                            name: a.name.clone(),
                            label: a.label.clone(),
                            ports: a.ports.to_string(),
                        })
                        .collect(),
                    name: machine.name,
                    address: machine.address,
                });
            }
        }
        Ok(items)
    })
    .await??;
    Ok(HttpResponse::Ok().json(items))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AccessRequestParams {
    /// `open` (pending and approved, the default) or `all`.
    #[param(inline)]
    state: Option<RequestsShown>,
    /// At most this many, newest first: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Which remote-access requests to list.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestsShown {
    Open,
    All,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessRequestItem {
    id: i64,
    /// pending, approved, denied, expired, cancelled or ended.
    state: String,
    site_id: i64,
    site: String,
    machine_id: i64,
    machine: String,
    device_addr: String,
    agent: String,
    requester: String,
    requester_email: String,
    requester_addr: String,
    reason: String,
    requested_minutes: i64,
    created_at: String,
    decided_by: Option<String>,
    decided_at: Option<String>,
    expires_at: Option<String>,
    ended_at: Option<String>,
    end_reason: Option<String>,
}

/// Remote-access requests the caller may see: their own, their sites' as an approver, and
/// their organisation's as an administrator.
#[utoipa::path(get, path = "/api/v1/access-requests", params(AccessRequestParams), responses(
    (status = 200, body = [AccessRequestItem]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["access:read"])))]
async fn access_requests(
    state: web::Data<AppState>,
    caller: ApiCaller,
    params: web::Query<AccessRequestParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require("access:read")?;
    let show = match params.state {
        None | Some(RequestsShown::Open) => appliance::access::Show::Open,
        Some(RequestsShown::All) => appliance::access::Show::All,
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid("limit: between 1 and 1000".into()));
    }
    let user = caller.user.clone();
    let views = web::block(move || {
        appliance::access::visible(&mut *state.app.store.conn()?, &user, show, limit)
    })
    .await??;
    let items: Vec<AccessRequestItem> = views
        .into_iter()
        .map(|v| AccessRequestItem {
            id: v.request.id.0,
            state: v.request.state,
            site_id: v.request.site_id.0,
            site: v.site,
            machine_id: v.request.machine_id.0,
            machine: v.machine,
            device_addr: v.device_addr,
            agent: v.request.agent,
            requester: v.requester,
            requester_email: v.requester_email,
            requester_addr: v.request.requester_addr,
            reason: v.request.reason,
            requested_minutes: v.request.requested_seconds / 60,
            created_at: format_us(v.request.created_at_us),
            decided_by: v.decided_by_name,
            decided_at: v.request.decided_at_us.map(format_us),
            expires_at: v.expires_at_us.map(format_us),
            ended_at: v.request.ended_at_us.map(format_us),
            end_reason: v.request.end_reason,
        })
        .collect();
    Ok(HttpResponse::Ok().json(items))
}
