//! The ingest's one error type, and the writer's reasons for not storing ([`Refused`]),
//! which every channel answers in its own way. Every refusal has a stable code and a message
//! a device maker can act on; the mapping to HTTP status and JSON is here and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "missing or malformed Authorization header; send `Authorization: Bearer <device secret>`"
    )]
    MissingCredential,
    #[error("the device secret is unknown or revoked")]
    BadCredential,
    #[error("unknown device {0:?}; register it with `plantgate device add`")]
    UnknownDevice(String),
    #[error(
        "{credential} may not post for {device}: only for itself or, as a gateway, for devices registered behind it"
    )]
    ForeignDevice { credential: String, device: String },
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("unsupported Content-Encoding {0:?}; allowed: gzip, identity")]
    BadEncoding(String),
    #[error("unsupported Content-Type {0:?}; send application/json or application/cbor")]
    BadContentType(String),
    #[error("the body is not UTF-8: {0}")]
    InvalidUtf8(String),
    #[error("the body is not a valid batch: {0}")]
    BadJson(String),
    #[error("the body is not a valid CBOR batch: {0}")]
    BadCbor(String),
    #[error("reading {index}: {problem}")]
    BadReading { index: usize, problem: String },
    #[error("state: {0}")]
    BadState(String),
    #[error("the batch has {count} readings; at most {limit} are allowed")]
    TooManyReadings { count: usize, limit: usize },
    #[error(
        "no such firmware is offered to this device: it is not in a running rollout of it, or not of its model"
    )]
    FirmwareNotOffered,
    #[error("the range is outside the payload's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("the status report is not acceptable: {0}")]
    BadStatus(String),
    #[error("the store is unavailable; nothing was stored, retry later")]
    Unavailable,
    /// The appliance's data partition is full: refused, not failed; it clears by itself
    /// once space is freed.
    #[error(
        "storage full: the appliance has no space left to store this; nothing was stored, retry later"
    )]
    StorageFull,
    /// A certificate enrolment was refused: bad token, unknown device, bad CSR.
    #[error("enrolment refused: {0}")]
    Enrolment(String),
}

/// Why the writer did not store a request's readings ([`crate::writer::Writer::store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The store failed (or the writer is gone); the request may be retried.
    Unavailable,
    /// The data partition is full ([`appliance::Error::StorageFull`]); the request may be
    /// retried once space is freed, with no restart.
    StorageFull,
    /// The sender's credential no longer authenticates it.
    Revoked,
}

impl IngestError {
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::MissingCredential => "auth.missing_credential",
            IngestError::BadCredential => "auth.invalid_credential",
            IngestError::UnknownDevice(_) => "device.unknown",
            IngestError::ForeignDevice { .. } => "device.forbidden",
            IngestError::TooLarge { .. } => "body.too_large",
            IngestError::BadGzip(_) => "body.bad_gzip",
            IngestError::BadEncoding(_) => "body.bad_encoding",
            IngestError::BadContentType(_) => "body.bad_content_type",
            IngestError::InvalidUtf8(_) => "body.invalid_utf8",
            IngestError::BadJson(_) => "body.invalid_json",
            IngestError::BadCbor(_) => "body.invalid_cbor",
            IngestError::BadReading { .. } => "reading.invalid",
            IngestError::BadState(_) => "state.invalid",
            IngestError::TooManyReadings { .. } => "batch.too_large",
            IngestError::FirmwareNotOffered => "firmware.not_offered",
            IngestError::RangeNotSatisfiable { .. } => "range.not_satisfiable",
            IngestError::BadStatus(_) => "firmware.bad_status",
            IngestError::Unavailable => "store.unavailable",
            IngestError::StorageFull => "storage.full",
            IngestError::Enrolment(_) => "enrolment.refused",
        }
    }
}

impl From<appliance::Error> for IngestError {
    /// A failure of the store or the audit log while serving a device: storage full is said
    /// as such (503 with the reason); anything else is logged here and answered as
    /// unavailable, without its cause (which may name files on the appliance).
    fn from(err: appliance::Error) -> Self {
        if err.is_storage_full() {
            tracing::warn!(error = %err, "refused: storage full");
            IngestError::StorageFull
        } else {
            tracing::error!(error = %err, code = err.code(), "store failed");
            IngestError::Unavailable
        }
    }
}

impl From<Refused> for IngestError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Revoked => IngestError::BadCredential,
            Refused::Unavailable => IngestError::Unavailable,
            Refused::StorageFull => IngestError::StorageFull,
        }
    }
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        match self {
            IngestError::MissingCredential | IngestError::BadCredential => StatusCode::UNAUTHORIZED,
            IngestError::ForeignDevice { .. } => StatusCode::FORBIDDEN,
            IngestError::UnknownDevice(_) | IngestError::FirmwareNotOffered => {
                StatusCode::NOT_FOUND
            }
            IngestError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            IngestError::TooLarge { .. } | IngestError::TooManyReadings { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::BadEncoding(_) | IngestError::BadContentType(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngestError::BadGzip(_)
            | IngestError::InvalidUtf8(_)
            | IngestError::BadJson(_)
            | IngestError::BadCbor(_) => StatusCode::BAD_REQUEST,
            IngestError::BadReading { .. }
            | IngestError::BadState(_)
            | IngestError::BadStatus(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::Unavailable | IngestError::StorageFull => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Enrolment(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            IngestError::Unavailable => {
                response.insert_header(("Retry-After", "5"));
            }
            // Space is freed by a person, not in seconds: a device that retries every
            // five seconds only adds load meanwhile.
            IngestError::StorageFull => {
                response.insert_header(("Retry-After", "60"));
            }
            _ => {}
        }
        if let IngestError::RangeNotSatisfiable { size } = self {
            response.insert_header(("Content-Range", format!("bytes */{size}")));
        }
        response.json(serde_json::json!({ "error": self.code(), "message": self.to_string() }))
    }
}
