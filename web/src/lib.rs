//! The portal: server-rendered pages over HTTPS, built on the core library.
//!
//! Routes are registered in one place, [`config`], so tests use the production route table.
//! Every response carries the security headers of [`security_headers`]; every request that
//! changes state must come from the portal's own origin ([`same_origin_only`]) and, once
//! signed in, carry the session's CSRF token.

pub mod account;
pub mod admin;
pub mod api;
pub mod devices;
mod download;
pub mod firmware;
pub mod pages;
pub mod remote;
pub mod stream;
pub mod worker;

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{DefaultHeaders, Next};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use appliance::Appliance;
use appliance::accounts::{Lockout, PasswordPolicy};
use appliance::models::{Role, User};
use appliance::sessions::{self, Session, SessionLimits};
use askama::Template;

pub const SESSION_COOKIE: &str = "__Host-plantgate";
/// Marks a browser that signed in completely before (`appliance::lockout`).
pub const BROWSER_COOKIE: &str = "__Host-plantgate-browser";

/// Microseconds since the epoch; tests put their own clock here.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What every handler shares.
pub struct AppState {
    pub app: Appliance,
    pub clock: Clock,
    pub limits: SessionLimits,
    pub policy: PasswordPolicy,
    pub lockout: Lockout,
    /// Roles that must use a second factor.
    pub second_factor_roles: Vec<Role>,
    logins_per_minute: u32,
    /// Attempts at a password or code, per source address.
    logins: api::RateLimiter<IpAddr>,
    /// Refused sign-ins, summarised per source address (`appliance::refusals`).
    pub refusals: appliance::refusals::Refusals,
    pub api_requests_per_minute: u32,
    pub reauthenticate_us: i64,
    pub api_by_address: api::RateLimiter<IpAddr>,
    pub api_by_token: api::RateLimiter<i64>,
    /// Wakes the remote-access worker after a change, so emails and signals follow at once.
    pub worker: worker::Worker,
    /// The HTTPS listener's certificate, which an administrator may replace while it serves.
    pub certificate: Option<appliance::tls::LiveCertificate>,
    /// Firmware uploads being verified, for their progress pages.
    pub firmware_jobs: firmware::Jobs,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", &self.limits)
            .field("lockout", &self.lockout)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(app: Appliance, clock: Clock) -> AppState {
        let web = &app.config.web;
        AppState {
            limits: SessionLimits::from_minutes(
                web.session_absolute_minutes,
                web.session_idle_minutes,
            ),
            policy: PasswordPolicy {
                min_chars: web.password_min_chars,
            },
            lockout: Lockout {
                attempts: web.lockout_attempts,
                minutes: web.lockout_minutes,
            },
            logins_per_minute: web.logins_per_minute,
            second_factor_roles: web
                .second_factor_roles
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
            logins: api::RateLimiter::default(),
            refusals: appliance::refusals::Refusals::new(web.refusal_summary_seconds),
            api_requests_per_minute: web.api_requests_per_minute,
            reauthenticate_us: i64::from(web.reauthenticate_seconds) * 1_000_000,
            api_by_address: api::RateLimiter::default(),
            api_by_token: api::RateLimiter::default(),
            worker: worker::Worker::default(),
            certificate: None,
            firmware_jobs: firmware::Jobs::default(),
            app,
            clock,
        }
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The key that seals TOTP seeds (the portal's alone: `appliance::keyring`).
    pub fn totp_key(&self) -> appliance::error::Result<appliance::sealing::SealingKey> {
        self.sealing_key(appliance::keyring::Secret::TotpSealing)
    }

    /// The key that seals the mail relay's password.
    pub fn relay_key(&self) -> appliance::error::Result<appliance::sealing::SealingKey> {
        self.sealing_key(appliance::keyring::Secret::RelaySealing)
    }

    fn sealing_key(
        &self,
        secret: appliance::keyring::Secret,
    ) -> appliance::error::Result<appliance::sealing::SealingKey> {
        appliance::sealing::SealingKey::load(&appliance::keyring::path(&self.app.config, secret))
    }

    /// Counts a login attempt from `source`; `Err(seconds)` when it is one too many. Locking
    /// out a victim by guessing needs this many tries per minute from each address.
    pub(crate) fn throttle_login(&self, source: IpAddr) -> Result<(), u64> {
        self.logins.hit(source, self.logins_per_minute, self.now())
    }
}

/// The production route table.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/style.css", web::get().to(pages::style))
        .route("/", web::get().to(pages::home))
        .route("/setup", web::get().to(pages::setup_form))
        .route("/setup", web::post().to(pages::setup_submit))
        .route("/login", web::get().to(pages::login_form))
        .route("/login", web::post().to(pages::login_submit))
        .route(
            "/login/second-factor",
            web::get().to(pages::second_factor_form),
        )
        .route(
            "/login/second-factor",
            web::post().to(pages::second_factor_submit),
        )
        .route(
            "/login/second-factor/email",
            web::post().to(pages::send_email_code),
        )
        .route(
            "/account/second-factor/email-code",
            web::post().to(pages::send_email_code),
        )
        .route(
            "/account/second-factor/email",
            web::post().to(pages::enrol_email_submit),
        )
        .route("/account/confirm", web::get().to(pages::confirm_form))
        .route("/account/confirm", web::post().to(pages::confirm_submit))
        .route("/account/password", web::get().to(pages::password_form))
        .route("/account/password", web::post().to(pages::password_submit))
        .route("/account/second-factor", web::get().to(pages::enrol_form))
        .route(
            "/account/second-factor",
            web::post().to(pages::enrol_submit),
        )
        .route("/logout", web::post().to(pages::logout))
        .route("/sessions", web::get().to(pages::sessions_page))
        .route("/sessions/{id}/end", web::post().to(pages::end_session))
        .route("/users", web::get().to(pages::users_page))
        .route("/users", web::post().to(pages::create_user))
        .route("/users/{id}", web::get().to(pages::user_page))
        .route("/users/{id}", web::post().to(pages::edit_user))
        .route("/users/{id}/{change}", web::post().to(pages::change_user))
        .route("/audit", web::get().to(pages::audit_page))
        .route("/audit/export", web::get().to(pages::audit_export))
        .route(
            "/invite/{user}/{token}",
            web::get().to(pages::invitation_form),
        )
        .route(
            "/invite/{user}/{token}",
            web::post().to(pages::invitation_submit),
        )
        .configure(account::config)
        .configure(admin::config)
        .configure(remote::config)
        .configure(devices::config)
        .configure(firmware::config)
        .configure(api::config)
        .configure(unrouted(
            || WebError::NotFound.error_response(),
            |allow| WebError::MethodNotAllowed(allow.to_owned()).error_response(),
        ))
        .default_service(web::to(pages::not_found));
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
pub(crate) fn unrouted(
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

/// Headers on every response, errors included.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
        .add((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        // `same-origin`, not `no-referrer`: with the latter browsers send `Origin: null` on form
        // posts, and the origin check below could not tell the portal's own forms apart.
        .add(("Referrer-Policy", "same-origin"))
        .add(("Cache-Control", "no-store"))
}

/// Refuses any request that changes state unless its `Origin` is this portal: a page on
/// another site cannot make a signed-in browser post here.
///
/// The portal's origins are the configured one (`access.portal_url`, else
/// `https://{web.host_name}`, with the HTTPS listener's port unless it is 443) and the
/// host the browser connected to (its `Host`, which a page on another site cannot choose).
/// Forwarding headers (`Forwarded`, `X-Forwarded-Host`, `X-Forwarded-Proto`) say which host
/// and scheme a proxy was asked for; they are believed only from a TCP peer listed in
/// `web.trusted_proxies`, since from anyone else they are just more text a client chose.
pub async fn same_origin_only(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // The API authenticates with bearer tokens, which a browser never sends on its own.
    let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS")
        || req.path().starts_with("/api/");
    if !safe {
        let origin = req
            .headers()
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .and_then(|o| url::Url::parse(o).ok());
        let config = req
            .app_data::<web::Data<AppState>>()
            .map(|state| &state.app.config);
        let same = match (origin, config) {
            (Some(origin), Some(config)) => portal_origins(req.request(), config)
                .iter()
                .any(|allowed| *allowed == origin_key(&origin)),
            _ => false,
        };
        if !same {
            let response = WebError::Forbidden(
                "This request did not come from the portal's own pages.".into(),
            )
            .error_response();
            return Ok(req.into_response(response));
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// `scheme://host[:port]`, lower case, the port left out when it is the scheme's default.
fn origin_key(url: &url::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}",
        url.scheme(),
        url.host_str().unwrap_or("").to_ascii_lowercase()
    )
}

/// `scheme://authority` as [`origin_key`] writes it, from a host header's value.
fn origin_of(scheme: &str, authority: &str) -> Option<String> {
    let scheme = scheme.trim().to_ascii_lowercase();
    if !matches!(scheme.as_str(), "https" | "http") {
        return None;
    }
    url::Url::parse(&format!("{scheme}://{}", authority.trim()))
        .ok()
        .map(|url| origin_key(&url))
}

/// The origins a state-changing request to this portal may come from; see
/// [`same_origin_only`].
fn portal_origins(req: &HttpRequest, config: &appliance::config::Config) -> Vec<String> {
    let mut origins: Vec<String> = Vec::new();
    origins.extend(
        url::Url::parse(&config.portal_url())
            .ok()
            .map(|u| origin_key(&u)),
    );
    let port = config
        .web
        .https_listen
        .parse::<std::net::SocketAddr>()
        .map_or(443, |a| a.port());
    origins.extend(origin_of(
        "https",
        &format!("{}:{port}", config.web.host_name),
    ));
    // What the browser connected to: HTTP/2's :authority, else the Host header.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(actix_web::http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    let forwarded = from_trusted_proxy(req, config).then(|| forwarded_host(req));
    match forwarded.flatten() {
        // Behind a trusted proxy, the host and scheme it was asked for.
        Some((host, scheme)) => origins.extend(origin_of(&scheme, &host)),
        None => origins.extend(host.and_then(|h| origin_of("https", &h))),
    }
    origins
}

/// True when the TCP peer is one of `web.trusted_proxies`.
fn from_trusted_proxy(req: &HttpRequest, config: &appliance::config::Config) -> bool {
    req.peer_addr()
        .is_some_and(|peer| is_trusted_proxy(config, peer.ip()))
}

fn is_trusted_proxy(config: &appliance::config::Config, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    config.web.trusted_proxies.contains(&ip)
}

/// The `Forwarded` header's parameters, element by element (RFC 7239), lower-case names,
/// quotes removed.
fn forwarded_elements(req: &HttpRequest) -> Vec<Vec<(String, String)>> {
    req.headers()
        .get_all("forwarded")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| {
                    (
                        k.trim().to_ascii_lowercase(),
                        v.trim().trim_matches('"').to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

/// The host and scheme a proxy says the client asked for: `Forwarded: host=..;proto=..`
/// (its first element, the one nearest the client), else `X-Forwarded-Host` and
/// `X-Forwarded-Proto` (their first values); the scheme defaults to https.
fn forwarded_host(req: &HttpRequest) -> Option<(String, String)> {
    let first_value = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let elements = forwarded_elements(req);
    let param = |name: &str| {
        elements
            .first()
            .and_then(|e| e.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.clone())
    };
    let host = param("host").or_else(|| first_value("x-forwarded-host"))?;
    let scheme = param("proto")
        .or_else(|| first_value("x-forwarded-proto"))
        .unwrap_or_else(|| "https".to_owned());
    Some((host, scheme))
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
/// address before it that is not one (`Forwarded: for=`, else `X-Forwarded-For`, read from
/// the right, since a client can write anything on the left).
pub(crate) fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Some(peer);
    };
    let config = &state.app.config;
    if !is_trusted_proxy(config, peer) {
        return Some(peer);
    }
    let parse = |text: &str| -> Option<IpAddr> {
        let text = text.trim().trim_matches('"');
        // `for=` may be `"[2001:db8::1]:4711"` or `192.0.2.1:4711`.
        text.parse::<IpAddr>()
            .ok()
            .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
            .or_else(|| {
                text.strip_prefix('[')
                    .and_then(|t| t.split(']').next())
                    .and_then(|t| t.parse().ok())
            })
    };
    let mut chain: Vec<String> = forwarded_elements(req)
        .into_iter()
        .filter_map(|e| e.into_iter().find(|(k, _)| k == "for").map(|(_, v)| v))
        .collect();
    if chain.is_empty() {
        chain = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::to_owned)
            .collect();
    }
    for hop in chain.iter().rev() {
        match parse(hop) {
            Some(ip) if is_trusted_proxy(config, ip) => continue,
            Some(ip) => return Some(ip),
            // An address hidden by the proxy ("unknown", an obfuscated name): the proxy is
            // the nearest address known.
            None => return Some(peer),
        }
    }
    Some(peer)
}

/// Refuses a form whose fields, once percent-decoded, are not UTF-8. The form reader would
/// put U+FFFD in their place and go on, storing text nobody typed; here such a form gets
/// 400 and reaches no handler. Bodies over `web.max_body_bytes` get 413 as they would there.
pub async fn utf8_forms_only(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    use futures_util::StreamExt;
    let is_form = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map_or(64 * 1024, |state| state.app.config.web.max_body_bytes);
    let mut payload = req.take_payload();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            let response = HttpResponse::PayloadTooLarge().body(format!(
                "The form is larger than {limit} bytes (web.max_body_bytes)."
            ));
            return Ok(req.into_response(response));
        }
        body.extend_from_slice(&chunk);
    }
    let decodes = body[..].split(|b| *b == b'&').all(|pair| {
        let spaced: Vec<u8> = pair
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        std::str::from_utf8(&decoded).is_ok()
    });
    if !decodes {
        let response = WebError::BadRequest(
            "The form holds bytes that are not UTF-8 text; nothing was changed.".into(),
        )
        .error_response();
        return Ok(req.into_response(response));
    }
    req.set_payload(actix_web::dev::Payload::from(body.freeze()));
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// Errors a person sees: a page that says what happened. Causes go to the log, not the page.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("This page does not exist.")]
    NotFound,
    /// The page exists but not for this method; the value is the `Allow` header's.
    #[error("This page does not take that kind of request.")]
    MethodNotAllowed(String),
    #[error("Too many attempts; try again in {0} seconds.")]
    TooManyRequests(u64),
    #[error("Something went wrong on the appliance; the event was logged.")]
    Internal(String),
    /// The data partition is full: nothing was changed; it works again once space is freed.
    #[error(
        "Storage full: the appliance has no space left, so nothing was saved. Try again once an administrator has freed space on its data partition."
    )]
    StorageFull,
    /// A sensitive page whose user must give the password again first: a redirect to the
    /// confirmation page, which sends them back.
    #[error("confirm your password first")]
    ConfirmFirst(&'static str),
}

impl From<appliance::Error> for WebError {
    fn from(err: appliance::Error) -> Self {
        match err {
            appliance::Error::Invalid { field, problem } => {
                WebError::BadRequest(format!("{field}: {problem}"))
            }
            appliance::Error::NotFound(_) => WebError::NotFound,
            appliance::Error::Conflict(message) => WebError::BadRequest(message),
            appliance::Error::Forbidden(message) => WebError::Forbidden(message),
            err @ appliance::Error::StorageFull { .. } => {
                tracing::warn!(error = %err, "refused: storage full");
                WebError::StorageFull
            }
            other => {
                tracing::error!(error = %other, code = other.code(), "request failed");
                WebError::Internal(other.code().to_owned())
            }
        }
    }
}

impl From<actix_web::error::BlockingError> for WebError {
    fn from(err: actix_web::error::BlockingError) -> Self {
        tracing::error!(error = %err, "blocking task failed");
        WebError::Internal("blocking".into())
    }
}

#[derive(Debug, Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub signed_in: Option<Nav>,
    pub heading: &'a str,
    pub text: &'a str,
    pub link: &'a str,
    pub link_text: &'a str,
}

impl ResponseError for WebError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            WebError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WebError::StorageFull => StatusCode::SERVICE_UNAVAILABLE,
            WebError::ConfirmFirst(_) => StatusCode::SEE_OTHER,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let WebError::ConfirmFirst(confirm) = self {
            return see_other(confirm);
        }
        let text = self.to_string();
        let heading = match self {
            WebError::BadRequest(_) => "That did not work",
            WebError::Forbidden(_) => "Not allowed",
            WebError::NotFound => "Not found",
            WebError::MethodNotAllowed(_) => "Not allowed",
            WebError::TooManyRequests(_) => "Slow down",
            WebError::StorageFull => "Storage full",
            WebError::Internal(_) | WebError::ConfirmFirst(_) => "Error",
        };
        let page = MessagePage {
            signed_in: None,
            heading,
            text: &text,
            link: "/",
            link_text: "Back to the portal",
        };
        let mut response = HttpResponse::build(self.status_code());
        if let WebError::TooManyRequests(seconds) = self {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        if let WebError::StorageFull = self {
            response.insert_header(("Retry-After", "60"));
        }
        if let WebError::MethodNotAllowed(allow) = self {
            response.insert_header((actix_web::http::header::ALLOW, allow.as_str()));
        }
        response
            .content_type("text/html; charset=utf-8")
            .body(page.render().unwrap_or(text))
    }
}

/// What the page header shows for a signed-in user.
#[derive(Debug, Clone)]
pub struct Nav {
    pub name: String,
    pub role: String,
    pub csrf: String,
    pub can_audit: bool,
    pub can_manage: bool,
    pub can_see_sites: bool,
    /// An administrator of the operator organisation: organisations and appliance settings.
    pub can_operate: bool,
    /// "Remote access active at ..." lines, shown on every page.
    pub banners: Vec<String>,
}

/// A request from a signed-in user: the session is valid at the state's clock.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: User,
    pub role: Role,
    /// The user belongs to the organisation that owns the appliance.
    pub operator: bool,
    pub session: Session,
    /// Ties forms to this session; see [`SignedIn::check_csrf`].
    pub csrf: String,
    /// Remote sessions active now at the user's sites, for the banner.
    pub banners: Vec<String>,
}

