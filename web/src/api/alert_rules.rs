//! Alert rules and alerts through the API: the same changes and the same checks as the
//! portal's pages ([`crate::telemetry::rules`]). Reading takes `alerts:read`; changing
//! takes `alerts:write` on an administrator's token.

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
use crate::telemetry::input::RuleInput;

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
    .map_err(ApiError::refusal)?;
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
    .map_err(ApiError::refusal)?;
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

/// Disables or enables a rule as `caller`; disabling clears its active alerts.
async fn set_enabled(
    state: web::Data<AppState>,
    caller: ApiCaller,
    id: i64,
    enable: bool,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("alerts:write", "alerts:write (for an administrator)")?;
    let (user, now) = (caller.user.clone(), state.now());
    let item = web::block(move || {
        let rule = AlertRule::set_enabled(
            &state.app.audit,
            &Actor::User(user.id),
            user.organisation_id,
            AlertRuleId(id),
            enable,
            now,
        )?;
        rule_item(&mut *state.app.store.conn()?, rule)
    })
    .await??;
    Ok(HttpResponse::Ok().json(item))
}

/// Disables an alert rule: it raises nothing, and its active alerts are cleared.
#[utoipa::path(post, path = "/api/v1/alert-rules/{id}/disable",
    params(("id" = i64, Path, description = "The rule's id")), responses(
    (status = 200, body = RuleItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:write"])))]
pub(super) async fn disable_alert_rule(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_enabled(state, caller, path.into_inner(), false).await
}

/// Enables an alert rule again.
#[utoipa::path(post, path = "/api/v1/alert-rules/{id}/enable",
    params(("id" = i64, Path, description = "The rule's id")), responses(
    (status = 200, body = RuleItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:write"])))]
pub(super) async fn enable_alert_rule(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_enabled(state, caller, path.into_inner(), true).await
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TestParams {
    /// How many days back to replay, 1 to 31 (default 7).
    #[param(minimum = 1, maximum = 31)]
    days: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EpisodeItem {
    device: String,
    raised_at: String,
    raised_value: Option<f64>,
    /// Absent: it would still be active at the end of the range.
    cleared_at: Option<String>,
    cleared_value: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestItem {
    since: String,
    until: String,
    devices: usize,
    readings: usize,
    /// Too many readings: the range was not read to its end.
    truncated: bool,
    episodes: Vec<EpisodeItem>,
}

/// What a rule, saved or not, would have raised over the last days' readings; stores
/// nothing. It starts with no alert active, and judges silence by when readings were
/// measured.
#[utoipa::path(post, path = "/api/v1/alert-tests", request_body = RuleInput, params(TestParams), responses(
    (status = 200, body = TestItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["alerts:read"])))]
pub(super) async fn test_alert_rule(
    state: web::Data<AppState>,
    caller: ApiCaller,
    params: web::Query<TestParams>,
    body: web::Json<RuleInput>,
) -> Result<HttpResponse, ApiError> {
    caller.require("alerts:read")?;
    let days = params.days.unwrap_or(7);
    if !(1..=31).contains(&days) {
        return Err(ApiError::Invalid("days: between 1 and 31".into()));
    }
    let (user, input, now) = (caller.user.clone(), body.into_inner(), state.now());
    let (since, until) = (now - days * 86_400_000_000, now + 1);
    let replay = web::block(move || {
        let mut conn = state.app.store.conn()?;
        let request = input.resolve(&mut conn, &user)?;
        appliance::alerts::replay::replay(&mut conn, user.organisation_id, &request, (since, until))
    })
    .await?
    .map_err(ApiError::refusal)?;
    Ok(HttpResponse::Ok().json(TestItem {
        since: format_us(since),
        until: format_us(until),
        devices: replay.devices,
        readings: replay.readings,
        truncated: replay.truncated,
        episodes: replay
            .episodes
            .into_iter()
            .map(|e| EpisodeItem {
                device: e.serial,
                raised_at: format_us(e.raised_at_us),
                raised_value: e.raised_value,
                cleared_at: e.cleared_at_us.map(format_us),
                cleared_value: e.cleared_value,
            })
            .collect(),
    }))
}
