//! The API's errors: every one answers as `{"error": code, "message": ...}` with its status.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Kind;

/// Every API error, as `{"error": code, "message": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("send Authorization: Bearer followed by an API token")]
    MissingToken,
    #[error("the token is unknown, expired or revoked")]
    InvalidToken,
    #[error("the token lacks the scope {0}")]
    MissingScope(&'static str),
    /// The core refused the caller: a role or ownership rule, not the token's scope.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no such resource")]
    NotFound,
    /// The path exists but not for this method; the value is the `Allow` header's.
    #[error("this path takes only {0}")]
    MethodNotAllowed(String),
    #[error("too many requests; retry in {0} seconds")]
    RateLimited(u64),
    /// A request refused for what it says (422): a bundle refused by verification, with the
    /// refusal's code (`bundle.untrusted_signer`, ...), or a value refused with its field
    /// named (`request.refused`).
    #[error("{message}")]
    Rejected { code: &'static str, message: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(String),
    /// Firmware cannot be verified here (no updater settings or trust anchors). The value
    /// is the cause for the log: it names files on the appliance, which a client is not
    /// told.
    #[error(
        "firmware cannot be verified on this appliance: its updater settings or trust anchors are missing or unreadable; an administrator finds the cause in the log"
    )]
    Unavailable(String),
    /// The data partition is full: nothing was stored; retry once space is freed.
    #[error("{0}")]
    StorageFull(String),
    #[error("the appliance could not answer; the event was logged")]
    Internal,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, such as `auth.invalid_token`.
    error: &'static str,
    message: String,
}

impl ApiError {
    pub fn kind(&self) -> Kind {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken => Kind::Unauthenticated,
            ApiError::MissingScope(_) | ApiError::Forbidden(_) => Kind::Forbidden,
            ApiError::Invalid(_) => Kind::Invalid,
            ApiError::NotFound => Kind::NotFound,
            ApiError::MethodNotAllowed(_) => Kind::MethodNotAllowed,
            ApiError::RateLimited(_) => Kind::TooMany,
            ApiError::Rejected { .. } => Kind::Rejected,
            ApiError::TooLarge(_) => Kind::TooLarge,
            ApiError::Conflict(_) => Kind::Conflict,
            ApiError::Unavailable(_) | ApiError::StorageFull(_) => Kind::Unavailable,
            ApiError::Internal => Kind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MissingToken => "auth.missing_token",
            ApiError::InvalidToken => "auth.invalid_token",
            ApiError::MissingScope(_) => "auth.missing_scope",
            ApiError::Forbidden(_) => "request.forbidden",
            ApiError::Invalid(_) => "request.invalid",
            ApiError::NotFound => "request.not_found",
            ApiError::MethodNotAllowed(_) => "request.method_not_allowed",
            ApiError::RateLimited(_) => "rate.limited",
            ApiError::Rejected { code, .. } => code,
            ApiError::TooLarge(_) => "bundle.too_large",
            ApiError::Conflict(_) => "request.conflict",
            ApiError::Unavailable(_) => "firmware.unavailable",
            ApiError::StorageFull(_) => "storage.full",
            ApiError::Internal => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind().status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::RateLimited(seconds) = self {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        if matches!(self, ApiError::MissingToken | ApiError::InvalidToken) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::MethodNotAllowed(allow) = self {
            response.insert_header((actix_web::http::header::ALLOW, allow.as_str()));
        }
        // The client's message is generic; the cause, with its paths, is for the log.
        if let ApiError::Unavailable(cause) = self {
            tracing::error!(cause = %cause, "firmware cannot be verified");
        }
        response.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

/// Each arm gives the variant of [`Kind::of`] (a test holds them together).
impl ApiError {
    /// A refusal of what a request says: a value the core library refused, naming its
    /// field, is 422 `request.refused`; a body that is not the documented JSON is 400
    /// before it gets here. Anything else maps as [`From`] does.
    pub fn refusal(err: appliance::Error) -> ApiError {
        match err {
            appliance::Error::Invalid { field, problem } => ApiError::Rejected {
                code: "request.refused",
                message: format!("{field}: {problem}"),
            },
            other => other.into(),
        }
    }
}

impl From<appliance::Error> for ApiError {
    fn from(err: appliance::Error) -> Self {
        match err {
            appliance::Error::Invalid { field, problem } => {
                ApiError::Invalid(format!("{field}: {problem}"))
            }
            appliance::Error::NotFound(_) => ApiError::NotFound,
            appliance::Error::Conflict(message) => ApiError::Conflict(message),
            appliance::Error::Forbidden(message) => ApiError::Forbidden(message),
            // Its message names what could not be written, never where.
            full @ appliance::Error::StorageFull { .. } => ApiError::StorageFull(full.to_string()),
            other => {
                tracing::error!(error = %other, "api request failed");
                ApiError::Internal
            }
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        ApiError::Internal
    }
}
