//! What every request passes before a handler: the security headers on every response, the
//! same-origin check on every request that changes state, and the refusal of forms that are
//! not UTF-8.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{DefaultHeaders, Next};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::client::{forwarded_host, from_trusted_proxy};
use crate::error::WebError;
use crate::state::AppState;

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

/// Whether every field of a URL-encoded query or form, once percent-decoded, is UTF-8 text
/// without a NUL character. PostgreSQL stores no NUL in text: one would fail the query with
/// an internal error instead of a refusal.
fn is_clean_text(encoded: &[u8]) -> bool {
    encoded.split(|b| *b == b'&').all(|pair| {
        let spaced: Vec<u8> = pair
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        std::str::from_utf8(&decoded).is_ok() && !decoded.contains(&0)
    })
}

/// A 400 for text that is not clean ([`is_clean_text`]): the API's JSON error body on the
/// API, a message page elsewhere.
fn unclean(req: ServiceRequest, what: &str) -> ServiceResponse<BoxBody> {
    let message = format!(
        "The {what} holds bytes that are not text (not UTF-8, or a NUL character); nothing was changed."
    );
    let response = if req.path().starts_with("/api/") {
        HttpResponse::BadRequest()
            .json(serde_json::json!({ "error": "request.invalid", "message": message }))
    } else {
        WebError::BadRequest(message).error_response()
    };
    req.into_response(response)
}

/// Refuses a request whose query, or whose form's fields, once percent-decoded, are not
/// UTF-8 text or hold a NUL character. The form reader would put U+FFFD in their place and
/// go on, storing text nobody typed, and a NUL would reach the store; here such a request
/// gets 400 and reaches no handler. Bodies over `web.max_body_bytes` get 413 as they would
/// there.
pub async fn utf8_forms_only(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    use futures_util::StreamExt;
    if !is_clean_text(req.query_string().as_bytes()) {
        return Ok(unclean(req, "query"));
    }
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
    if !is_clean_text(&body) {
        return Ok(unclean(req, "form"));
    }
    req.set_payload(actix_web::dev::Payload::from(body.freeze()));
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}