/// The form token of a session: derived from its secret id, so a page that cannot read
/// the cookie cannot know it.
pub fn csrf_token(session_token: &str) -> String {
    hex::encode(openssl::sha::sha256(
        format!("plantgate-csrf\0{session_token}").as_bytes(),
    ))
}

impl SignedIn {
    pub fn nav(&self) -> Nav {
        Nav {
            name: self.user.name.clone(),
            role: self.role.to_string(),
            csrf: self.csrf.clone(),
            can_audit: self.can_read_audit(),
            can_manage: self.role == Role::Admin,
            can_see_sites: matches!(self.role, Role::Admin | Role::Approver),
            can_operate: self.is_appliance_admin(),
            banners: self.banners.clone(),
        }
    }

    /// For sensitive actions: the password must have been given recently, or the user is
    /// sent to confirm it, and back afterwards.
    pub fn require_recent_authentication(
        &self,
        state: &AppState,
        confirm: &'static str,
    ) -> Result<(), WebError> {
        if state.now() - self.session.last_authenticated_us() <= state.reauthenticate_us {
            Ok(())
        } else {
            Err(WebError::ConfirmFirst(confirm))
        }
    }

    /// Refuses anyone but an administrator; `doing` says what, as in "Managing users".
    pub fn admin_only(&self, doing: &str) -> Result<(), WebError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "{doing} is for administrators."
            )))
        }
    }

    /// The audit log holds every organisation's actions: only the operator organisation's
    /// administrators and auditors read it.
    pub fn can_read_audit(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Auditor) && self.operator
    }

    /// An administrator of the organisation that owns the appliance.
    pub fn is_appliance_admin(&self) -> bool {
        self.role == Role::Admin && self.operator
    }

    /// Refuses anyone but an administrator of the operator organisation: organisations, the
    /// certificate and the mail relay concern the whole appliance.
    pub fn appliance_admin_only(&self, doing: &str) -> Result<(), WebError> {
        self.admin_only(doing)?;
        if self.operator {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "{doing} is for the administrators of the organisation that runs this appliance."
            )))
        }
    }

    pub fn check_csrf(&self, presented: &str) -> Result<(), WebError> {
        if presented.len() == self.csrf.len()
            && openssl::memcmp::eq(presented.as_bytes(), self.csrf.as_bytes())
        {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "The form was stale or not from this session; reload the page and try again."
                    .into(),
            ))
        }
    }
}

