//! The devices page: the field devices at the sites a user can see, with the state they
//! last reported and their active alerts.

use actix_web::{HttpResponse, web};
use appliance::alerts::{Alert, AlertRule};
use appliance::devices::Device;
use askama::Template;

use crate::error::WebError;
use crate::render::{Nav, html};
use crate::session::SignedIn;
use crate::state::AppState;

struct DeviceRow {
    serial: String,
    kind: String,
    site: String,
    firmware: String,
    battery: String,
    signal: String,
    last_seen: String,
    revoked: bool,
    alerts: Vec<String>,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    signed_in: Option<Nav>,
    rows: Vec<DeviceRow>,
}

pub async fn devices_page(
    state: web::Data<AppState>,
    user: SignedIn,
) -> Result<HttpResponse, WebError> {
    let (app, account) = (state.app.clone(), user.user.clone());
    let rows = web::block(move || -> appliance::error::Result<Vec<DeviceRow>> {
        let mut conn = app.store.conn()?;
        let rules = AlertRule::list(&mut conn)?;
        let mut rows = Vec::new();
        for site in appliance::access::sites_for(&mut conn, &account)? {
            for device in Device::list_for_site(&mut conn, site.id)? {
                let alerts = Alert::list_for_device(&mut conn, device.id)?
                    .into_iter()
                    .filter(|a| a.cleared_at_us.is_none())
                    .map(|a| {
                        let rule = rules.iter().find(|r| r.id == a.rule_id);
                        format!(
                            "{} since {}",
                            rule.map_or("alert", |r| r.name.as_str()),
                            appliance::access::short_time(a.raised_at_us)
                        )
                    })
                    .collect();
                rows.push(DeviceRow {
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
                        .map(appliance::access::short_time)
                        .unwrap_or_else(|| "never".into()),
                    alerts,
                });
            }
        }
        Ok(rows)
    })
    .await??;
    html(&DevicesPage {
        signed_in: Some(user.nav()),
        rows,
    })
}
