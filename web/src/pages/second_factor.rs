//! The second factor: the code asked for at sign-in (an authenticator app's, a recovery code,
//! or one sent by email), and enrolling in one, which completes a sign-in that must use it.

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::Actor;
use appliance::accounts;
use appliance::second_factor;
use appliance::sessions::{self, SecondFactor};
use askama::Template;
use serde::Deserialize;

use super::cookies::{browser_cookie, ended_session_cookie, presented_browser, session_cookie};
use super::login::{CODES_LOCKED, LoginPage};
use super::throttle::{throttle, throttle_for};
use crate::client::source;
use crate::error::WebError;
use crate::forms::CsrfForm;
use crate::render::{Nav, Page, html, html_into, see_other};
use crate::session::{PartlySignedIn, SignedIn};
use crate::state::AppState;

/// A sign-in just completed: the new session's id and the known-browser cookie.
struct Completed {
    session: sessions::SessionToken,
    browser: String,
}

impl Completed {
    fn set_cookies(self, response: &mut actix_web::HttpResponseBuilder, state: &AppState) {
        response.cookie(session_cookie(&self.session, state.limits));
        response.cookie(browser_cookie(self.browser));
    }
}

/// Replaces a partly signed-in session with a complete one: a new id once every factor
/// passed; the browser (`presented`: its known-browser cookie) is remembered.
fn complete_session(
    state: &AppState,
    partial: &SignedIn,
    reason: &str,
    presented: Option<&str>,
    now: i64,
) -> appliance::error::Result<Completed> {
    let session = &partial.session;
    sessions::end(
        &state.app.audit,
        &Actor::User(partial.user.id),
        session.id,
        reason,
        now,
    )?;
    let (token, _) = sessions::start(
        &mut *state.app.store.conn()?,
        partial.user.id,
        &session.source,
        &session.user_agent,
        now,
        SecondFactor::Done,
    )?;
    let browser = accounts::remember_browser(
        &state.app.audit,
        partial.user.id,
        presented,
        &session.source,
        &session.user_agent,
        now,
    )?;
    Ok(Completed {
        session: token,
        browser,
    })
}

#[derive(Template)]
#[template(path = "second_factor.html")]
struct SecondFactorPage {
    signed_in: Option<Nav>,
    csrf: String,
    problem: Option<&'static str>,
    /// The user's factor is the emailed code: offer to send one.
    email: bool,
    sent: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct SentQuery {
    #[serde(default)]
    sent: Option<String>,
}

async fn uses_email(
    state: &web::Data<AppState>,
    user: appliance::models::UserId,
) -> Result<bool, WebError> {
    let state = state.clone();
    Ok(
        web::block(move || second_factor::uses_email(&mut *state.app.store.conn()?, user))
            .await??,
    )
}

/// Emails a one-time code: at login for users whose factor it is (`/login/second-factor/email`),
/// or while setting up the factor (`/account/second-factor/email-code`). Throttled like logins.
pub async fn send_email_code(
    state: web::Data<AppState>,
    req: HttpRequest,
    partial: PartlySignedIn,
    form: web::Form<CsrfForm>,
) -> Page {
    let partial = partial.0;
    partial.check_csrf(&form.csrf)?;
    let at_login = req.path().starts_with("/login/");
    let allowed = match partial.session.second_factor.as_str() {
        "pending" => at_login && uses_email(&state, partial.user.id).await?,
        "enrol" => !at_login,
        _ => !at_login && !uses_email(&state, partial.user.id).await?,
    };
    if !allowed {
        return Err(WebError::Forbidden(
            "Codes by email are not this account's second factor.".into(),
        ));
    }
    throttle(&state, &req).await?;
    let (audit, user, source, now) = (
        state.app.audit.clone(),
        partial.user.clone(),
        source(&req),
        state.now(),
    );
    web::block(move || second_factor::send_email_code(&audit, &user, &source, now)).await??;
    state.worker.poke();
    Ok(see_other(if at_login {
        "/login/second-factor?sent=1"
    } else {
        "/account/second-factor?sent=1"
    }))
}

/// Sets up the emailed code as the second factor, with the code just sent.
pub async fn enrol_email_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    partial: PartlySignedIn,
    form: web::Form<CodeForm>,
) -> Page {
    let partial = partial.0;
    partial.check_csrf(&form.csrf)?;
    if partial.session.second_factor == "pending" {
        return Ok(see_other("/login/second-factor"));
    }
    throttle(&state, &req).await?;
    let required = partial.session.second_factor == "enrol";
    let (now, source, code) = (state.now(), source(&req), form.code.clone());
    let browser = presented_browser(&req);
    let outcome = {
        let state = state.clone();
        let partial = partial.clone();
        web::block(move || -> appliance::error::Result<Option<Completed>> {
            second_factor::enable_email(&state.app.audit, &partial.user, &code, &source, now)?;
            if required {
                complete_session(
                    &state,
                    &partial,
                    "second factor enrolled",
                    browser.as_deref(),
                    now,
                )
                .map(Some)
            } else {
                Ok(None)
            }
        })
        .await?
    };
    match outcome {
        Ok(completed) => {
            state.worker.poke();
            let mut response = HttpResponse::SeeOther();
            if let Some(completed) = completed {
                completed.set_cookies(&mut response, &state);
            }
            Ok(response.insert_header(("Location", "/")).finish())
        }
        Err(appliance::Error::Invalid { problem, .. }) => {
            let mut page = enrol_page(&partial, required, second_factor::new_secret()?, None)?;
            page.email_problem = Some(problem);
            page.email_sent = true;
            html_into(&mut HttpResponse::UnprocessableEntity(), &page)
        }
        Err(other) => Err(other.into()),
    }
}