/// Why a page needs a (complete or recent) sign-in first: answered with a redirect to the
/// step that is missing: the login page, the second factor, or confirming the password.
#[derive(Debug)]
pub struct NeedsLogin(pub &'static str);

impl std::fmt::Display for NeedsLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sign in first ({})", self.0)
    }
}

impl ResponseError for NeedsLogin {
    fn status_code(&self) -> StatusCode {
        StatusCode::SEE_OTHER
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::SeeOther()
            .insert_header(("Location", self.0))
            .finish()
    }
}

/// A session that passed its password but may still owe the second factor: enough for the
/// second-factor pages and nothing else.
#[derive(Debug, Clone)]
pub struct PartlySignedIn(pub SignedIn);

type Extracted<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, actix_web::Error>>>>;

/// Resumes the session named by the request's cookie, at the state's clock.
fn resume_session(req: &HttpRequest) -> Extracted<SignedIn> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
    Box::pin(async move {
        let (Some(state), Some(token)) = (state, token) else {
            return Err(NeedsLogin("/login").into());
        };
        let now = state.now();
        let limits = state.limits;
        let resumed = {
            let state = state.clone();
            let token = token.clone();
            web::block(move || -> appliance::error::Result<_> {
                let resumed = sessions::resume(&state.app.audit, &token, now, limits)?;
                let (banners, operator) = match &resumed {
                    Ok((_, user)) => {
                        let mut conn = state.app.store.conn()?;
                        let operator =
                            appliance::models::Organisation::find(&mut conn, user.organisation_id)?
                                .operator;
                        (appliance::access::banners(&mut conn, user)?, operator)
                    }
                    Err(_) => (Vec::new(), false),
                };
                Ok(resumed.map(|ok| (ok, banners, operator)))
            })
            .await
            .map_err(WebError::from)?
        };
        match resumed.map_err(WebError::from)? {
            Ok(((session, user), banners, operator)) => {
                let role = user.role().map_err(WebError::from)?;
                Ok(SignedIn {
                    csrf: csrf_token(&token),
                    user,
                    role,
                    operator,
                    session,
                    banners,
                })
            }
            Err(_) => Err(NeedsLogin("/login").into()),
        }
    })
}

