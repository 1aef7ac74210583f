//! The devices pages: the field devices at the sites a user can see, with the state they
//! last reported and their active alerts; one device's page with its alerts and the rules
//! that cover it. Administrators register a device (its secret is shown once), rotate its
//! secret, revoke it and move it to another site.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use appliance::Actor;
use appliance::access::short_time;
use appliance::alerts::{Alert, AlertRule};
use appliance::devices::{Device, DeviceKind, DeviceRequest, DeviceSecret};
use appliance::ids::DeviceId;
use appliance::models::{Role, Site, User};
use askama::Template;
use serde::Deserialize;

use super::visible_site;
use crate::forms::{CsrfForm, Problems};
use crate::render::{Nav, Page, html_into, html_with_status, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

#[derive(Debug)]
pub struct DeviceRow {
    pub id: i64,
    pub serial: String,
    pub kind: String,
    pub site: String,
    pub firmware: String,
    pub battery: String,
    pub signal: String,
    pub last_seen: String,
    pub revoked: bool,
    pub alerts: Vec<String>,
}

impl DeviceRow {
    fn of(device: Device, site: &Site, alerts: Vec<String>) -> DeviceRow {
        DeviceRow {
            id: device.id.0,
            revoked: device.is_revoked(),
            serial: device.serial,
            kind: device.kind,
            site: site.name.clone(),
            firmware: device.firmware_version.unwrap_or_default(),
            battery: device
                .battery_pct
                .map(|b| format!("{b:.0} %"))
                .unwrap_or_default(),
            signal: device
                .signal_dbm
                .map(|s| format!("{s:.0} dBm"))
                .unwrap_or_default(),
            last_seen: device
                .last_seen_at_us
                .map(short_time)
                .unwrap_or_else(|| "never".into()),
            alerts,
        }
    }
}

/// An alert as a page lists it.
#[derive(Debug)]
pub struct AlertRow {
    pub rule: String,
    pub raised: String,
    pub raised_value: String,
    pub cleared: String,
}

fn alert_row(alert: &Alert, rules: &[AlertRule]) -> AlertRow {
    let value = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    AlertRow {
        rule: rules
            .iter()
            .find(|r| r.id == alert.rule_id)
            .map_or_else(|| format!("rule {}", alert.rule_id), |r| r.name.clone()),
        raised: short_time(alert.raised_at_us),
        raised_value: value(alert.raised_value),
        cleared: alert
            .cleared_at_us
            .map(|at| format!("{} ({})", short_time(at), value(alert.cleared_value)))
            .unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    signed_in: Option<Nav>,
    csrf: String,
    rows: Vec<DeviceRow>,
    is_admin: bool,
    sites: Vec<(i64, String)>,
    kinds: [&'static str; 3],
    form: RegisterForm,
    problems: Problems,
}

const KINDS: [&str; 3] = ["monitor", "data_logger", "gateway"];

async fn devices_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    form: RegisterForm,
    problems: Problems,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let (rows, sites) = web::block(move || {
        let mut conn = app.store.conn()?;
        let rules = AlertRule::list_all(&mut conn)?;
        let mut rows = Vec::new();
        let sites = appliance::access::sites_for(&mut conn, &account)?;
        for site in &sites {
            for device in Device::list_for_site(&mut conn, site.id)? {
                let alerts = Alert::list_for_device(&mut conn, device.id)?
                    .iter()
                    .filter(|a| a.cleared_at_us.is_none())
                    .map(|a| {
                        let row = alert_row(a, &rules);
                        format!("{} since {}", row.rule, row.raised)
                    })
                    .collect();
                rows.push(DeviceRow::of(device, site, alerts));
            }
        }
        let sites = sites.into_iter().map(|s| (s.id.0, s.name)).collect();
        Ok::<_, appliance::Error>((rows, sites))
    })
    .await??;
    let status = problems.status();
    html_with_status(
        &DevicesPage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            rows,
            is_admin: user.role == Role::Admin,
            sites,
            kinds: KINDS,
            form,
            problems,
        },
        status,
    )
}

pub async fn devices_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    devices_page_with(&state, &user, RegisterForm::default(), Problems::default()).await
}

