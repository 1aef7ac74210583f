//! The portal's route table, the one place where every page and the API are registered: tests
//! use this production table as it is.
//!
//! The order of registration matters in two places, each marked where it is: actix tries
//! resources in the order they were registered and the first whose path matches takes the
//! request, so a fixed path must come before a pattern that also matches it, and the
//! fallback for unrouted requests comes after everything else.

use actix_web::body::BoxBody;
use actix_web::dev::ServiceRequest;
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError, web};

use crate::api::{self, ApiError};
use crate::error::WebError;
use crate::pages::{
    audit, home, invitation, login, password, second_factor, sessions, setup, users,
};
use crate::remote::{requests, sites};
use crate::telemetry::{chart, connectors, dashboard, devices, rules};
use crate::{account, admin, firmware};

/// The production route table.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/style.css", web::get().to(home::style))
        .route(
            "/static/firmware-upload.js",
            web::get().to(firmware::pages::script),
        )
        .route("/", web::get().to(home::home))
        .route("/setup", web::get().to(setup::setup_form))
        .route("/setup", web::post().to(setup::setup_submit))
        .route("/login", web::get().to(login::login_form))
        .route("/login", web::post().to(login::login_submit))
        .route(
            "/login/second-factor",
            web::get().to(second_factor::second_factor_form),
        )
        .route(
            "/login/second-factor",
            web::post().to(second_factor::second_factor_submit),
        )
        .route(
            "/login/second-factor/email",
            web::post().to(second_factor::send_email_code),
        )
        .route(
            "/account/second-factor/email-code",
            web::post().to(second_factor::send_email_code),
        )
        .route(
            "/account/second-factor/email",
            web::post().to(second_factor::enrol_email_submit),
        )
        .route("/account/confirm", web::get().to(password::confirm_form))
        .route("/account/confirm", web::post().to(password::confirm_submit))
        .route("/account/password", web::get().to(password::password_form))
        .route(
            "/account/password",
            web::post().to(password::password_submit),
        )
        .route(
            "/account/second-factor",
            web::get().to(second_factor::enrol_form),
        )
        .route(
            "/account/second-factor",
            web::post().to(second_factor::enrol_submit),
        )
        .route("/logout", web::post().to(login::logout))
        .route("/sessions", web::get().to(sessions::sessions_page))
        .route("/sessions/{id}/end", web::post().to(sessions::end_session))
        .route("/users", web::get().to(users::users_page))
        .route("/users", web::post().to(users::create_user))
        .route("/users/{id}", web::get().to(users::user_page))
        .route("/users/{id}", web::post().to(users::edit_user))
        .route("/users/{id}/{change}", web::post().to(users::change_user))
        .route("/audit", web::get().to(audit::audit_page))
        .route("/audit/export", web::get().to(audit::audit_export))
        .route(
            "/invite/{user}/{token}",
            web::get().to(invitation::invitation_form),
        )
        .route(
            "/invite/{user}/{token}",
            web::post().to(invitation::invitation_submit),
        )
        // One's own account.
        .route("/account", web::get().to(account::account_page))
        .route("/account/email", web::get().to(account::account_page))
        .route("/account/email", web::post().to(account::change_email))
        // The appliance's own administration.
        .route("/organisations", web::get().to(admin::organisations_page))
        .route("/organisations", web::post().to(admin::create_organisation))
        .route(
            "/organisations/{id}/{change}",
            web::post().to(admin::change_organisation),
        )
        .route("/settings", web::get().to(admin::settings_page))
        .route(
            "/settings/certificate",
            web::post().to(admin::replace_certificate),
        )
        .route("/settings/mail", web::post().to(admin::save_mail))
        .route(
            "/settings/telemetry",
            web::post().to(admin::save_telemetry_budget),
        )
        .route("/settings/mail/test", web::post().to(admin::test_mail))
        .route("/errors", web::get().to(admin::errors_page))
        // Remote access: requests.
        .route("/access", web::get().to(requests::access_page))
        .route("/access", web::post().to(requests::create_request))
        // ORDER: before `/access/{id}`, whose `{id}` would otherwise take "export" (and
        // answer 404, since it is not a number).
        .route("/access/export", web::get().to(requests::export))
        .route("/access/{id}", web::get().to(requests::request_page))
        .route("/access/{id}/approve", web::post().to(requests::approve))
        .route("/access/{id}/deny", web::post().to(requests::deny))
        .route("/access/{id}/end", web::post().to(requests::end))
        .route("/access/{id}/extend", web::post().to(requests::extend))
        // Remote access: sites.
        .route("/sites", web::get().to(sites::sites_page))
        .route("/sites", web::post().to(sites::create_site))
        .route("/sites/{id}", web::get().to(sites::site_page))
        .route("/sites/{id}/details", web::post().to(sites::set_details))
        .route("/sites/{id}/delete", web::post().to(sites::delete_site))
        .route("/sites/{id}/policy", web::post().to(sites::set_policy))
        .route("/sites/{id}/approvers", web::post().to(sites::set_approver))
        .route("/sites/{id}/machines", web::post().to(sites::add_machine))
        .route(
            "/sites/{id}/machines/{machine}/remove",
            web::post().to(sites::remove_machine),
        )
        .route("/sites/{id}/key-switch", web::post().to(sites::key_switch))
        .route("/sites/{id}/invite", web::post().to(sites::invite))
        .route("/sites/{id}/chart", web::get().to(chart::site_chart_page))
        .route(
            "/sites/{id}/chart.csv",
            web::get().to(chart::site_chart_csv),
        )
        // Field devices and their firmware.
        .route("/devices", web::get().to(devices::devices_page))
        .route("/devices", web::post().to(devices::register))
        .route("/devices/{id}", web::get().to(devices::device_page))
        .route("/devices/{id}/chart", web::get().to(chart::chart_page))
        .route(
            "/devices/{id}/dashboard",
            web::get().to(dashboard::dashboard_page),
        )
        .route("/devices/{id}/chart.csv", web::get().to(chart::chart_csv))
        .route("/devices/{id}/rotate", web::post().to(devices::rotate))
        .route("/devices/{id}/revoke", web::post().to(devices::revoke))
        .route("/devices/{id}/move", web::post().to(devices::move_device))
        .route("/alert-rules", web::get().to(rules::rules_page))
        .route("/alert-rules", web::post().to(rules::create))
        .route("/alert-rules/{id}", web::get().to(rules::rule_page))
        .route("/alert-rules/{id}", web::post().to(rules::update))
        .route("/alert-rules/{id}/{change}", web::post().to(rules::change))
        .route("/connectors", web::get().to(connectors::connectors_page))
        .route(
            "/connectors/{id}",
            web::get().to(connectors::connector_page),
        )
        .route(
            "/connectors/{id}/{change}",
            web::post().to(connectors::change),
        )
        .route("/firmware", web::get().to(firmware::pages::firmware_page))
        .route("/firmware", web::post().to(firmware::upload::upload))
        .route(
            "/firmware/uploads/{job}",
            web::get().to(firmware::upload::job_page),
        )
        .route(
            "/firmware/rollouts",
            web::post().to(firmware::pages::create_rollout),
        )
        .route(
            "/firmware/rollouts/{id}/{change}",
            web::post().to(firmware::pages::change_rollout),
        )
        // The REST API, from its own table.
        .configure(api_scope)
        // ORDER: last of all, since its `/{unrouted:.*}` matches every path: registered
        // before a route, it would take that route's requests.
        .configure(unrouted(
            || WebError::NotFound.error_response(),
            |allow| WebError::MethodNotAllowed(allow.to_owned()).error_response(),
        ))
        .default_service(web::to(home::not_found));
}

