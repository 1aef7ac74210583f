//! `POST /v1/readings` over HTTPS: a batch of readings, acknowledged once durable.

use std::sync::Mutex;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use appliance::devices::Device;
use appliance::time::now_us;
use appliance::{Actor, Appliance, AuditEvent, Outcome};

use crate::decode::{self, Limits};
use crate::error::IngestError;
use crate::writer::Writer;

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub app: Appliance,
    pub writer: Writer,
    pub limits: Limits,
    pub auth_failures: AuthFailureLog,
}

/// Audits authentication failures, at most `per_minute` a minute, so that a flood of bad
/// credentials cannot fill the audit log. The rest are counted in the next record.
#[derive(Debug)]
pub struct AuthFailureLog {
    per_minute: u32,
    window: Mutex<(i64, u32, u64)>,
}

impl AuthFailureLog {
    pub fn new(per_minute: u32) -> AuthFailureLog {
        AuthFailureLog {
            per_minute,
            window: Mutex::new((0, 0, 0)),
        }
    }

    pub fn record(&self, app: &Appliance, source: &str, channel: &str, who: Option<&str>) {
        let minute = now_us() / 60_000_000;
        let suppressed = {
            let Ok(mut window) = self.window.lock() else {
                return;
            };
            if window.0 != minute {
                window.0 = minute;
                window.1 = 0;
            }
            window.1 += 1;
            if window.1 > self.per_minute {
                window.2 += 1;
                return;
            }
            std::mem::take(&mut window.2)
        };
        let event = AuditEvent::new(Actor::System("ingest".into()), "device.auth.failed")
            .source(source)
            .target(who.unwrap_or("unknown"))
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "channel": channel, "suppressed_before": suppressed }));
        if let Err(err) = app.audit.record(event) {
            tracing::error!(error = %err, "cannot audit an authentication failure");
        }
    }
}

/// The ingest's routes; tests use this same table.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/readings", web::post().to(post_readings))
        .configure(crate::firmware::config)
        .route("/healthz", web::get().to(health));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub(crate) fn bearer(req: &HttpRequest) -> Result<String, IngestError> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|secret| secret.trim().to_owned())
        .filter(|secret| !secret.is_empty())
        .ok_or(IngestError::MissingCredential)
}

fn check_headers(req: &HttpRequest) -> Result<bool, IngestError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(IngestError::BadContentType(content_type.to_owned()));
    }
    match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => Ok(false),
        Some("gzip") => Ok(true),
        Some(other) => Err(IngestError::BadEncoding(other.to_owned())),
    }
}

async fn post_readings(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, IngestError> {
    let secret = bearer(&req)?;
    let gzipped = check_headers(&req)?;
    let limits = shared.limits;
    let body = payload
        .to_bytes_limited(limits.max_body_bytes)
        .await
        .map_err(|_| IngestError::TooLarge {
            limit: limits.max_body_bytes,
        })?
        .map_err(|err| IngestError::BadJson(format!("the body could not be read: {err}")))?;
    let source = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let worker = shared.clone();
    let accepted = web::block(move || {
        let body = if gzipped {
            decode::gunzip(&body, limits.max_decoded_bytes)?
        } else {
            body.to_vec()
        };
        let mut conn = worker.app.store.conn().map_err(|err| {
            tracing::error!(error = %err, "no store connection");
            IngestError::Unavailable
        })?;
        let sender = Device::authenticate(&mut conn, &secret).map_err(|err| {
            tracing::error!(error = %err, "credential lookup failed");
            IngestError::Unavailable
        })?;
        let Some(sender) = sender else {
            drop(conn);
            worker
                .auth_failures
                .record(&worker.app, &source, "https", None);
            return Err(IngestError::BadCredential);
        };
        let batch = decode::parse(&body, &limits)?;
        let default_device = sender.serial.clone();
        decode::accept(
            &mut conn,
            &sender,
            &default_device,
            batch,
            &limits,
            now_us(),
        )
    })
    .await
    .map_err(|_| IngestError::Unavailable)??;
    let outcome = shared
        .writer
        .store(accepted)
        .await
        .map_err(|()| IngestError::Unavailable)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "accepted": outcome.accepted,
        "stored": outcome.stored,
        "duplicates": outcome.accepted - outcome.stored,
    })))
}
