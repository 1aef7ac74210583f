//! The data connectors pages: the connectors of the sites a user can see with what each
//! still owes, and one connector's delivery log. Administrators pause, resume and remove
//! them.
//!
//! Adding one stays on the appliance's console (`plantgate connector add`): a connector's
//! signing secret is sealed under a key only the ingest and root can read, and the portal,
//! which runs under its own account, holds no key that could seal it. The page says so.

use actix_web::web;
use appliance::Actor;
use appliance::access::short_time;
use appliance::connectors::{self, Connector, Delivery};
use appliance::ids::ConnectorId;
use appliance::models::{Role, User};
use askama::Template;

use crate::error::WebError;
use crate::forms::CsrfForm;
use crate::render::{Nav, Page, html, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

/// How many deliveries the log shows, newest first.
pub const LOG_LENGTH: i64 = 200;

#[derive(Debug)]
pub struct ConnectorRow {
    pub id: i64,
    pub site: String,
    pub name: String,
    pub url: String,
    pub sends: String,
    pub state: String,
    pub owed: i64,
}

#[derive(Debug)]
pub struct DeliveryRow {
    pub id: i64,
    pub kind: String,
    pub created: String,
    pub attempts: i32,
    pub state: String,
    pub last_error: String,
}

impl DeliveryRow {
    fn of(d: Delivery) -> DeliveryRow {
        let state = match (d.delivered_at_us, d.dead_at_us) {
            (Some(at), _) => format!("delivered {}", short_time(at)),
            (None, Some(at)) => format!("given up {}", short_time(at)),
            (None, None) => format!("owed, next attempt {}", short_time(d.next_attempt_at_us)),
        };
        DeliveryRow {
            id: d.id,
            kind: d.kind,
            created: short_time(d.created_at_us),
            attempts: d.attempts,
            state,
            last_error: d.last_error.unwrap_or_default(),
        }
    }
}

/// The connectors of the sites `user` can see, each with its row.
fn visible_connectors(
    conn: &mut appliance::DbConnection,
    user: &User,
) -> appliance::error::Result<Vec<(Connector, ConnectorRow)>> {
    let sites = appliance::access::sites_for(conn, user)?;
    let mut rows = Vec::new();
    for connector in Connector::list(conn)? {
        let Some(site) = sites.iter().find(|s| s.id == connector.site_id) else {
            continue;
        };
        let sends = match (connector.send_readings, connector.send_alerts) {
            (true, true) => "readings and alerts",
            (true, false) => "readings",
            _ => "alerts",
        };
        let state = match (connector.removed_at_us, connector.paused_at_us) {
            (Some(at), _) => format!("removed {}", short_time(at)),
            (None, Some(at)) => format!("paused since {}", short_time(at)),
            (None, None) => "active".to_owned(),
        };
        let row = ConnectorRow {
            id: connector.id.0,
            site: site.name.clone(),
            name: connector.name.clone(),
            url: connector.url.clone(),
            sends: sends.to_owned(),
            state,
            owed: connector.owed_count(conn)?,
        };
        rows.push((connector, row));
    }
    Ok(rows)
}

#[derive(Template)]
#[template(path = "connectors.html")]
struct ConnectorsPage {
    signed_in: Option<Nav>,
    rows: Vec<ConnectorRow>,
    is_admin: bool,
    sites: Vec<(i64, String)>,
}

pub async fn connectors_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let (rows, sites) = web::block(move || {
        let mut conn = app.store.conn()?;
        let rows = visible_connectors(&mut conn, &account)?
            .into_iter()
            .map(|(_, row)| row)
            .collect();
        let sites = appliance::access::sites_for(&mut conn, &account)?
            .into_iter()
            .map(|s| (s.id.0, s.name))
            .collect();
        Ok::<_, appliance::Error>((rows, sites))
    })
    .await??;
    html(&ConnectorsPage {
        signed_in: Some(user.nav()),
        rows,
        is_admin: user.role == Role::Admin,
        sites,
    })
}

#[derive(Template)]
#[template(path = "connector.html")]
struct ConnectorPage {
    signed_in: Option<Nav>,
    csrf: String,
    row: ConnectorRow,
    active: bool,
    paused: bool,
    is_admin: bool,
    log: Vec<DeliveryRow>,
    log_length: i64,
}

/// A connector `user` can see, or "not found".
fn visible_connector(
    conn: &mut appliance::DbConnection,
    user: &User,
    id: i64,
) -> appliance::error::Result<(Connector, ConnectorRow)> {
    visible_connectors(conn, user)?
        .into_iter()
        .find(|(c, _)| c.id.0 == id)
        .ok_or(appliance::Error::NotFound("connector"))
}

pub async fn connector_page(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
) -> Page {
    let (app, account, id) = (state.app.clone(), user.user.clone(), path.into_inner());
    let (connector, row, log) = web::block(move || {
        let mut conn = app.store.conn()?;
        let (connector, row) = visible_connector(&mut conn, &account, id)?;
        let log = connectors::recent_deliveries(&mut conn, connector.id, LOG_LENGTH)?;
        Ok::<_, appliance::Error>((connector, row, log))
    })
    .await??;
    html(&ConnectorPage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        row,
        active: connector.removed_at_us.is_none(),
        paused: connector.paused_at_us.is_some(),
        is_admin: user.role == Role::Admin,
        log: log.into_iter().map(DeliveryRow::of).collect(),
        log_length: LOG_LENGTH,
    })
}

/// Pauses, resumes or removes a connector (`change` is `pause`, `resume` or `remove`).
pub async fn change(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<(i64, String)>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Changing connectors")?;
    user.check_csrf(&form.csrf)?;
    let (id, change) = path.into_inner();
    if !matches!(change.as_str(), "pause" | "resume" | "remove") {
        return Err(WebError::NotFound);
    }
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    web::block(move || {
        visible_connector(&mut *app.store.conn()?, &account, id)?;
        let actor = Actor::User(account.id);
        match change.as_str() {
            "remove" => Connector::remove(&app.audit, &actor, ConnectorId(id), now),
            pause => {
                Connector::set_paused(&app.audit, &actor, ConnectorId(id), pause == "pause", now)
            }
        }
    })
    .await??;
    Ok(see_other(&format!("/connectors/{id}")))
}
