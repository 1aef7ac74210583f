//! Summaries of refused sign-ins (`appliance::refusals`), written while the portal runs.

use std::time::Duration;

use crate::state::AppState;

/// Writes the summaries of refused sign-ins (`appliance::refusals`) while the portal runs:
/// every second, those whose window has ended, so a summary comes even when the flood has
/// stopped; and, when the returned guard is dropped (the servers stopped, gracefully or
/// not), every window still open. Call it inside the portal's runtime.
pub fn summarise_refusals(state: actix_web::web::Data<AppState>) -> RefusalFlush {
    let ticking = state.clone();
    actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(Duration::from_secs(1)).await;
            let state = ticking.clone();
            let flushed = actix_web::web::block(move || {
                state.refusals.flush(&state.app.audit, state.now(), false)
            })
            .await;
            match flushed {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "cannot record the summaries of refused sign-ins")
                }
                Err(err) => tracing::error!(error = %err, "the refusal summaries task failed"),
            }
        }
    });
    RefusalFlush { state }
}

/// Flushes every open summary of refused sign-ins when dropped; see [`summarise_refusals`].
#[derive(Debug)]
pub struct RefusalFlush {
    state: actix_web::web::Data<AppState>,
}

impl Drop for RefusalFlush {
    fn drop(&mut self) {
        let state = &self.state;
        match state.refusals.flush(&state.app.audit, state.now(), true) {
            Ok(written) => tracing::info!(
                written,
                "summaries of refused sign-ins recorded at shutdown"
            ),
            Err(err) => {
                tracing::error!(error = %err, "cannot record the summaries of refused sign-ins at shutdown")
            }
        }
    }
}
