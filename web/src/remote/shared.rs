//! What the remote-access pages share: store work off the async workers, and how a refused
//! form is shown again.

use actix_web::web;

use crate::error::WebError;

/// Runs blocking store work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> appliance::error::Result<T> + Send + 'static,
) -> Result<T, WebError> {
    Ok(web::block(work).await??)
}

/// 422 for a page shown again with the reason its form was refused, else 200.
pub(super) fn status_for(problem: &Option<String>) -> actix_web::http::StatusCode {
    if problem.is_some() {
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        actix_web::http::StatusCode::OK
    }
}

/// A refusal the person can act on is shown on the page they were on; anything else is an
/// error page.
pub(super) fn problem_of(err: appliance::Error) -> Result<String, WebError> {
    match err {
        appliance::Error::Invalid { field, problem } => Ok(format!("{field}: {problem}")),
        appliance::Error::Conflict(problem) => Ok(problem),
        other => Err(other.into()),
    }
}
