//! What the remote-access pages share: store work off the async workers, and which refusals
//! are shown on the page they were made on.

use actix_web::web;

use crate::error::WebError;

/// Runs blocking store work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> appliance::error::Result<T> + Send + 'static,
) -> Result<T, WebError> {
    Ok(web::block(work).await??)
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
