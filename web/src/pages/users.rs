//! The users of an administrator's own organisation: the list, creating one with a first
//! password, editing one, and disabling, enabling, unlocking or deleting one.

use actix_web::web;
use appliance::Actor;
use appliance::accounts;
use appliance::models::Role;
use askama::Template;
use serde::Deserialize;

use crate::error::WebError;
use crate::forms::{CsrfForm, Problems};
use crate::render::{Nav, Page, html, html_with_status, see_other, status_for};
use crate::session::SignedIn;
use crate::state::AppState;

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
    let status = status_for(&page.problem);
    html_with_status(&page, status)
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
            let now = state.now();
            let created = appliance::models::User::create(
                &state.app.audit,
                &actor,
                admin.user.organisation_id,
                &form.name,
                &form.email,
                role,
                now,
            )?;
            accounts::set_password(
                &state.app.audit,
                &actor,
                &created,
                &form.password,
                state.policy,
                now,
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
            let problem = Problems::of(err)?.other(&[]);
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
    problems: Problems,
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
        problems: Problems::default(),
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
            let problems = Problems::of(err)?;
            let status = problems.status();
            html_with_status(
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
