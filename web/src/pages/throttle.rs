//! The throttle on attempts at a password or a code, per source address.

use actix_web::{HttpRequest, web};
use appliance::{Actor, AuditEvent};

use crate::client::client_ip;
use crate::error::WebError;
use crate::state::AppState;

/// Counts an attempt at a password or a code from this source, refusing it past the limit.
pub(super) async fn throttle(
    state: &web::Data<AppState>,
    req: &HttpRequest,
) -> Result<(), WebError> {
    throttle_for(state, req, None).await
}

/// [`throttle`] for an attempt at `account` (the email it names). A refusal computes no
/// hash, and only the first in a window from the source is written at once; the rest are
/// counted for its summary (`appliance::refusals`), so a flood costs no disk per request.
pub(super) async fn throttle_for(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    account: Option<&str>,
) -> Result<(), WebError> {
    let Some(ip) = client_ip(req) else {
        return Ok(());
    };
    let Err(seconds) = state.throttle_login(ip) else {
        return Ok(());
    };
    let source = ip.to_string();
    // The attacker chooses the text: a bounded piece of it, as the login compares it.
    let account: Option<String> = account.map(|a| {
        a.trim()
            .chars()
            .take(254)
            .collect::<String>()
            .to_lowercase()
    });
    let noted = state
        .refusals
        .note(&source, "throttled", account.as_deref(), state.now());
    if noted == appliance::refusals::Noted::InFull {
        let event = AuditEvent::new(Actor::System("web".into()), "auth.login.throttled")
            .source(&source)
            .outcome(appliance::Outcome::Denied)
            .details(match account {
                Some(email) => serde_json::json!({ "email": email }),
                None => serde_json::json!({}),
            });
        let audit = state.app.audit.clone();
        web::block(move || audit.record(event)).await??;
    }
    // Answered after a pause that holds no thread: a client that waits for its answers, as
    // browsers and load tools do, then sends one attempt per connection per pause, so a
    // flood of refusals cannot take the CPU the pages need.
    actix_web::rt::time::sleep(THROTTLED_PAUSE).await;
    Err(WebError::TooManyRequests(seconds))
}

/// How long a throttled attempt waits for its 429.
const THROTTLED_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);
