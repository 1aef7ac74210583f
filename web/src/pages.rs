//! The portal's pages. Database work runs in `web::block`, off the async workers.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse, web};
use appliance::accounts::{self, FirstAdmin};
use appliance::audit::export::{self, ExportFilter, ExportFormat};
use appliance::audit::verify::verify;
use appliance::keys::VerifyingKey;
use appliance::models::Role;
use appliance::second_factor;
use appliance::sessions::{self, SecondFactor};
use appliance::time::{format_us, parse_instant};
use appliance::{Actor, AuditEvent};
use askama::Template;
use serde::Deserialize;

use crate::{
    AppState, BROWSER_COOKIE, CsrfForm, Nav, PartlySignedIn, SESSION_COOKIE, SignedIn, WebError,
    html, see_other, source,
};

type Page = Result<HttpResponse, WebError>;

pub async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(include_str!("../static/style.css"))
}

pub async fn not_found() -> Result<HttpResponse, WebError> {
    Err(WebError::NotFound)
}

async fn needs_setup(state: &web::Data<AppState>) -> Result<bool, WebError> {
    let state = state.clone();
    Ok(web::block(move || accounts::needs_setup(&mut *state.app.store.conn()?)).await??)
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    signed_in: Option<Nav>,
    name: String,
    organisation: String,
    role: String,
    session_ends: String,
    idle_minutes: i64,
    /// The firewall controller's state, and whether it is running.
    firewall: (String, bool),
}

pub async fn home(state: web::Data<AppState>, user: Result<SignedIn, actix_web::Error>) -> Page {
    let user = match user {
        Ok(user) => user,
        // Where a visitor without a session starts: setup on a new appliance, else login.
        Err(_) if needs_setup(&state).await? => return Ok(see_other("/setup")),
        Err(redirect) => return Ok(redirect.error_response()),
    };
    let organisation = {
        let state = state.clone();
        let org = user.user.organisation_id;
        web::block(move || -> appliance::error::Result<String> {
            Ok(
                appliance::models::Organisation::list(&mut *state.app.store.conn()?)?
                    .into_iter()
                    .find(|o| o.id == org)
                    .map(|o| o.name)
                    .unwrap_or_default(),
            )
        })
        .await??
    };
    html(&HomePage {
        signed_in: Some(user.nav()),
        name: user.user.name.clone(),
        organisation,
        role: user.role.to_string(),
        session_ends: format_us(user.session.created_at_us + state.limits.absolute_us),
        idle_minutes: state.limits.idle_us / 60_000_000,
        firewall: crate::remote::firewall_overview(&state).await?,
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct SetupForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    organisation: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// The setup form as shown again: what was typed (never the token or password) and the
/// problem beside the field it concerns.
#[derive(Debug, Default)]
struct SetupView {
    organisation: String,
    name: String,
    email: String,
    general: Option<String>,
    token_error: Option<String>,
    organisation_error: Option<String>,
    name_error: Option<String>,
    email_error: Option<String>,
    password_error: Option<String>,
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    signed_in: Option<Nav>,
    form: SetupView,
    min_chars: u32,
}

fn already_set_up() -> Page {
    html(&crate::MessagePage {
        signed_in: None,
        heading: "Already set up",
        text: "The first administrator exists. Log in, or ask an administrator for an account.",
        link: "/login",
        link_text: "Log in",
    })
}

pub async fn setup_form(state: web::Data<AppState>) -> Page {
    if !needs_setup(&state).await? {
        return already_set_up();
    }
    html(&SetupPage {
        signed_in: None,
        form: SetupView::default(),
        min_chars: state.policy.min_chars,
    })
}

pub async fn setup_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<SetupForm>,
) -> Page {
    if !needs_setup(&state).await? {
        return already_set_up();
    }
    let form = form.into_inner();
    let request = FirstAdmin {
        token: form.token,
        organisation: form.organisation.clone(),
        name: form.name.clone(),
        email: form.email.clone(),
        password: form.password,
    };
    let (now, source) = (state.now(), source(&req));
    let outcome = {
        let state = state.clone();
        web::block(move || {
            accounts::setup_first_admin(&state.app.audit, &request, state.policy, &source, now)
        })
        .await?
    };
    match outcome {
        Ok(_) => Ok(see_other("/login?created=1")),
        Err(appliance::Error::Invalid { field, problem }) => {
            let mut view = SetupView {
                organisation: form.organisation,
                name: form.name,
                email: form.email,
                ..SetupView::default()
            };
            match field {
                "token" => view.token_error = Some(problem),
                "organisation" => view.organisation_error = Some(problem),
                "name" => view.name_error = Some(problem),
                "email" => view.email_error = Some(problem),
                "password" => view.password_error = Some(problem),
                _ => view.general = Some(problem),
            }
            let page = SetupPage {
                signed_in: None,
                form: view,
                min_chars: state.policy.min_chars,
            };
            Ok(HttpResponse::UnprocessableEntity()
                .content_type("text/html; charset=utf-8")
                .body(page.render().unwrap_or_default()))
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    signed_in: Option<Nav>,
    email: String,
    problem: Option<&'static str>,
    note: Option<&'static str>,
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

/// The session cookie: host-only, HTTPS-only, invisible to scripts, never sent cross-site.
fn session_cookie(
    token: &sessions::SessionToken,
    limits: sessions::SessionLimits,
) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token.reveal().to_owned())
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            limits.absolute_us / 1_000_000,
        ))
        .finish()
}

/// The known-browser cookie: set at every complete sign-in, it lets this browser's
/// password attempts count apart from strangers' (`appliance::lockout`). Host-only,
/// HTTPS-only, invisible to scripts, never sent cross-site; it outlives sessions and logout.
fn browser_cookie(token: String) -> Cookie<'static> {
    Cookie::build(BROWSER_COOKIE, token)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::days(
            appliance::lockout::KNOWN_BROWSER_DAYS,
        ))
        .finish()
}

