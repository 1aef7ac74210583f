//! The portal: server-rendered pages over HTTPS, built on the core library.
//!
//! Routes are registered in one place, [`routes`], so tests use the production route table.
//! Every response carries the security headers of [`security_headers`]; every request that
//! changes state must come from the portal's own origin ([`same_origin_only`]) and, once
//! signed in, carry the session's CSRF token.
//!
//! The modules stand in floors. At the bottom, the toolkit every page uses: [`error`],
//! [`render`], [`state`], [`session`], [`forms`], [`client`], [`middleware`], and the
//! background parts ([`worker`], [`refusals`], [`jobs`], `download`, `rate`). Above them
//! the pages ([`pages`], [`account`], [`admin`], [`remote`], [`telemetry`], [`firmware`]) and
//! the REST API ([`api`]); on top, [`routes`], which names them all.

pub mod account;
pub mod admin;
pub mod api;
pub mod client;
mod download;
pub mod error;
pub mod firmware;
pub mod forms;
pub mod jobs;
pub mod middleware;
pub mod pages;
mod rate;
pub mod refusals;
pub mod remote;
pub mod render;
pub mod routes;
pub mod session;
pub mod state;
pub mod telemetry;
pub mod worker;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, web};

pub use middleware::{same_origin_only, security_headers, utf8_forms_only};
pub use routes::config;
pub use session::{BROWSER_COOKIE, SESSION_COOKIE};
pub use state::{AppState, Clock};

/// The portal's application: the shared state, the body limits (`web.max_body_bytes`), the
/// middleware every request passes, and the route table.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let body_limit = state.app.config.web.max_body_bytes;
    App::new()
        .app_data(state)
        .app_data(web::FormConfig::default().limit(body_limit))
        .app_data(web::PayloadConfig::new(body_limit))
        .wrap(actix_web::middleware::from_fn(utf8_forms_only))
        .wrap(actix_web::middleware::from_fn(same_origin_only))
        .wrap(security_headers())
        .configure(config)
}