impl FromRequest for SignedIn {
    type Error = actix_web::Error;
    type Future = Extracted<SignedIn>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let resuming = resume_session(req);
        Box::pin(async move {
            let signed_in = resuming.await?;
            match signed_in.session.second_factor.as_str() {
                "done" => Ok(signed_in),
                "pending" => Err(NeedsLogin("/login/second-factor").into()),
                _ => Err(NeedsLogin("/account/second-factor").into()),
            }
        })
    }
}

impl FromRequest for PartlySignedIn {
    type Error = actix_web::Error;
    type Future = Extracted<PartlySignedIn>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let resuming = resume_session(req);
        Box::pin(async move { resuming.await.map(PartlySignedIn) })
    }
}

/// The address a request came from, as audit records give it: the client's, also behind
/// a trusted proxy ([`client_ip`]).
pub(crate) fn source(req: &HttpRequest) -> String {
    client_ip(req)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", location))
        .finish()
}

/// A form that carries nothing but its CSRF token.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Why a submitted form was refused: each problem beside its field, anything else above
/// the form. Built from the core library's refusals; any other error is an error page.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    fields: Vec<(String, String)>,
    general: Option<String>,
}

impl Problems {
    pub fn of(err: appliance::Error) -> Result<Problems, WebError> {
        match err {
            appliance::Error::Invalid { field, problem } => Ok(Problems {
                fields: vec![(field.to_owned(), problem)],
                general: None,
            }),
            appliance::Error::Conflict(problem) => Ok(Problems::general(problem)),
            other => Err(other.into()),
        }
    }

