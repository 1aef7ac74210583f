//! One's own open sessions, and ending one of them.

use actix_web::web;
use appliance::Actor;
use appliance::ids::SessionId;
use appliance::sessions;
use appliance::time::format_us;
use askama::Template;

use crate::error::WebError;
use crate::forms::CsrfForm;
use crate::render::{Nav, Page, html, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

struct SessionRow {
    id: SessionId,
    started: String,
    last_seen: String,
    source: String,
    user_agent: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    signed_in: Option<Nav>,
    rows: Vec<SessionRow>,
    csrf: String,
}

pub async fn sessions_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    let (now, limits, id) = (state.now(), state.limits, user.user.id);
    let open = {
        let state = state.clone();
        web::block(move || sessions::open_sessions(&mut *state.app.store.conn()?, id, now, limits))
            .await??
    };
    let rows = open
        .into_iter()
        .map(|s| SessionRow {
            current: s.id == user.session.id,
            id: s.id,
            started: format_us(s.created_at_us),
            last_seen: format_us(s.last_seen_us),
            source: s.source,
            user_agent: s.user_agent,
        })
        .collect();
    html(&SessionsPage {
        signed_in: Some(user.nav()),
        rows,
        csrf: user.csrf.clone(),
    })
}

pub async fn end_session(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    let target = SessionId(path.into_inner());
    let (now, limits, id) = (state.now(), state.limits, user.user.id);
    let ended = {
        let state = state.clone();
        web::block(move || -> appliance::error::Result<bool> {
            // Only one's own sessions; anyone else's id is simply not found.
            let mine = sessions::open_sessions(&mut *state.app.store.conn()?, id, now, limits)?;
            if !mine.iter().any(|s| s.id == target) {
                return Ok(false);
            }
            sessions::end(
                &state.app.audit,
                &Actor::User(id),
                target,
                "ended by its user",
                now,
            )
        })
        .await??
    };
    if ended {
        Ok(see_other("/sessions"))
    } else {
        Err(WebError::NotFound)
    }
}
