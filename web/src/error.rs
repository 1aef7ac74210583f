//! The portal's errors: what a person is told went wrong, and how the core library's
//! errors map onto it. [`Kind`] is the one place where an error gets its HTTP status, for
//! the pages and the API alike (`crate::api::error`), so the same refusal from the core
//! answers with the same status wherever it happens. How an error answers on a page (a
//! message page) is in [`crate::render`].

use actix_web::http::StatusCode;

/// What kind of refusal an error is; its HTTP status follows from that alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request itself is wrong: a field, a parameter, a malformed body.
    Invalid,
    /// No credentials, or unknown ones.
    Unauthenticated,
    /// Known, but not allowed to do this.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// Valid, but the thing is not in a state that allows it (already decided, taken).
    Conflict,
    /// Well-formed, and refused on its content (a bundle that fails verification).
    Rejected,
    TooLarge,
    TooMany,
    /// Cannot be served now (storage full, no trust anchors): retry later.
    Unavailable,
    Internal,
    /// Not an error to show: go there first (a password confirmation).
    Redirect,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::TooMany => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Redirect => StatusCode::SEE_OTHER,
        }
    }

    /// How a refusal of the core library answers. Anything that is not a refusal of the
    /// request (the store, a key, a file) is internal: its cause goes to the log.
    pub fn of(err: &appliance::Error) -> Kind {
        match err {
            appliance::Error::Invalid { .. } => Kind::Invalid,
            appliance::Error::NotFound(_) => Kind::NotFound,
            appliance::Error::Conflict(_) => Kind::Conflict,
            appliance::Error::Forbidden(_) => Kind::Forbidden,
            appliance::Error::StorageFull { .. } => Kind::Unavailable,
            _ => Kind::Internal,
        }
    }
}

/// Errors a person sees: a page that says what happened. Causes go to the log, not the page.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
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

impl WebError {
    pub fn kind(&self) -> Kind {
        match self {
            WebError::BadRequest(_) => Kind::Invalid,
            WebError::Forbidden(_) => Kind::Forbidden,
            WebError::Conflict(_) => Kind::Conflict,
            WebError::NotFound => Kind::NotFound,
            WebError::MethodNotAllowed(_) => Kind::MethodNotAllowed,
            WebError::TooManyRequests(_) => Kind::TooMany,
            WebError::Internal(_) => Kind::Internal,
            WebError::StorageFull => Kind::Unavailable,
            WebError::ConfirmFirst(_) => Kind::Redirect,
        }
    }
}

/// Each arm gives the variant of [`Kind::of`] (a test holds them together), keeping the
/// core's message where a person may read it.
impl From<appliance::Error> for WebError {
    fn from(err: appliance::Error) -> Self {
        match err {
            appliance::Error::Invalid { field, problem } => {
                WebError::BadRequest(format!("{field}: {problem}"))
            }
            appliance::Error::NotFound(_) => WebError::NotFound,
            appliance::Error::Conflict(message) => WebError::Conflict(message),
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
