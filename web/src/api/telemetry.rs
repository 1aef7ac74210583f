//! Devices, alert rules, alerts and connectors through the API: the same changes the
//! portal's pages make ([`crate::telemetry`]), with the same checks. Reading takes the
//! `*:read` scope; changing takes the `*:write` scope and an administrator's token.

use actix_web::{HttpResponse, web};
use appliance::Actor;
use appliance::alerts::{Alert, AlertRule};
use appliance::devices::Device;
use appliance::ids::AlertRuleId;
use appliance::time::format_us;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiCaller, ApiError, ErrorBody};
use crate::state::AppState;
use crate::telemetry::devices::device_request;
use crate::telemetry::input::RuleInput;

/// A refusal of what a request says (a value the core library refused, naming its field)
/// is 422; a body that is not the documented JSON is 400 before it gets here.
fn refused(err: appliance::Error) -> ApiError {
    match err {
        appliance::Error::Invalid { field, problem } => ApiError::Rejected {
            code: "request.refused",
            message: format!("{field}: {problem}"),
        },
        other => other.into(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceItem {
    id: i64,
    serial: String,
    /// monitor, data_logger or gateway.
    kind: String,
    site_id: i64,
    model: Option<String>,
    firmware_version: Option<String>,
    battery_pct: Option<f64>,
    signal_dbm: Option<f64>,
    last_seen: Option<String>,
    revoked: bool,
}

impl From<Device> for DeviceItem {
    fn from(d: Device) -> DeviceItem {
        DeviceItem {
            id: d.id.0,
            revoked: d.is_revoked(),
            serial: d.serial,
            kind: d.kind,
            site_id: d.site_id.0,
            model: d.model,
            firmware_version: d.firmware_version,
            battery_pct: d.battery_pct,
            signal_dbm: d.signal_dbm,
            last_seen: d.last_seen_at_us.map(format_us),
        }
    }
}

/// The devices at the sites the caller can see.
#[utoipa::path(get, path = "/api/v1/devices", responses(
    (status = 200, body = [DeviceItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["devices:read"])))]
pub(super) async fn devices(
    state: web::Data<AppState>,
    caller: ApiCaller,
) -> Result<HttpResponse, ApiError> {
    caller.require("devices:read")?;
    let user = caller.user.clone();
    let items = web::block(move || -> appliance::error::Result<Vec<DeviceItem>> {
        let mut conn = state.app.store.conn()?;
        let mut items = Vec::new();
        for site in appliance::access::sites_for(&mut conn, &user)? {
            items.extend(
                Device::list_for_site(&mut conn, site.id)?
                    .into_iter()
                    .map(DeviceItem::from),
            );
        }
        Ok(items)
    })
    .await??;
    Ok(HttpResponse::Ok().json(items))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeviceBody {
    /// 1-64 printable ASCII characters, no spaces, `/`, `+` or `#`.
    serial: String,
    /// monitor, data_logger or gateway.
    kind: String,
    /// One of the caller's sites.
    #[serde(deserialize_with = "crate::telemetry::input::whole")]
    site: i64,
    /// The model, which decides the firmware it may receive.
    model: Option<String>,
    /// The serial of the gateway it sits behind.
    gateway: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewDevice {
    device: DeviceItem,
    /// The device's secret, shown only this once: `Authorization: Bearer` over HTTPS, or
    /// the MQTT password.
    secret: String,
}

/// Registers a device and returns its secret, once.
#[utoipa::path(post, path = "/api/v1/devices", request_body = NewDeviceBody, responses(
    (status = 201, body = NewDevice), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["devices:write"])))]