/// The known-browser cookie the request carries, if any.
fn presented_browser(req: &HttpRequest) -> Option<String> {
    req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned())
}

/// Counts an attempt at a password or a code from this source, refusing it past the limit.
async fn throttle(state: &web::Data<AppState>, req: &HttpRequest) -> Result<(), WebError> {
    throttle_for(state, req, None).await
}

/// [`throttle`] for an attempt at `account` (the email it names). A refusal computes no
/// hash, and only the first in a window from the source is written at once; the rest are
/// counted for its summary (`appliance::refusals`), so a flood costs no disk per request.
async fn throttle_for(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    account: Option<&str>,
) -> Result<(), WebError> {
    let Some(ip) = crate::client_ip(req) else {
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

/// `Retry-After` when too many password checks wait (`appliance::refusals::CheckGate`).
const BUSY_RETRY_SECONDS: u64 = 2;

/// Removes the session cookie from the browser.
fn ended_session_cookie() -> Cookie<'static> {
    let mut gone = Cookie::build(SESSION_COOKIE, "")
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    gone.make_removal();
    gone
}

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
            let factor = if second_factor::is_enrolled(&mut conn, user.id)? {
                SecondFactor::Pending
            } else if state.second_factor_roles.contains(&user.role()?)
                    // Contractors (accounts limited to one site) always use a second factor.
                    || appliance::access::user_site(&mut conn, user.id)?.is_some()
            {
                SecondFactor::Enrol
            } else {
                SecondFactor::Done
            };
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
            Ok(HttpResponse::Unauthorized()
                .content_type("text/html; charset=utf-8")
                .body(page.render().unwrap_or_default()))
        }
    }
}

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
            Ok(HttpResponse::UnprocessableEntity()
                .content_type("text/html; charset=utf-8")
                .body(page.render().unwrap_or_default()))
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
            Ok(HttpResponse::TooManyRequests()
                .cookie(ended_session_cookie())
                .content_type("text/html; charset=utf-8")
                .body(page.render().unwrap_or_default()))
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
            Ok(HttpResponse::Unauthorized()
                .content_type("text/html; charset=utf-8")
                .body(page.render().unwrap_or_default()))
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
            let body = page
                .render()
                .map_err(|err| WebError::Internal(err.to_string()))?;
            let mut response = HttpResponse::Ok();
            if let Some(completed) = token {
                completed.set_cookies(&mut response, &state);
            }
            Ok(response.content_type("text/html; charset=utf-8").body(body))
        }
        Err(appliance::Error::Invalid { problem, .. }) => {
            let page = enrol_page(&partial, required, secret, Some(problem))?;
            Ok(HttpResponse::UnprocessableEntity()
                .content_type("text/html; charset=utf-8")
                .body(page.render().unwrap_or_default()))
        }
        Err(other) => Err(other.into()),
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