/// The API under `/api/v1`, built from its route table ([`api::routes`]), which the tests
/// also compare with the OpenAPI document.
fn api_scope(cfg: &mut web::ServiceConfig) {
    let scope = web::scope("/api/v1")
        // Malformed parameters get the API's error shape too, not actix's plain text.
        .app_data(
            web::QueryConfig::default()
                .error_handler(|err, _| ApiError::Invalid(err.to_string()).into()),
        )
        .app_data(
            web::JsonConfig::default()
                .limit(64 * 1024)
                .error_handler(|err, _| ApiError::Invalid(err.to_string()).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|err, _| ApiError::Invalid(err.to_string()).into()),
        );
    let scope = api::routes().into_iter().fold(scope, |scope, r| {
        scope.route(r.path, r.route.method(r.method))
    });
    cfg.service(
        scope
            // ORDER: after the API's routes, for the reason given at the portal's.
            .configure(unrouted(
                || ApiError::NotFound.error_response(),
                |allow| ApiError::MethodNotAllowed(allow.to_owned()).error_response(),
            ))
            .default_service(web::to(|| async {
                Err::<HttpResponse, ApiError>(ApiError::NotFound)
            })),
    );
}

/// The end of a route table, for requests that no route took: 405 Method Not Allowed with
/// `Allow` when some route serves the path with another method, else `not_found`. Both the
/// portal's table and the API's scope end with it, so every path answers an unsupported
/// method the same way, decided here rather than route by route.
///
/// The methods come from the router itself: on the way here it tried every route whose
/// path matched, noting each one's method, and an empty resource answers 405 with those
/// methods in `Allow` (or without `Allow` when no path matched), which this turns into the
/// caller's own error shape.
fn unrouted(
    not_found: fn() -> HttpResponse,
    method_not_allowed: fn(&str) -> HttpResponse,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.service(
            web::resource("/{unrouted:.*}").wrap(actix_web::middleware::from_fn(
                move |req: ServiceRequest, next: Next<BoxBody>| async move {
                    let response = next.call(req).await?;
                    let allow = response
                        .headers()
                        .get(actix_web::http::header::ALLOW)
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned);
                    let answer = match allow {
                        Some(allow) if response.status() == StatusCode::METHOD_NOT_ALLOWED => {
                            method_not_allowed(&allow)
                        }
                        _ => not_found(),
                    };
                    Ok(response.into_response(answer))
                },
            )),
        );
    }
}