pub(super) async fn register_device(
    state: web::Data<AppState>,
    caller: ApiCaller,
    body: web::Json<NewDeviceBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("devices:write", "devices:write (for an administrator)")?;
    let (user, body, now) = (caller.user.clone(), body.into_inner(), state.now());
    let (device, secret) = web::block(move || {
        let mut conn = state.app.store.conn()?;
        let request = device_request(
            &mut conn,
            &user,
            (&body.serial, &body.kind, body.site),
            (body.model.as_deref(), body.gateway.as_deref()),
        )?;
        drop(conn);
        Device::register(&state.app.audit, &Actor::User(user.id), &request, now)
    })
    .await?
    .map_err(refused)?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(NewDevice {
            device: device.into(),
            secret: secret.reveal().to_owned(),
        }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleItem {
    id: i64,
    #[serde(flatten)]
    settings: RuleInput,
    enabled: bool,
    /// The condition in words, as its emails state it.
    condition: String,
}

fn rule_item(
    conn: &mut appliance::DbConnection,
    rule: AlertRule,
) -> appliance::error::Result<RuleItem> {
    Ok(RuleItem {
        id: rule.id.0,
        settings: crate::telemetry::input::input_of(conn, &rule)?,
        enabled: rule.disabled_at_us.is_none(),
        condition: rule.condition(),
    })
}

/// The alert rules at the sites the caller can see.
#[utoipa::path(get, path = "/api/v1/alert-rules", responses(
    (status = 200, body = [RuleItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:read"])))]
pub(super) async fn alert_rules(
    state: web::Data<AppState>,
    caller: ApiCaller,
) -> Result<HttpResponse, ApiError> {
    caller.require("alerts:read")?;
    let user = caller.user.clone();
    let items = web::block(move || -> appliance::error::Result<Vec<RuleItem>> {
        let mut conn = state.app.store.conn()?;
        let sites: Vec<_> = appliance::access::sites_for(&mut conn, &user)?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let mut items = Vec::new();
        for rule in AlertRule::list(&mut conn)? {
            if sites.contains(&rule.site(&mut conn)?) {
                items.push(rule_item(&mut conn, rule)?);
            }
        }
        Ok(items)
    })
    .await??;
    Ok(HttpResponse::Ok().json(items))
}

/// Creates an alert rule for a site (optionally one kind of device there) or one device.
#[utoipa::path(post, path = "/api/v1/alert-rules", request_body = RuleInput, responses(
    (status = 201, body = RuleItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:write"])))]
pub(super) async fn create_alert_rule(
    state: web::Data<AppState>,
    caller: ApiCaller,
    body: web::Json<RuleInput>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("alerts:write", "alerts:write (for an administrator)")?;
    let (user, input, now) = (caller.user.clone(), body.into_inner(), state.now());
    let item = web::block(move || {
        let mut conn = state.app.store.conn()?;
        let request = input.resolve(&mut conn, &user)?;
        let rule = AlertRule::create(
            &state.app.audit,
            &Actor::User(user.id),
            user.organisation_id,
            &request,
            now,
        )?;
        rule_item(&mut conn, rule)
    })
    .await?
    .map_err(refused)?;
    Ok(HttpResponse::Created().json(item))
}

/// Changes every setting of an alert rule; its active alerts are cleared.
#[utoipa::path(put, path = "/api/v1/alert-rules/{id}", request_body = RuleInput,
    params(("id" = i64, Path, description = "The rule's id")), responses(
    (status = 200, body = RuleItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:write"])))]
pub(super) async fn update_alert_rule(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
    body: web::Json<RuleInput>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("alerts:write", "alerts:write (for an administrator)")?;
    let (user, input, now, id) = (
        caller.user.clone(),
        body.into_inner(),
        state.now(),
        path.into_inner(),
    );
    let item = web::block(move || {
        let mut conn = state.app.store.conn()?;
        AlertRule::find_in(&mut conn, user.organisation_id, AlertRuleId(id))?;
        let request = input.resolve(&mut conn, &user)?;
        let rule = AlertRule::update(
            &state.app.audit,
            &Actor::User(user.id),
            user.organisation_id,
            AlertRuleId(id),
            &request,
            now,
        )?;
        rule_item(&mut conn, rule)
    })
    .await?
    .map_err(refused)?;
    Ok(HttpResponse::Ok().json(item))
}

/// Removes an alert rule: its active alerts are cleared, its history kept.
#[utoipa::path(delete, path = "/api/v1/alert-rules/{id}",
    params(("id" = i64, Path, description = "The rule's id")), responses(
    (status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:write"])))]
pub(super) async fn remove_alert_rule(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("alerts:write", "alerts:write (for an administrator)")?;
    let (user, now, id) = (caller.user.clone(), state.now(), path.into_inner());
    web::block(move || {
        AlertRule::remove(
            &state.app.audit,
            &Actor::User(user.id),
            user.organisation_id,
            AlertRuleId(id),
            now,
        )
    })
    .await??;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AlertsParams {
    /// The device's serial.
    #[param(pattern = r"^[^\x00]*$")]
    device: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertItem {
    id: i64,
    rule_id: i64,
    rule: String,
    raised_at: String,
    raised_value: Option<f64>,
    /// Absent while it is active.
    cleared_at: Option<String>,
    cleared_value: Option<f64>,
}

/// A device's alerts, active and cleared, oldest first.
#[utoipa::path(get, path = "/api/v1/alerts", params(AlertsParams), responses(
    (status = 200, body = [AlertItem]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:read"])))]
pub(super) async fn alerts(
    state: web::Data<AppState>,
    caller: ApiCaller,
    params: web::Query<AlertsParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require("alerts:read")?;
    let (user, serial) = (caller.user.clone(), params.into_inner().device);
    let items = web::block(move || -> appliance::error::Result<Vec<AlertItem>> {
        let mut conn = state.app.store.conn()?;
        let device = Device::find_in(&mut conn, user.organisation_id, &serial)?;
        crate::telemetry::visible_site(&mut conn, &user, device.site_id.0)
            .map_err(|_| appliance::Error::NotFound("device"))?;
        let rules = AlertRule::list_all(&mut conn)?;
        Ok(Alert::list_for_device(&mut conn, device.id)?
            .into_iter()
            .map(|a| AlertItem {
                id: a.id.0,
                rule_id: a.rule_id.0,
                rule: rules
                    .iter()
                    .find(|r| r.id == a.rule_id)
                    .map(|r| r.name.clone())
                    .unwrap_or_default(),
                raised_at: format_us(a.raised_at_us),
                raised_value: a.raised_value,
                cleared_at: a.cleared_at_us.map(format_us),
                cleared_value: a.cleared_value,
            })
            .collect())
    })
    .await??;
    Ok(HttpResponse::Ok().json(items))
}
