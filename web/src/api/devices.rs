//! Devices through the API: list, register (the secret returned once), issue a new
//! secret, revoke, move to another site. The same checks as the portal's pages
//! ([`crate::telemetry::devices`]): reading takes `devices:read`; changing takes
//! `devices:write` on an administrator's token. A device is named by its serial; another
//! organisation's is not found.

use actix_web::{HttpResponse, web};
use appliance::Actor;
use appliance::devices::Device;
use appliance::models::User;
use appliance::time::format_us;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiCaller, ApiError, ErrorBody};
use crate::state::AppState;
use crate::telemetry::devices::device_request;

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
    .map_err(ApiError::refusal)?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(NewDevice {
            device: device.into(),
            secret: secret.reveal().to_owned(),
        }))
}

/// A device of the caller's organisation at one of their sites, by serial, or "not found".
fn visible_device(
    conn: &mut appliance::DbConnection,
    user: &User,
    serial: &str,
) -> appliance::error::Result<Device> {
    let device = Device::find_in(conn, user.organisation_id, serial)?;
    crate::telemetry::visible_site(conn, user, device.site_id.0)
        .map_err(|_| appliance::Error::NotFound("device"))?;
    Ok(device)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSecret {
    serial: String,
    /// The new secret, shown only this once; the old one no longer works.
    secret: String,
}

/// Issues a new secret; the old one stops working at once, open connections included.
#[utoipa::path(post, path = "/api/v1/devices/{serial}/rotate",
    params(("serial" = String, Path, description = "The device's serial")), responses(
    (status = 200, body = DeviceSecret), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["devices:write"])))]
pub(super) async fn rotate_device(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("devices:write", "devices:write (for an administrator)")?;
    let (user, serial) = (caller.user.clone(), path.into_inner());
    let (serial, secret) = web::block(move || {
        let device = visible_device(&mut *state.app.store.conn()?, &user, &serial)?;
        let secret =
            Device::rotate_secret(&state.app.audit, &Actor::User(user.id), &device.serial)?;
        Ok::<_, appliance::Error>((device.serial, secret))
    })
    .await??;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(DeviceSecret {
            serial,
            secret: secret.reveal().to_owned(),
        }))
}

/// Revokes a device's credential: it posts nothing more until a new secret is issued.
#[utoipa::path(post, path = "/api/v1/devices/{serial}/revoke",
    params(("serial" = String, Path, description = "The device's serial")), responses(
    (status = 200, body = DeviceItem), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["devices:write"])))]
pub(super) async fn revoke_device(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("devices:write", "devices:write (for an administrator)")?;
    let (user, serial, now) = (caller.user.clone(), path.into_inner(), state.now());
    let device = web::block(move || {
        let device = visible_device(&mut *state.app.store.conn()?, &user, &serial)?;
        Device::revoke(&state.app.audit, &Actor::User(user.id), &device.serial, now)?;
        Device::find_in(
            &mut *state.app.store.conn()?,
            user.organisation_id,
            &device.serial,
        )
    })
    .await??;
    Ok(HttpResponse::Ok().json(DeviceItem::from(device)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// One of the caller's sites.
    #[serde(deserialize_with = "crate::telemetry::input::whole")]
    site: i64,
}

/// Moves a device to another site of the organisation; an alert of a rule that no longer
/// covers it is cleared.
#[utoipa::path(post, path = "/api/v1/devices/{serial}/move", request_body = MoveBody,
    params(("serial" = String, Path, description = "The device's serial")), responses(
    (status = 200, body = DeviceItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["devices:write"])))]
pub(super) async fn move_device(
    state: web::Data<AppState>,
    caller: ApiCaller,
    path: web::Path<String>,
    body: web::Json<MoveBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("devices:write", "devices:write (for an administrator)")?;
    let (user, serial, now, site) = (
        caller.user.clone(),
        path.into_inner(),
        state.now(),
        body.site,
    );
    let device = web::block(move || {
        let mut conn = state.app.store.conn()?;
        let device = visible_device(&mut conn, &user, &serial)?;
        let site = crate::telemetry::visible_site(&mut conn, &user, site)
            .map_err(|_| appliance::Error::invalid("site", "no such site among yours"))?;
        drop(conn);
        appliance::relocation::move_device(
            &state.app.audit,
            &Actor::User(user.id),
            &device.serial,
            site.id,
            now,
        )
    })
    .await?
    .map_err(ApiError::refusal)?;
    Ok(HttpResponse::Ok().json(DeviceItem::from(device)))
}