struct SessionRow {
    id: i64,
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
    let target = path.into_inner();
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

/// The audit viewer's filter, as typed in its form.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    outcome: String,
    before: Option<i64>,
    verify: Option<String>,
    format: Option<String>,
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

impl AuditQuery {
    fn filter(&self) -> Result<ExportFilter, String> {
        let instant = |raw: &str| some(raw).map(|t| parse_instant(&t)).transpose();
        if !matches!(self.outcome.as_str(), "" | "success" | "failure" | "denied") {
            return Err(format!(
                "outcome {:?} is not one of success, failure, denied",
                self.outcome
            ));
        }
        Ok(ExportFilter {
            since_us: instant(&self.since)?,
            until_us: instant(&self.until)?,
            actor: some(&self.actor),
            action: some(&self.action),
            target: some(&self.target),
            outcome: some(&self.outcome),
        })
    }

    /// The filter as a query string, for paging and export links.
    fn query_string(&self) -> String {
        let pairs = [
            ("since", &self.since),
            ("until", &self.until),
            ("actor", &self.actor),
            ("action", &self.action),
            ("target", &self.target),
            ("outcome", &self.outcome),
        ];
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                pairs
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (*k, v.as_str())),
            )
            .finish()
    }
}

struct AuditRow {
    seq: i64,
    time: String,
    actor: String,
    source: String,
    action: String,
    target: String,
    outcome: String,
    details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    signed_in: Option<Nav>,
    filter: AuditQuery,
    query: String,
    rows: Vec<AuditRow>,
    next_before: Option<i64>,
    problem: Option<String>,
    verification: Option<(bool, String)>,
}

const AUDIT_PAGE_SIZE: i64 = 50;

/// The audit log covers the whole appliance, every organisation's actions in it: it is for
/// the administrators and auditors of the organisation that runs the appliance.
fn may_read_audit(user: &SignedIn) -> Result<(), WebError> {
    if user.can_read_audit() {
        Ok(())
    } else {
        Err(WebError::Forbidden(
            "The audit log is for the administrators and auditors of the organisation that runs this appliance.".into(),
        ))
    }
}

pub async fn audit_page(
    state: web::Data<AppState>,
    user: SignedIn,
    query: web::Query<AuditQuery>,
) -> Page {
    may_read_audit(&user)?;
    let query = query.into_inner();
    let (filter, problem) = match query.filter() {
        Ok(filter) => (filter, None),
        Err(problem) => (ExportFilter::default(), Some(problem)),
    };
    let (before, run_verify) = (query.before, query.verify.is_some());
    let (records, verification) = {
        let state = state.clone();
        web::block(move || -> appliance::error::Result<_> {
            let mut conn = state.app.store.conn()?;
            let records = export::page(&mut conn, &filter, before, AUDIT_PAGE_SIZE + 1)?;
            let verification = if run_verify {
                let key = VerifyingKey::load(&state.app.config.keys_dir())?;
                let head = state.app.audit.head_file().read()?;
                let report = verify(&mut conn, &key, head.as_ref())?;
                Some(match report.problem {
                    None => (
                        true,
                        format!(
                            "The chain is intact: {} records, {} signed checkpoints.",
                            report.records, report.checkpoints
                        ),
                    ),
                    Some(problem) => (false, format!("The chain is broken. {problem}")),
                })
            } else {
                None
            };
            Ok((records, verification))
        })
        .await??
    };
    let next_before =
        (records.len() as i64 > AUDIT_PAGE_SIZE).then(|| records[AUDIT_PAGE_SIZE as usize - 1].seq);
    let rows = records
        .into_iter()
        .take(AUDIT_PAGE_SIZE as usize)
        .map(|r| AuditRow {
            seq: r.seq,
            time: format_us(r.occurred_at_us),
            actor: format!("{}:{}", r.actor_kind, r.actor_id),
            source: r.source,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            details: r.details,
        })
        .collect();
    let page_query = query.query_string();
    html(&AuditPage {
        signed_in: Some(user.nav()),
        query: page_query,
        filter: query,
        rows,
        next_before,
        problem,
        verification,
    })
}

