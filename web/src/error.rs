//! The portal's errors: what a person is told went wrong, and how the core library's
//! errors map onto it. How an error answers (a message page) is in [`crate::render`].

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
