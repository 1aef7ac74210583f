//! Data connectors through the API: list them with what each owes, read one's delivery
//! log, pause, resume and remove one. Adding one stays on the console (its signing secret
//! is sealed under a key the portal does not hold: [`crate::telemetry::connectors`]).
//! Reading takes `connectors:read`; changing takes `connectors:write` on an administrator's
//! token.

use actix_web::{HttpResponse, web};
use appliance::Actor;
use appliance::connectors::{self, Connector};
use appliance::ids::ConnectorId;
use appliance::models::User;
use appliance::time::format_us;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiCaller, ApiError, ErrorBody};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorItem {
    id: i64,
    site_id: i64,
    name: String,
    url: String,
    send_readings: bool,
    send_alerts: bool,
    /// active, paused or removed.
    state: String,
    /// Deliveries it still owes.
    owed: i64,
}

fn connector_item(
    conn: &mut appliance::DbConnection,
    c: Connector,
) -> appliance::error::Result<ConnectorItem> {
    let state = match (c.removed_at_us, c.paused_at_us) {
        (Some(_), _) => "removed",
        (None, Some(_)) => "paused",
        (None, None) => "active",
    };
    Ok(ConnectorItem {
        owed: c.owed_count(conn)?,
        id: c.id.0,
        site_id: c.site_id.0,
        name: c.name,
        url: c.url,
        send_readings: c.send_readings,
        send_alerts: c.send_alerts,
        state: state.to_owned(),
    })
}

fn sites_of(
    conn: &mut appliance::DbConnection,
    user: &User,
) -> appliance::error::Result<Vec<appliance::ids::SiteId>> {
    Ok(appliance::access::sites_for(conn, user)?
        .into_iter()
        .map(|s| s.id)
        .collect())
}

/// The connectors of the caller's sites, removed ones included.
#[utoipa::path(get, path = "/api/v1/connectors", responses(
    (status = 200, body = [ConnectorItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["connectors:read"])))]
pub(super) async fn connectors(
    state: web::Data<AppState>,
    caller: ApiCaller,
) -> Result<HttpResponse, ApiError> {
    caller.require("connectors:read")?;
    let user = caller.user.clone();
    let items = web::block(move || -> appliance::error::Result<Vec<ConnectorItem>> {
        let mut conn = state.app.store.conn()?;
        let sites = sites_of(&mut conn, &user)?;
        let mut items = Vec::new();
        for c in Connector::list(&mut conn)?
            .into_iter()
            .filter(|c| sites.contains(&c.site_id))
        {
            items.push(connector_item(&mut conn, c)?);
        }
        Ok(items)
    })
    .await??;
    Ok(HttpResponse::Ok().json(items))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryItem {
    id: i64,
    /// readings or alert.
    kind: String,
    queued_at: String,
    attempts: i32,
    delivered_at: Option<String>,
    /// When it was given up (dead-lettered).
    dead_at: Option<String>,
    next_attempt_at: String,
    last_error: Option<String>,
}

/// A connector's delivery log: its 200 newest deliveries, newest first.
#[utoipa::path(get, path = "/api/v1/connectors/{id}/deliveries",
    params(("id" = i64, Path, description = "The connector's id")), responses(
    (status = 200, body = [DeliveryItem]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["connectors:read"])))]
pub(super) async fn deliveries(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    caller.require("connectors:read")?;
    let (user, id) = (caller.user.clone(), path.into_inner());
    let log = web::block(move || {
        let mut conn = state.app.store.conn()?;
        let sites = sites_of(&mut conn, &user)?;
        let connector = Connector::find_at(&mut conn, &sites, ConnectorId(id))?;
        connectors::recent_deliveries(
            &mut conn,
            connector.id,
            crate::telemetry::connectors::LOG_LENGTH,
        )
    })
    .await??;
    let items: Vec<DeliveryItem> = log
        .into_iter()
        .map(|d| DeliveryItem {
            id: d.id,
            kind: d.kind,
            queued_at: format_us(d.created_at_us),
            attempts: d.attempts,
            delivered_at: d.delivered_at_us.map(format_us),
            dead_at: d.dead_at_us.map(format_us),
            next_attempt_at: format_us(d.next_attempt_at_us),
            last_error: d.last_error,
        })
        .collect();
    Ok(HttpResponse::Ok().json(items))
}

/// Pauses or resumes a connector as `caller`.
async fn set_paused(
    state: web::Data<AppState>,
    caller: ApiCaller,
    id: i64,
    pause: bool,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator(
        "connectors:write",
        "connectors:write (for an administrator)",
    )?;
    let (user, now) = (caller.user.clone(), state.now());
    let item = web::block(move || {
        let mut conn = state.app.store.conn()?;
        let sites = sites_of(&mut conn, &user)?;
        Connector::find_at(&mut conn, &sites, ConnectorId(id))?;
        let changed = Connector::set_paused(
            &state.app.audit,
            &Actor::User(user.id),
            ConnectorId(id),
            pause,
            now,
        )?;
        connector_item(&mut conn, changed)
    })
    .await??;
    Ok(HttpResponse::Ok().json(item))
}

/// Pauses a connector: deliveries keep queueing and go out in order once it is resumed.
#[utoipa::path(post, path = "/api/v1/connectors/{id}/pause",
    params(("id" = i64, Path, description = "The connector's id")), responses(
    (status = 200, body = ConnectorItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["connectors:write"])))]
pub(super) async fn pause_connector(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_paused(state, caller, path.into_inner(), true).await
}

/// Resumes a paused connector: what it is owed goes out in order.
#[utoipa::path(post, path = "/api/v1/connectors/{id}/resume",
    params(("id" = i64, Path, description = "The connector's id")), responses(
    (status = 200, body = ConnectorItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["connectors:write"])))]
pub(super) async fn resume_connector(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    set_paused(state, caller, path.into_inner(), false).await
}

/// Removes a connector: what it still owes is given up.
#[utoipa::path(delete, path = "/api/v1/connectors/{id}",
    params(("id" = i64, Path, description = "The connector's id")), responses(
    (status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["connectors:write"])))]
pub(super) async fn remove_connector(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator(
        "connectors:write",
        "connectors:write (for an administrator)",
    )?;
    let (user, now, id) = (caller.user.clone(), state.now(), path.into_inner());
    web::block(move || {
        let sites = sites_of(&mut *state.app.store.conn()?, &user)?;
        Connector::find_at(&mut *state.app.store.conn()?, &sites, ConnectorId(id))?;
        Connector::remove(
            &state.app.audit,
            &Actor::User(user.id),
            ConnectorId(id),
            now,
        )
    })
    .await??;
    Ok(HttpResponse::NoContent().finish())
}
