//! Signing in with email and password (the second factor follows in
//! [`super::second_factor`]), and signing out.

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::Actor;
use appliance::accounts;
use appliance::second_factor;
use appliance::sessions::{self, SecondFactor};
use askama::Template;
use serde::Deserialize;

use super::cookies::{browser_cookie, ended_session_cookie, presented_browser, session_cookie};
use super::setup::needs_setup;
use super::throttle::throttle_for;
use crate::client::source;
use crate::error::WebError;
use crate::forms::CsrfForm;
use crate::render::{Nav, Page, html, html_into, see_other};
use crate::session::{SESSION_COOKIE, SignedIn};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct LoginPage {
    pub(super) signed_in: Option<Nav>,
    pub(super) email: String,
    pub(super) problem: Option<&'static str>,
    pub(super) note: Option<&'static str>,
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    created: Option<String>,
    ended: Option<String>,
}

pub async fn login_form(state: web::Data<AppState>, query: web::Query<LoginQuery>) -> Page {
    if needs_setup(&state).await? {
        return Ok(see_other("/setup"));
    }
    let note = match (&query.created, &query.ended) {
        (Some(_), _) => Some("The administrator was created. Log in."),
        (_, Some(_)) => Some("You are logged out."),
        _ => None,
    };
    html(&LoginPage {
        signed_in: None,
        email: String::new(),
        problem: None,
        note,
    })
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// The one message for every refused login: it never tells whether the account exists.
pub const LOGIN_REFUSED: &str =
    "The email or password is wrong, or the account cannot log in right now.";

/// Why a sign-in that waited for its second factor was ended. Only someone who gave the
/// right password sees it.
pub const CODES_LOCKED: &str = "Too many wrong codes were given for this account, so this sign-in has ended \
     and codes are refused for a while. The account's owner was told by email.";

/// `Retry-After` when too many password checks wait (`appliance::refusals::CheckGate`).
const BUSY_RETRY_SECONDS: u64 = 2;

fn user_agent(req: &HttpRequest) -> String {
    req.headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub async fn login_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> Page {
    throttle_for(&state, &req, Some(&form.email)).await?;
    let form = form.into_inner();
    let (now, source, lockout, agent) =
        (state.now(), source(&req), state.lockout, user_agent(&req));
    let old_token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
    let browser = presented_browser(&req);
    let email = form.email.clone();
    type Started = (sessions::SessionToken, SecondFactor, Option<String>);
    // `Err(seconds)`: too many password checks wait; nothing was checked or counted.
    type Checked = appliance::error::Result<Result<Option<Started>, u64>>;
    let started = {
        let state = state.clone();
        web::block(move || -> Checked {
            let attempt = accounts::Attempt {
                email: &form.email,
                password: &form.password,
                source: &source,
                browser: browser.as_deref(),
                now,
            };
            let result =
                accounts::login_summarised(&state.app.audit, &state.refusals, &attempt, lockout)?;
            if result.too_busy() {
                return Ok(Err(BUSY_RETRY_SECONDS));
            }
            let Some(user) = result.user else {
                return Ok(Ok(None));
            };
            // A fresh id at every login; an id held before login is ended, never promoted.
            if let Some(old) = old_token
                && let Ok((old_session, _)) =
                    sessions::resume(&state.app.audit, &old, now, state.limits)?
            {
                sessions::end(
                    &state.app.audit,
                    &Actor::User(user.id),
                    old_session.id,
                    "replaced at login",
                    now,
                )?;
            }
            let mut conn = state.app.store.conn()?;
            let factor =
                second_factor::step_after_password(&mut conn, &user, &state.second_factor_roles)?;
            let (token, _) = sessions::start(&mut conn, user.id, &source, &agent, now, factor)?;
            drop(conn);
            // Signed in completely: this browser is now one the account knows.
            let browser = match factor {
                SecondFactor::Done => Some(accounts::remember_browser(
                    &state.app.audit,
                    user.id,
                    browser.as_deref(),
                    &source,
                    &agent,
                    now,
                )?),
                SecondFactor::Pending | SecondFactor::Enrol => None,
            };
            Ok(Ok(Some((token, factor, browser))))
        })
        .await??
        .map_err(WebError::TooManyRequests)?
    };
    match started {
        Some((token, factor, browser)) => {
            let next = match factor {
                SecondFactor::Done => "/",
                SecondFactor::Pending => "/login/second-factor",
                SecondFactor::Enrol => "/account/second-factor",
            };
            let mut response = HttpResponse::SeeOther();
            response.cookie(session_cookie(&token, state.limits));
            if let Some(browser) = browser {
                response.cookie(browser_cookie(browser));
            }
            Ok(response.insert_header(("Location", next)).finish())
        }
        None => {
            let page = LoginPage {
                signed_in: None,
                email,
                problem: Some(LOGIN_REFUSED),
                note: None,
            };
            html_into(&mut HttpResponse::Unauthorized(), &page)
        }
    }
}

pub async fn logout(state: web::Data<AppState>, user: SignedIn, form: web::Form<CsrfForm>) -> Page {
    user.check_csrf(&form.csrf)?;
    let now = state.now();
    let (audit, session, actor) = (
        state.app.audit.clone(),
        user.session.id,
        Actor::User(user.user.id),
    );
    web::block(move || sessions::end(&audit, &actor, session, "logout", now)).await??;
    Ok(HttpResponse::SeeOther()
        .cookie(ended_session_cookie())
        .insert_header(("Location", "/login?ended=1"))
        .finish())
}
