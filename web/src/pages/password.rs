//! One's own password: changing it, and giving it again (with the second factor, when
//! enrolled) before a sensitive page.

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::Actor;
use appliance::accounts;
use appliance::second_factor;
use appliance::sessions::{self, SecondFactor};
use askama::Template;
use serde::Deserialize;

use super::cookies::{presented_browser, session_cookie};
use super::throttle::throttle;
use crate::client::source;
use crate::render::{Nav, Page, html, html_into, see_other};
use crate::session::{SignedIn, csrf_token};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    signed_in: Option<Nav>,
    csrf: String,
    problem: Option<String>,
    done: bool,
    min_chars: u32,
}

pub async fn password_form(state: web::Data<AppState>, user: SignedIn) -> Page {
    html(&PasswordPage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        problem: None,
        done: false,
        min_chars: state.policy.min_chars,
    })
}

#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
}

/// Changes one's own password: the current one is checked first, and every session ends,
/// this one included, which is replaced by a fresh one.
pub async fn password_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: SignedIn,
    form: web::Form<PasswordForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    throttle(&state, &req).await?;
    let form = form.into_inner();
    let (now, source) = (state.now(), source(&req));
    let browser = presented_browser(&req);
    let changed = {
        let state = state.clone();
        let user = user.clone();
        web::block(
            move || -> appliance::error::Result<Result<sessions::SessionToken, String>> {
                let check = accounts::login_from(
                    &state.app.audit,
                    &user.user.email,
                    &form.current,
                    &source,
                    browser.as_deref(),
                    now,
                    state.lockout,
                )?;
                if check.user.is_none() {
                    return Ok(Err("The current password is wrong.".to_owned()));
                }
                match accounts::set_password(
                    &state.app.audit,
                    &Actor::User(user.user.id),
                    &user.user,
                    &form.new,
                    state.policy,
                    now,
                ) {
                    Err(appliance::Error::Invalid { problem, .. }) => return Ok(Err(problem)),
                    other => other?,
                }
                sessions::end_all(
                    &mut *state.app.store.conn()?,
                    user.user.id,
                    None,
                    "password changed",
                    now,
                )?;
                let (token, _) = sessions::start(
                    &mut *state.app.store.conn()?,
                    user.user.id,
                    &user.session.source,
                    &user.session.user_agent,
                    now,
                    SecondFactor::Done,
                )?;
                Ok(Ok(token))
            },
        )
        .await??
    };
    match changed {
        Ok(token) => {
            let page = PasswordPage {
                signed_in: Some(user.nav()),
                csrf: csrf_token(token.reveal()),
                problem: None,
                done: true,
                min_chars: state.policy.min_chars,
            };
            let mut response = HttpResponse::Ok();
            response.cookie(session_cookie(&token, state.limits));
            html_into(&mut response, &page)
        }
        Err(problem) => {
            let page = PasswordPage {
                signed_in: Some(user.nav()),
                csrf: user.csrf.clone(),
                problem: Some(problem),
                done: false,
                min_chars: state.policy.min_chars,
            };
            html_into(&mut HttpResponse::UnprocessableEntity(), &page)
        }
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    signed_in: Option<Nav>,
    csrf: String,
    next: String,
    needs_code: bool,
    problem: Option<&'static str>,
}

#[derive(Debug, Deserialize)]
pub struct ConfirmQuery {
    #[serde(default)]
    next: String,
}

/// Pages one may be sent back to after confirming: a fixed list, so `next` cannot point
/// anywhere else.
fn confirm_target(next: &str) -> &'static str {
    match next {
        "users" => "/users",
        "organisations" => "/organisations",
        "settings" => "/settings",
        "errors" => "/errors",
        "email" => "/account/email",
        "firmware" => "/firmware",
        _ => "/",
    }
}

pub async fn confirm_form(
    state: web::Data<AppState>,
    user: SignedIn,
    query: web::Query<ConfirmQuery>,
) -> Page {
    let needs_code = {
        let (state, id) = (state.clone(), user.user.id);
        web::block(move || second_factor::is_enrolled(&mut *state.app.store.conn()?, id)).await??
    };
    html(&ConfirmPage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        next: query.next.clone(),
        needs_code,
        problem: None,
    })
}

#[derive(Debug, Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

/// Checks the password (and the second factor, when enrolled) again, and records it.
/// Failures count toward the lockout like any login.
pub async fn confirm_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: SignedIn,
    form: web::Form<ConfirmForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    throttle(&state, &req).await?;
    let form = form.into_inner();
    let (now, source) = (state.now(), source(&req));
    let browser = presented_browser(&req);
    let (confirmed, needs_code) = {
        let state = state.clone();
        let user = user.clone();
        let (password, code) = (form.password.clone(), form.code.clone());
        web::block(move || -> appliance::error::Result<(bool, bool)> {
            let needs_code =
                second_factor::is_enrolled(&mut *state.app.store.conn()?, user.user.id)?;
            let password_ok = accounts::login_from(
                &state.app.audit,
                &user.user.email,
                &password,
                &source,
                browser.as_deref(),
                now,
                state.lockout,
            )?
            .user
            .is_some();
            let code_ok = !needs_code
                || (password_ok
                    && second_factor::check(
                        &state.app.audit,
                        &state.totp_key()?,
                        user.user.id,
                        &code,
                        &source,
                        now,
                        state.lockout.minutes,
                    )? == second_factor::CodeCheck::Accepted);
            if password_ok && code_ok {
                sessions::confirm_authentication(&state.app.audit, &user.session, now)?;
            }
            Ok((password_ok && code_ok, needs_code))
        })
        .await??
    };
    if confirmed {
        return Ok(see_other(confirm_target(&form.next)));
    }
    let page = ConfirmPage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        next: form.next,
        needs_code,
        problem: Some("That did not match; try again."),
    };
    html_into(&mut HttpResponse::Unauthorized(), &page)
}
