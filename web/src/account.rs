//! One's own account: what it is, and changing its email address (the password and second
//! factor have pages of their own). Changing the address is a sensitive action: it asks for
//! the password again once the last check is stale, and both addresses are told.

use actix_web::web;
use appliance::accounts::{self, AccountChange};
use appliance::models::Organisation;
use askama::Template;
use serde::Deserialize;

use crate::forms::Problems;
use crate::render::{Nav, Page, html_with_status};
use crate::session::SignedIn;
use crate::state::AppState;

const CONFIRM_FOR_EMAIL: &str = "/account/confirm?next=email";

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    signed_in: Option<Nav>,
    csrf: String,
    name: String,
    email: String,
    role: String,
    organisation: String,
    expires: Option<String>,
    problems: Problems,
    new_email: String,
    done: bool,
}

async fn account_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    problems: Problems,
    new_email: String,
    done: bool,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let (organisation, expires) = web::block(move || -> appliance::error::Result<_> {
        let mut conn = app.store.conn()?;
        let organisation = Organisation::find(&mut conn, account.organisation_id)?.name;
        let expires = accounts::accounts_of(&mut conn, account.organisation_id)?
            .into_iter()
            .find(|a| a.id == account.id)
            .and_then(|a| a.expires_at_us)
            .map(appliance::time::format_us);
        Ok((organisation, expires))
    })
    .await??;
    let status = problems.status();
    html_with_status(
        &AccountPage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            name: user.user.name.clone(),
            email: user.user.email.clone(),
            role: user.role.to_string(),
            organisation,
            expires,
            problems,
            new_email,
            done,
        },
        status,
    )
}

pub async fn account_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    account_with(&state, &user, Problems::default(), String::new(), false).await
}

#[derive(Debug, Default, Deserialize)]
pub struct EmailForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
}

pub async fn change_email(
    state: web::Data<AppState>,
    user: SignedIn,
    form: web::Form<EmailForm>,
) -> Page {
    user.check_csrf(&form.csrf)?;
    user.require_recent_authentication(&state, CONFIRM_FOR_EMAIL)?;
    let email = form.into_inner().email;
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    let change = AccountChange {
        email: Some(email.clone()),
        ..AccountChange::default()
    };
    let changed = web::block(move || {
        accounts::update_account(
            &app.audit,
            &appliance::Actor::User(account.id),
            account.organisation_id,
            account.id,
            &change,
            now,
        )
    })
    .await?;
    match changed {
        Ok(updated) => {
            state.worker.poke();
            let mut user = user;
            user.user = updated;
            account_with(&state, &user, Problems::default(), String::new(), true).await
        }
        Err(err) => account_with(&state, &user, Problems::of(err)?, email, false).await,
    }
}
