//! The front door: the home page of a signed-in user (a visitor without a session is sent to
//! setup or to login), the style sheet, and the answer for a page that does not exist.

use actix_web::{HttpResponse, web};
use appliance::time::format_us;
use askama::Template;

use super::setup::needs_setup;
use crate::error::WebError;
use crate::remote::firewall::firewall_overview;
use crate::render::{Nav, Page, html, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

pub async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(include_str!("../../static/style.css"))
}

pub async fn not_found() -> Result<HttpResponse, WebError> {
    Err(WebError::NotFound)
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    signed_in: Option<Nav>,
    name: String,
    organisation: String,
    role: String,
    session_ends: String,
    idle_minutes: i64,
    /// The firewall controller's state, and whether it is running.
    firewall: (String, bool),
}

pub async fn home(state: web::Data<AppState>, user: Result<SignedIn, actix_web::Error>) -> Page {
    let user = match user {
        Ok(user) => user,
        // Where a visitor without a session starts: setup on a new appliance, else login.
        Err(_) if needs_setup(&state).await? => return Ok(see_other("/setup")),
        Err(redirect) => return Ok(redirect.error_response()),
    };
    let organisation = {
        let state = state.clone();
        let org = user.user.organisation_id;
        web::block(move || -> appliance::error::Result<String> {
            Ok(
                appliance::models::Organisation::list(&mut *state.app.store.conn()?)?
                    .into_iter()
                    .find(|o| o.id == org)
                    .map(|o| o.name)
                    .unwrap_or_default(),
            )
        })
        .await??
    };
    html(&HomePage {
        signed_in: Some(user.nav()),
        name: user.user.name.clone(),
        organisation,
        role: user.role.to_string(),
        session_ends: format_us(user.session.created_at_us + state.limits.absolute_us),
        idle_minutes: state.limits.idle_us / 60_000_000,
        firewall: firewall_overview(&state).await?,
    })
}