/// Streams the filtered log as CSV or JSONL: no cap on its size, and flat memory.
/// `?format=csv|jsonl` (JSONL when absent): the format, its content type and extension.
pub(crate) fn export_format(
    raw: Option<&str>,
) -> Result<(ExportFormat, &'static str, &'static str), WebError> {
    match raw {
        Some("csv") => Ok((ExportFormat::Csv, "text/csv; charset=utf-8", "csv")),
        Some("jsonl") | None => Ok((ExportFormat::Jsonl, "application/x-ndjson", "jsonl")),
        Some(other) => Err(WebError::BadRequest(format!(
            "format {other:?} is not csv or jsonl"
        ))),
    }
}

pub async fn audit_export(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    query: web::Query<AuditQuery>,
) -> Page {
    may_read_audit(&user)?;
    let filter = query.filter().map_err(WebError::BadRequest)?;
    let (format, content_type, extension) = export_format(query.format.as_deref())?;
    let (state, actor, source) = (state.clone(), Actor::User(user.user.id), source(&req));
    let file_name = format!("plantgate-audit.{extension}");
    Ok(crate::download::attachment(
        content_type,
        &file_name,
        move |writer| {
            let result = state
                .app
                .store
                .conn()
                .map_err(|e| e.to_string())
                .and_then(|mut conn| {
                    export::export(&mut conn, &filter, format, writer).map_err(|e| e.to_string())
                });
            let event = match &result {
            Ok(count) => AuditEvent::new(actor, "audit.exported").source(source).details(serde_json::json!({
                "format": extension, "records": count, "via": "portal",
                "since": filter.since_us.map(format_us), "until": filter.until_us.map(format_us),
                "actor": filter.actor, "action": filter.action, "target": filter.target, "outcome": filter.outcome,
            })),
            Err(problem) => AuditEvent::new(actor, "audit.exported").source(source).outcome(appliance::Outcome::Failure)
                .details(serde_json::json!({ "format": extension, "error": problem })),
        };
            if let Err(err) = state.app.audit.record(event) {
                tracing::error!(error = %err, "could not audit an export");
            }
            result.map(|_| ())
        },
    ))
}

struct AccountRow {
    id: i64,
    name: String,
    email: String,
    role: String,
    status: &'static str,
    disabled: bool,
    locked: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    signed_in: Option<Nav>,
    csrf: String,
    rows: Vec<AccountRow>,
    problem: Option<String>,
    name: String,
    email: String,
}

async fn users_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    problem: Option<String>,
    name: String,
    email: String,
) -> Page {
    let (org, now) = (user.user.organisation_id, state.now());
    let accounts = {
        let state = state.clone();
        web::block(move || accounts::accounts_of(&mut *state.app.store.conn()?, org)).await??
    };
    let rows = accounts
        .into_iter()
        .map(|a| {
            // Locked for new browsers (wrong passwords) or for codes (wrong second factors).
            let locked = a.locked_until_us.is_some_and(|until| until > now)
                || a.code_locked_until_us.is_some_and(|until| until > now);
            let status = if a.disabled_at_us.is_some() {
                "disabled"
            } else if a.expires_at_us.is_some_and(|at| at <= now) {
                "expired"
            } else if locked {
                "locked"
            } else {
                "active"
            };
            AccountRow {
                id: a.id.0,
                name: a.name,
                email: a.email,
                role: a.role,
                status,
                disabled: a.disabled_at_us.is_some(),
                locked,
            }
        })
        .collect();
    let page = UsersPage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        rows,
        problem: problem.clone(),
        name,
        email,
    };
    let body = page
        .render()
        .map_err(|err| WebError::Internal(err.to_string()))?;
    let status = if problem.is_some() {
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body))
}

/// Where a sensitive page sends a user whose password is not fresh.
const CONFIRM_FOR_USERS: &str = "/account/confirm?next=users";

pub async fn users_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    user.admin_only("Managing users")?;
    user.require_recent_authentication(&state, CONFIRM_FOR_USERS)?;
    users_page_with(&state, &user, None, String::new(), String::new()).await
}

