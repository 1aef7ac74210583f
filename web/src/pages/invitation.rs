//! A contractor's invitation: the emailed link sets the account's first password.

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::client::{client_ip, source};
use crate::error::WebError;
use crate::render::{Nav, Page, html, html_into, see_other};
use crate::state::AppState;

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
        html_into(&mut HttpResponse::UnprocessableEntity(), &page)
    };
    if let Err(seconds) =
        state.throttle_login(client_ip(&req).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])))
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
