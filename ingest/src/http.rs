//! `POST /v1/readings` over HTTPS: a batch of readings, acknowledged once durable.
//!
//! A connection that has not authenticated is held to deadlines: actix's TLS handshake
//! timeout and its first-request timeout (the head) take half of
//! `ingest.handshake_timeout_seconds` each; then [`guard`] bounds the body read before the
//! request authenticated by the whole of it, and closes the connection after every response
//! to a request that did not authenticate ([`authenticated`]), so keep-alive (whose later
//! request heads actix does not time) is only for devices. `POST /v1/readings`
//! authenticates before it reads the body.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{ConnectionType, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use appliance::device_ca::{self, DeviceCa};
use appliance::devices::{self, Device};
use appliance::time::now_us;
use appliance::{Actor, Appliance, AuditEvent, Outcome};

use crate::decode::{self, Format, Limits};
use crate::error::IngestError;
use crate::writer::Writer;

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub app: Appliance,
    pub writer: Writer,
    pub limits: Limits,
    pub auth_failures: AuthFailureLog,
    pub device_ca: DeviceCa,
}

/// The client certificate (DER) the TLS handshake verified against the device CA, put in
/// the connection's data by [`peer_certificate`].
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Vec<u8>);

/// For `HttpServer::on_connect`: keeps the verified client certificate, if one was sent.
pub fn peer_certificate(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    if let Some(tls) = connection
        .downcast_ref::<actix_tls::accept::openssl::TlsStream<actix_web::rt::net::TcpStream>>()
        && let Some(cert) = tls.ssl().peer_certificate()
        && let Ok(der) = cert.to_der()
    {
        data.insert(PeerCertificate(der));
    }
}

/// How a request proved who sent it.
#[derive(Clone)]
enum Credential {
    Secret(String),
    Certificate(Vec<u8>),
}

impl Credential {
    /// What the writer checks again when it stores the request's readings.
    fn key(&self) -> Result<devices::Credential, IngestError> {
        match self {
            Credential::Secret(secret) => Ok(devices::Credential::of_secret(secret)),
            Credential::Certificate(der) => {
                devices::Credential::of_certificate(der).map_err(|_| IngestError::BadCredential)
            }
        }
    }
}

/// Whether the request authenticated; shared by [`guard`] and the request's body.
#[derive(Clone, Default)]
struct Authenticated(Rc<Cell<bool>>);

/// Marks the request as sent by an authenticated device: its body is no longer held to the
/// deadline, and its connection may stay open for the next request.
pub(crate) fn authenticated(req: &HttpRequest) {
    if let Some(state) = req.extensions().get::<Authenticated>() {
        state.0.set(true);
    }
}

/// Middleware for every route: see the module's comment.
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let deadline = req
        .app_data::<web::Data<Shared>>()
        .map(|shared| shared.app.config.ingest.handshake_timeout_seconds)
        .unwrap_or(10);
    let state = Authenticated::default();
    req.extensions_mut().insert(state.clone());
    let body = req.take_payload();
    let body: Pin<Box<dyn futures_util::Stream<Item = _>>> = Box::pin(Deadlined {
        body,
        sleep: Box::pin(tokio::time::sleep(Duration::from_secs(deadline))),
        lifted: state.0.clone(),
        expired: false,
    });
    req.set_payload(body.into());
    let mut response = next.call(req).await?;
    if !state.0.get() {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}

/// A request body that fails once the deadline passed, unless the request authenticated.
struct Deadlined {
    body: actix_web::dev::Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    lifted: Rc<Cell<bool>>,
    expired: bool,
}

impl futures_util::Stream for Deadlined {
    type Item = Result<bytes::Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if !self.lifted.get() && self.sleep.as_mut().poll(cx).is_ready() {
            self.expired = true;
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the body did not arrive before the deadline",
                ),
            ))));
        }
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// A bearer secret if there is one, else the client certificate.
fn credential(req: &HttpRequest) -> Result<Credential, IngestError> {
    match bearer(req) {
        Ok(secret) => Ok(Credential::Secret(secret)),
        Err(missing) => req
            .conn_data::<PeerCertificate>()
            .map(|cert| Credential::Certificate(cert.0.clone()))
            .ok_or(missing),
    }
}

fn authenticate(
    conn: &mut appliance::DbConnection,
    credential: &Credential,
) -> Result<Option<Device>, IngestError> {
    match credential {
        Credential::Secret(secret) => Device::authenticate(conn, secret),
        Credential::Certificate(der) => device_ca::authenticate(conn, der),
    }
    .map_err(IngestError::from)
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
        .route("/v1/enrol", web::post().to(post_enrol))
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

/// The body's format and whether it is gzip-compressed.
fn check_headers(req: &HttpRequest) -> Result<(Format, bool), IngestError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::from_content_type(Some(content_type))?;
    let gzipped = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => Ok(false),
        Some("gzip") => Ok(true),
        Some(other) => Err(IngestError::BadEncoding(other.to_owned())),
    }?;
    Ok((format, gzipped))
}