pub async fn second_factor_form(
    state: web::Data<AppState>,
    partial: PartlySignedIn,
    query: web::Query<SentQuery>,
) -> Page {
    let partial = partial.0;
    if partial.session.second_factor != "pending" {
        return Ok(see_other("/"));
    }
    html(&SecondFactorPage {
        signed_in: None,
        email: uses_email(&state, partial.user.id).await?,
        csrf: partial.csrf,
        problem: None,
        sent: query.sent.is_some(),
    })
}

#[derive(Debug, Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    secret: String,
}

pub async fn second_factor_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    partial: PartlySignedIn,
    form: web::Form<CodeForm>,
) -> Page {
    let partial = partial.0;
    partial.check_csrf(&form.csrf)?;
    if partial.session.second_factor != "pending" {
        return Ok(see_other("/"));
    }
    throttle_for(&state, &req, Some(&partial.user.email)).await?;
    let (now, source, code) = (state.now(), source(&req), form.code.clone());
    let browser = presented_browser(&req);
    let outcome = {
        let state = state.clone();
        let partial = partial.clone();
        web::block(
            move || -> appliance::error::Result<Result<Completed, second_factor::CodeCheck>> {
                let checked = second_factor::check(
                    &state.app.audit,
                    &state.totp_key()?,
                    partial.user.id,
                    &code,
                    &source,
                    now,
                    state.lockout.minutes,
                )?;
                if checked != second_factor::CodeCheck::Accepted {
                    return Ok(Err(checked));
                }
                complete_session(
                    &state,
                    &partial,
                    "second factor passed",
                    browser.as_deref(),
                    now,
                )
                .map(Ok)
            },
        )
        .await??
    };
    match outcome {
        Ok(completed) => {
            let mut response = HttpResponse::SeeOther();
            completed.set_cookies(&mut response, &state);
            Ok(response.insert_header(("Location", "/")).finish())
        }
        Err(second_factor::CodeCheck::LockedOut) => {
            // This sign-in has ended. A new one starts at the password again, and its codes
            // meet the same refusal until the lock ends or an administrator unlocks.
            state.worker.poke();
            let page = LoginPage {
                signed_in: None,
                email: partial.user.email.clone(),
                problem: Some(CODES_LOCKED),
                note: None,
            };
            html_into(
                HttpResponse::TooManyRequests().cookie(ended_session_cookie()),
                &page,
            )
        }
        Err(_) => {
            // The wrong code that reaches the limit queued the owner's email: send it now.
            state.worker.poke();
            let page = SecondFactorPage {
                signed_in: None,
                email: uses_email(&state, partial.user.id).await?,
                csrf: partial.csrf,
                problem: Some("That code is wrong or was already used."),
                sent: false,
            };
            html_into(&mut HttpResponse::Unauthorized(), &page)
        }
    }
}