#[derive(Debug, Default, Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    serial: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    gateway: String,
}

/// What registering a device asks for, read from a form or the API's JSON and checked
/// against what `user` can see.
pub(crate) fn device_request(
    conn: &mut appliance::DbConnection,
    user: &User,
    (serial, kind, site): (&str, &str, i64),
    (model, gateway): (Option<&str>, Option<&str>),
) -> appliance::error::Result<DeviceRequest> {
    let kind: DeviceKind = kind.trim().parse()?;
    let site = visible_site(conn, user, site)
        .map_err(|_| appliance::Error::invalid("site", "no such site among yours"))?;
    let blank_is_none = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Ok(DeviceRequest {
        serial: serial.to_owned(),
        kind,
        site: site.id,
        gateway: blank_is_none(gateway),
        model: blank_is_none(model),
    })
}

#[derive(Template)]
#[template(path = "device_secret.html")]
struct SecretPage {
    signed_in: Option<Nav>,
    device_id: i64,
    serial: String,
    secret: String,
    rotated: bool,
}

/// The one page that shows a device's secret: never cached, never shown again.
fn secret_page(user: &SignedIn, device: &Device, secret: &DeviceSecret, rotated: bool) -> Page {
    html_into(
        HttpResponse::build(StatusCode::OK).insert_header(("Cache-Control", "no-store")),
        &SecretPage {
            signed_in: Some(user.nav()),
            device_id: device.id.0,
            serial: device.serial.clone(),
            secret: secret.reveal().to_owned(),
            rotated,
        },
    )
}

pub async fn register(
    state: web::Data<AppState>,
    user: SignedIn,
    form: web::Form<RegisterForm>,
) -> Page {
    user.admin_only("Registering devices")?;
    user.check_csrf(&form.csrf)?;
    let form = form.into_inner();
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    let fields = (
        form.serial.clone(),
        form.kind.clone(),
        form.site.clone(),
        form.model.clone(),
        form.gateway.clone(),
    );
    let done = web::block(move || {
        let (serial, kind, site, model, gateway) = fields;
        let site: i64 = site
            .trim()
            .parse()
            .map_err(|_| appliance::Error::invalid("site", "choose a site"))?;
        let mut conn = app.store.conn()?;
        let request = device_request(
            &mut conn,
            &account,
            (&serial, &kind, site),
            (Some(&model), Some(&gateway)),
        )?;
        drop(conn);
        Device::register(&app.audit, &Actor::User(account.id), &request, now)
    })
    .await?;
    match done {
        Ok((device, secret)) => secret_page(&user, &device, &secret, false),
        Err(err) => devices_page_with(&state, &user, form, Problems::of(err)?).await,
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    signed_in: Option<Nav>,
    csrf: String,
    device: DeviceRow,
    model: String,
    site_id: i64,
    is_admin: bool,
    active: Vec<AlertRow>,
    history: Vec<AlertRow>,
    rules: Vec<(i64, String, String)>,
    sites: Vec<(i64, String)>,
    metrics: Vec<String>,
    problems: Problems,
}

/// A device at one of the sites `user` can see, with that site, or "not found".
pub(crate) fn visible_device(
    conn: &mut appliance::DbConnection,
    user: &User,
    id: i64,
) -> appliance::error::Result<(Device, Site)> {
    let device = Device::find(conn, DeviceId(id))?
        .filter(|d| d.organisation_id == user.organisation_id)
        .ok_or(appliance::Error::NotFound("device"))?;
    let site = visible_site(conn, user, device.site_id.0)
        .map_err(|_| appliance::Error::NotFound("device"))?;
    Ok((device, site))
}

async fn device_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    id: i64,
    problems: Problems,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let page = web::block(move || {
        let mut conn = app.store.conn()?;
        let (device, site) = visible_device(&mut conn, &account, id)?;
        let rules = AlertRule::list_all(&mut conn)?;
        let alerts = Alert::list_for_device(&mut conn, device.id)?;
        let active = alerts
            .iter()
            .filter(|a| a.cleared_at_us.is_none())
            .map(|a| alert_row(a, &rules))
            .collect();
        let history = alerts
            .iter()
            .rev()
            .filter(|a| a.cleared_at_us.is_some())
            .take(50)
            .map(|a| alert_row(a, &rules))
            .collect();
        let covering = rules
            .iter()
            .filter(|r| r.removed_at_us.is_none() && r.covers(&device))
            .map(|r| {
                let state = if r.is_live() { "" } else { " (disabled)" };
                (r.id.0, r.name.clone(), format!("{}{state}", r.condition()))
            })
            .collect();
        let sites = appliance::access::sites_for(&mut conn, &account)?
            .into_iter()
            .map(|s| (s.id.0, s.name))
            .collect();
        let model = device.model.clone().unwrap_or_default();
        let metrics = appliance::series::metrics_of(&mut conn, device.id)?;
        Ok::<_, appliance::Error>((
            DeviceRow::of(device, &site, Vec::new()),
            model,
            site.id.0,
            active,
            history,
            covering,
            sites,
            metrics,
        ))
    })
    .await??;
    let (device, model, site_id, active, history, rules, sites, metrics) = page;
    let status = problems.status();
    html_with_status(
        &DevicePage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            device,
            model,
            site_id,
            is_admin: user.role == Role::Admin,
            active,
            history,
            rules,
            sites,
            metrics,
            problems,
        },
        status,
    )
}