/// The answer's format: CBOR when `Accept` ranks `application/cbor` above JSON, else JSON.
fn answer_format(req: &HttpRequest) -> Format {
    use actix_web::http::header::{Accept, Header};
    Accept::parse(req)
        .ok()
        .and_then(|accept| {
            accept.ranked().into_iter().find_map(|mime| {
                match (mime.type_().as_str(), mime.subtype().as_str()) {
                    ("application", "cbor") => Some(Format::Cbor),
                    ("application", "json" | "*") | ("*", "*") => Some(Format::Json),
                    _ => None,
                }
            })
        })
        .unwrap_or(Format::Json)
}

async fn post_readings(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, IngestError> {
    let credential = credential(&req)?;
    let key = credential.key()?;
    let (format, gzipped) = check_headers(&req)?;
    let limits = shared.limits;
    let source = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    // Who sends, before the body is read: a client that cannot authenticate gets its 401
    // without the service buffering (or waiting for) a body for it.
    let worker = shared.clone();
    let sender = web::block(move || {
        let mut conn = worker.app.store.conn().map_err(|err| {
            tracing::error!(error = %err, "no store connection");
            IngestError::Unavailable
        })?;
        let sender = authenticate(&mut conn, &credential)?;
        drop(conn);
        sender.ok_or_else(|| {
            worker
                .auth_failures
                .record(&worker.app, &source, "https", None);
            IngestError::BadCredential
        })
    })
    .await
    .map_err(|_| IngestError::Unavailable)??;
    authenticated(&req);
    let body = payload
        .to_bytes_limited(limits.max_body_bytes)
        .await
        .map_err(|_| IngestError::TooLarge {
            limit: limits.max_body_bytes,
        })?
        .map_err(|err| IngestError::BadJson(format!("the body could not be read: {err}")))?;
    let worker = shared.clone();
    let accepted = web::block(move || {
        let body = if gzipped {
            decode::gunzip(&body, limits.max_decoded_bytes)?
        } else {
            body.to_vec()
        };
        let batch = decode::parse(format, &body, &limits)?;
        let mut conn = worker.app.store.conn().map_err(|err| {
            tracing::error!(error = %err, "no store connection");
            IngestError::Unavailable
        })?;
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
        .store(accepted, key)
        .await
        .map_err(IngestError::from)?;
    let answer = serde_json::json!({
        "accepted": outcome.accepted,
        "stored": outcome.stored,
        "duplicates": outcome.accepted - outcome.stored,
    });
    match answer_format(&req) {
        Format::Json => Ok(HttpResponse::Ok().json(answer)),
        Format::Cbor => {
            let mut body = Vec::new();
            // The readings are stored: should encoding fail, the answer falls back to JSON
            // rather than reporting a failure.
            match ciborium::ser::into_writer(&answer, &mut body) {
                Ok(()) => Ok(HttpResponse::Ok()
                    .content_type("application/cbor")
                    .body(body)),
                Err(_) => Ok(HttpResponse::Ok().json(answer)),
            }
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    serial: String,
    /// A PEM certificate signing request; only its public key is used.
    csr: String,
}

/// `POST /v1/enrol`: with `Authorization: Bearer {enrolment token}`, the first certificate;
/// with the device's current client certificate instead, a renewal.
async fn post_enrol(
    req: HttpRequest,
    body: web::Json<EnrolRequest>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, IngestError> {
    let credential = credential(&req)?;
    let source = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let request = body.into_inner();
    let worker = shared.clone();
    let issued = web::block(move || {
        let refused = |err: appliance::Error| match err {
            appliance::Error::Invalid { .. }
            | appliance::Error::NotFound(_)
            | appliance::Error::Conflict(_) => IngestError::Enrolment(err.to_string()),
            other => IngestError::from(other),
        };
        let app = &worker.app;
        match credential {
            Credential::Secret(token) => device_ca::enrol(
                &app.audit,
                &worker.device_ca,
                &request.serial,
                &token,
                request.csr.as_bytes(),
            )
            .map(|(_, cert)| cert)
            .inspect_err(|_| {
                worker
                    .auth_failures
                    .record(app, &source, "enrol", Some(&request.serial));
            })
            .map_err(refused),
            Credential::Certificate(_) => {
                let mut conn = app.store.conn().map_err(|_| IngestError::Unavailable)?;
                let device = authenticate(&mut conn, &credential)?;
                drop(conn);
                let Some(device) = device.filter(|d| d.serial == request.serial) else {
                    worker
                        .auth_failures
                        .record(app, &source, "enrol", Some(&request.serial));
                    return Err(IngestError::BadCredential);
                };
                device_ca::renew(
                    &app.audit,
                    &worker.device_ca,
                    &device,
                    request.csr.as_bytes(),
                )
                .map_err(refused)
            }
        }
    })
    .await
    .map_err(|_| IngestError::Unavailable)??;
    let pem = |bytes: Option<Vec<u8>>| {
        bytes
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(IngestError::Unavailable)
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "certificate": pem(issued.to_pem().ok())?,
        "ca": pem(shared.device_ca.cert_pem().ok())?,
    })))
}