#[derive(Debug, Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

/// Creates a user in the administrator's own organisation, with a first password.
pub async fn create_user(
    state: web::Data<AppState>,
    user: SignedIn,
    form: web::Form<NewUserForm>,
) -> Page {
    user.admin_only("Managing users")?;
    user.check_csrf(&form.csrf)?;
    user.require_recent_authentication(&state, CONFIRM_FOR_USERS)?;
    let form = form.into_inner();
    let (name, email) = (form.name.clone(), form.email.clone());
    let created = {
        let state = state.clone();
        let admin = user.clone();
        web::block(move || -> appliance::error::Result<()> {
            let role: Role = form.role.parse()?;
            // Check the password first, so a refused one leaves no half-made account.
            state.policy.check(&form.password, &form.email)?;
            let actor = Actor::User(admin.user.id);
            let created = appliance::models::User::create(
                &state.app.audit,
                &actor,
                admin.user.organisation_id,
                &form.name,
                &form.email,
                role,
            )?;
            accounts::set_password(
                &state.app.audit,
                &actor,
                &created,
                &form.password,
                state.policy,
                state.now(),
            )
        })
        .await?
    };
    match created {
        Ok(()) => Ok(see_other("/users")),
        Err(appliance::Error::Invalid { field, problem }) => {
            users_page_with(
                &state,
                &user,
                Some(format!("{field}: {problem}")),
                name,
                email,
            )
            .await
        }
        Err(appliance::Error::Conflict(problem)) => {
            users_page_with(&state, &user, Some(problem), name, email).await
        }
        Err(other) => Err(other.into()),
    }
}

/// Disables, enables or unlocks a user of the administrator's own organisation; any other
/// id is "not found".
pub async fn change_user(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<(i64, String)>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Managing users")?;
    user.check_csrf(&form.csrf)?;
    user.require_recent_authentication(&state, CONFIRM_FOR_USERS)?;
    let (target, change) = path.into_inner();
    let target = appliance::models::UserId(target);
    if target == user.user.id && change == "disable" {
        return Err(WebError::BadRequest(
            "You cannot disable your own account.".into(),
        ));
    }
    let (org, now, actor) = (
        user.user.organisation_id,
        state.now(),
        Actor::User(user.user.id),
    );
    let audit = state.app.audit.clone();
    let done = web::block(move || match change.as_str() {
        "disable" => accounts::set_disabled(&audit, &actor, org, target, true, now),
        "enable" => accounts::set_disabled(&audit, &actor, org, target, false, now),
        "unlock" => accounts::unlock(&audit, &actor, org, target),
        "delete" => accounts::delete_account(&audit, &actor, org, target),
        _ => Err(appliance::Error::NotFound("action")),
    })
    .await?;
    match done {
        Ok(()) => Ok(see_other("/users")),
        Err(err @ (appliance::Error::Conflict(_) | appliance::Error::Invalid { .. })) => {
            let problem = crate::Problems::of(err)?.other(&[]);
            users_page_with(&state, &user, problem, String::new(), String::new()).await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    signed_in: Option<Nav>,
    csrf: String,
    id: i64,
    name: String,
    email: String,
    role: String,
    is_self: bool,
    problems: crate::Problems,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EditUserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

/// An account of the administrator's own organisation, to edit; any other id is "not found".
pub async fn user_page(state: web::Data<AppState>, user: SignedIn, path: web::Path<i64>) -> Page {
    user.admin_only("Managing users")?;
    user.require_recent_authentication(&state, CONFIRM_FOR_USERS)?;
    let (app, org, id) = (
        state.app.clone(),
        user.user.organisation_id,
        path.into_inner(),
    );
    let account = web::block(move || {
        accounts::accounts_of(&mut *app.store.conn()?, org)?
            .into_iter()
            .find(|a| a.id.0 == id)
            .ok_or(appliance::Error::NotFound("user"))
    })
    .await??;
    html(&UserPage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        id: account.id.0,
        is_self: account.id == user.user.id,
        name: account.name,
        email: account.email,
        role: account.role,
        problems: crate::Problems::default(),
    })
}

/// Changes the name, email or role of an account of the administrator's own organisation.
pub async fn edit_user(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<EditUserForm>,
) -> Page {
    user.admin_only("Managing users")?;
    user.check_csrf(&form.csrf)?;
    user.require_recent_authentication(&state, CONFIRM_FOR_USERS)?;
    let form = form.into_inner();
    let target = appliance::models::UserId(path.into_inner());
    let (app, org, actor, now) = (
        state.app.clone(),
        user.user.organisation_id,
        Actor::User(user.user.id),
        state.now(),
    );
    let shown = form.clone();
    let updated = web::block(move || {
        let change = appliance::accounts::AccountChange {
            name: Some(form.name),
            email: Some(form.email),
            role: Some(form.role.parse()?),
        };
        accounts::update_account(&app.audit, &actor, org, target, &change, now)
    })
    .await?;
    match updated {
        Ok(_) => {
            state.worker.poke();
            Ok(see_other("/users"))
        }
        Err(err @ appliance::Error::NotFound(_)) => Err(err.into()),
        Err(err) => {
            let problems = crate::Problems::of(err)?;
            let status = problems.status();
            crate::html_with_status(
                &UserPage {
                    signed_in: Some(user.nav()),
                    csrf: user.csrf.clone(),
                    id: target.0,
                    is_self: target == user.user.id,
                    name: shown.name,
                    email: shown.email,
                    role: shown.role,
                    problems,
                },
                status,
            )
        }
    }
}

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
                csrf: crate::csrf_token(token.reveal()),
                problem: None,
                done: true,
                min_chars: state.policy.min_chars,
            };
            let body = page
                .render()
                .map_err(|err| WebError::Internal(err.to_string()))?;
            Ok(HttpResponse::Ok()
                .cookie(session_cookie(&token, state.limits))
                .content_type("text/html; charset=utf-8")
                .body(body))
        }
        Err(problem) => {
            let page = PasswordPage {
                signed_in: Some(user.nav()),
                csrf: user.csrf.clone(),
                problem: Some(problem),
                done: false,
                min_chars: state.policy.min_chars,
            };
            Ok(HttpResponse::UnprocessableEntity()
                .content_type("text/html; charset=utf-8")
                .body(page.render().unwrap_or_default()))
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
    Ok(HttpResponse::Unauthorized()
        .content_type("text/html; charset=utf-8")
        .body(page.render().unwrap_or_default()))
}