pub async fn device_page(state: web::Data<AppState>, user: SignedIn, path: web::Path<i64>) -> Page {
    device_page_with(&state, &user, path.into_inner(), Problems::default()).await
}

/// Issues a new secret; the old one stops working at once (open MQTT connections too).
pub async fn rotate(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Changing devices")?;
    user.check_csrf(&form.csrf)?;
    let (app, account, id) = (state.app.clone(), user.user.clone(), path.into_inner());
    let (device, secret) = web::block(move || {
        let (device, _) = visible_device(&mut *app.store.conn()?, &account, id)?;
        let secret = Device::rotate_secret(&app.audit, &Actor::User(account.id), &device.serial)?;
        Ok::<_, appliance::Error>((device, secret))
    })
    .await??;
    secret_page(&user, &device, &secret, true)
}

/// Revokes the device's credential: it can post nothing more until a new secret is issued.
pub async fn revoke(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Changing devices")?;
    user.check_csrf(&form.csrf)?;
    let (app, account, id, now) = (
        state.app.clone(),
        user.user.clone(),
        path.into_inner(),
        state.now(),
    );
    web::block(move || {
        let (device, _) = visible_device(&mut *app.store.conn()?, &account, id)?;
        Device::revoke(&app.audit, &Actor::User(account.id), &device.serial, now)
    })
    .await??;
    Ok(see_other(&format!("/devices/{id}")))
}

#[derive(Debug, Default, Deserialize)]
pub struct MoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    site: String,
}

/// Moves the device to another of the organisation's sites.
pub async fn move_device(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<MoveForm>,
) -> Page {
    user.admin_only("Changing devices")?;
    user.check_csrf(&form.csrf)?;
    let (app, account, id, now) = (
        state.app.clone(),
        user.user.clone(),
        path.into_inner(),
        state.now(),
    );
    let site = form.site.clone();
    let done = web::block(move || {
        let site: i64 = site
            .trim()
            .parse()
            .map_err(|_| appliance::Error::invalid("site", "choose a site"))?;
        let mut conn = app.store.conn()?;
        let (device, _) = visible_device(&mut conn, &account, id)?;
        let site = visible_site(&mut conn, &account, site)
            .map_err(|_| appliance::Error::invalid("site", "no such site among yours"))?;
        drop(conn);
        appliance::relocation::move_device(
            &app.audit,
            &Actor::User(account.id),
            &device.serial,
            site.id,
            now,
        )
    })
    .await?;
    match done {
        Ok(_) => Ok(see_other(&format!("/devices/{id}"))),
        Err(err) => device_page_with(&state, &user, id, Problems::of(err)?).await,
    }
}