#[derive(Template)]
#[template(path = "enrol.html")]
struct EnrolPage {
    signed_in: Option<Nav>,
    csrf: String,
    secret: String,
    qr_svg: String,
    enrolled: bool,
    required: bool,
    problem: Option<String>,
    recovery_codes: Vec<String>,
    email: String,
    /// A code was just emailed: show where to type it.
    email_sent: bool,
    email_problem: Option<String>,
}

fn qr_svg(uri: &str) -> String {
    qrcode::QrCode::new(uri.as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default()
}

fn enrol_page(
    partial: &SignedIn,
    required: bool,
    secret: String,
    problem: Option<String>,
) -> Result<EnrolPage, WebError> {
    let uri = second_factor::provisioning_uri(&secret, &partial.user.email)?;
    let nav = (partial.session.second_factor == "done").then(|| partial.nav());
    Ok(EnrolPage {
        signed_in: nav,
        csrf: partial.csrf.clone(),
        qr_svg: qr_svg(&uri),
        secret,
        enrolled: false,
        required,
        problem,
        recovery_codes: Vec::new(),
        email: partial.user.email.clone(),
        email_sent: false,
        email_problem: None,
    })
}

pub async fn enrol_form(
    state: web::Data<AppState>,
    partial: PartlySignedIn,
    query: web::Query<SentQuery>,
) -> Page {
    let partial = partial.0;
    if partial.session.second_factor == "pending" {
        return Ok(see_other("/login/second-factor"));
    }
    let enrolled = {
        let (state, id) = (state.clone(), partial.user.id);
        web::block(move || second_factor::is_enrolled(&mut *state.app.store.conn()?, id)).await??
    };
    let required = partial.session.second_factor == "enrol";
    let mut page = enrol_page(&partial, required, second_factor::new_secret()?, None)?;
    page.enrolled = enrolled;
    page.email_sent = query.sent.is_some();
    html(&page)
}

pub async fn enrol_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    partial: PartlySignedIn,
    form: web::Form<CodeForm>,
) -> Page {
    let partial = partial.0;
    partial.check_csrf(&form.csrf)?;
    if partial.session.second_factor == "pending" {
        return Ok(see_other("/login/second-factor"));
    }
    let now = state.now();
    let required = partial.session.second_factor == "enrol";
    let (secret, code) = (form.secret.trim().to_owned(), form.code.clone());
    let browser = presented_browser(&req);
    let outcome = {
        let state = state.clone();
        let partial = partial.clone();
        let secret = secret.clone();
        web::block(
            move || -> appliance::error::Result<(Vec<String>, Option<Completed>)> {
                let codes = second_factor::enable(
                    &state.app.audit,
                    &state.totp_key()?,
                    &partial.user,
                    &secret,
                    &code,
                    now,
                )?;
                let token = if required {
                    Some(complete_session(
                        &state,
                        &partial,
                        "second factor enrolled",
                        browser.as_deref(),
                        now,
                    )?)
                } else {
                    None
                };
                Ok((codes, token))
            },
        )
        .await?
    };
    match outcome {
        Ok((codes, token)) => {
            let mut page = enrol_page(&partial, false, secret, None)?;
            page.enrolled = true;
            page.recovery_codes = codes;
            let mut response = HttpResponse::Ok();
            if let Some(completed) = token {
                completed.set_cookies(&mut response, &state);
            }
            html_into(&mut response, &page)
        }
        Err(appliance::Error::Invalid { problem, .. }) => {
            let page = enrol_page(&partial, required, secret, Some(problem))?;
            html_into(&mut HttpResponse::UnprocessableEntity(), &page)
        }
        Err(other) => Err(other.into()),
    }
}