    pub fn general(problem: impl Into<String>) -> Problems {
        Problems {
            fields: Vec::new(),
            general: Some(problem.into()),
        }
    }

    /// The problem with `name`, shown beside that field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, problem)| problem.as_str())
    }

    /// Problems not tied to a field the form shows (in `shown`), for the top of the form.
    pub fn other(&self, shown: &[&str]) -> Option<String> {
        let unshown = self
            .fields
            .iter()
            .filter(|(field, _)| !shown.contains(&field.as_str()))
            .map(|(field, problem)| format!("{field}: {problem}"));
        let all: Vec<String> = self.general.iter().cloned().chain(unshown).collect();
        (!all.is_empty()).then(|| all.join("; "))
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.general.is_none()
    }

    /// 422 for a form shown again with its problems, else 200.
    pub fn status(&self) -> StatusCode {
        if self.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

/// Renders a template as an HTML response with `status`.
pub fn html_with_status(
    template: &impl Template,
    status: StatusCode,
) -> Result<HttpResponse, WebError> {
    let body = template
        .render()
        .map_err(|err| WebError::Internal(err.to_string()))?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body))
}

/// Renders a template as an HTML response.
pub fn html(template: &impl Template) -> Result<HttpResponse, WebError> {
    template
        .render()
        .map(|body| {
            HttpResponse::Ok()
                .content_type("text/html; charset=utf-8")
                .body(body)
        })
        .map_err(|err| WebError::Internal(err.to_string()))
}