#[derive(Template)]
#[template(path = "invitation.html")]
struct InvitationPage {
    signed_in: Option<Nav>,
    problem: Option<String>,
    min_chars: u32,
}

pub async fn invitation_form(state: web::Data<AppState>) -> Page {
    html(&InvitationPage {
        signed_in: None,
        problem: None,
        min_chars: state.policy.min_chars,
    })
}

#[derive(Debug, Deserialize)]
pub struct InvitationForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    repeat: String,
}

/// A contractor sets the first password through the emailed link, then signs in (and
/// enrols a second factor).
pub async fn invitation_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(i64, String)>,
    form: web::Form<InvitationForm>,
) -> Page {
    let (user, token) = path.into_inner();
    let refuse = |problem: String| -> Page {
        let page = InvitationPage {
            signed_in: None,
            problem: Some(problem),
            min_chars: state.policy.min_chars,
        };
        let body = page
            .render()
            .map_err(|err| WebError::Internal(err.to_string()))?;
        Ok(HttpResponse::UnprocessableEntity()
            .content_type("text/html; charset=utf-8")
            .body(body))
    };
    if let Err(seconds) =
        state.throttle_login(crate::client_ip(&req).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])))
    {
        return Err(WebError::TooManyRequests(seconds));
    }
    if form.password != form.repeat {
        return refuse("the two passwords differ".into());
    }
    let (audit, policy, from, now) = (
        state.app.audit.clone(),
        state.policy,
        source(&req),
        state.now(),
    );
    let password = form.password.clone();
    let accepted = web::block(move || {
        appliance::access::accept_invitation(
            &audit,
            policy,
            appliance::models::UserId(user),
            &token,
            &password,
            &from,
            now,
        )
    })
    .await?;
    match accepted {
        Ok(_) => Ok(see_other("/login?invited=1")),
        Err(appliance::Error::Invalid { field, problem }) => refuse(format!("{field}: {problem}")),
        Err(other) => Err(other.into()),
    }
}
