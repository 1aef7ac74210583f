//! `POST /v1/readings` over HTTPS: a batch of readings, acknowledged once durable; and
//! `POST /v1/enrol`, a device's client certificate. The routes of [`config`] run behind
//! [`crate::auth::guard`], which holds a connection that has not authenticated to deadlines.
//! `POST /v1/readings` authenticates before it reads the body.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use appliance::device_ca;
use appliance::devices::{self, Device};
use appliance::time::now_us;

use crate::auth::{PeerCertificate, authenticated, bearer};
use crate::body::read_within;
use crate::decode::{self, Format};
use crate::error::IngestError;
use crate::shared::Shared;

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

/// The device `credential` authenticates as of `now`, if any.
fn authenticate(
    conn: &mut appliance::DbConnection,
    credential: &Credential,
    now: i64,
) -> Result<Option<Device>, IngestError> {
    match credential {
        Credential::Secret(secret) => Device::authenticate(conn, secret),
        Credential::Certificate(der) => device_ca::authenticate(conn, der, now),
    }
    .map_err(IngestError::from)
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
        let sender = authenticate(&mut conn, &credential, now_us())?;
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
    let body = read_within(payload, limits.max_body_bytes).await?;
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
        let now = now_us();
        match credential {
            Credential::Secret(token) => device_ca::enrol(
                &app.audit,
                &worker.device_ca,
                &request.serial,
                &token,
                request.csr.as_bytes(),
                now,
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
                let device = authenticate(&mut conn, &credential, now)?;
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
                    now,
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
