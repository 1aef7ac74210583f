//! First setup: on a new appliance, the enrolment token creates the operator organisation
//! and its first administrator.

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::accounts::{self, FirstAdmin};
use askama::Template;
use serde::Deserialize;

use crate::client::source;
use crate::error::WebError;
use crate::render::{MessagePage, Nav, Page, html, html_into, see_other};
use crate::state::AppState;

pub(super) async fn needs_setup(state: &web::Data<AppState>) -> Result<bool, WebError> {
    let state = state.clone();
    Ok(web::block(move || accounts::needs_setup(&mut *state.app.store.conn()?)).await??)
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
    html(&MessagePage {
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
            html_into(&mut HttpResponse::UnprocessableEntity(), &page)
        }
        Err(other) => Err(other.into()),
    }
}
