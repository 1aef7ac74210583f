//! Contractors: outside technicians whose accounts are limited to one site and end after
//! a set number of days, invited by the site's approvers or an administrator. The link that
//! sets their first password is an account invitation (`crate::accounts`).

use diesel::prelude::*;

use super::sites::is_approver;
use super::state::MICROS;
use crate::audit::{Actor, Audit, AuditEvent};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::models::{Role, Site, User, clean_name};
use crate::schema::users;
use crate::store::on_backend;
use crate::time::format_us;

/// Invites an outside technician: an account limited to `site`, ending at `expires_at_us`,
/// that sets its password through the emailed link and enrols a second factor at first
/// login. Only the site's approvers and administrators invite.
#[allow(clippy::too_many_arguments)]
pub fn invite_contractor(
    audit: &Audit,
    config: &Config,
    inviter: &User,
    site: &Site,
    name: &str,
    email: &str,
    days: &str,
    source: &str,
    now: i64,
) -> Result<User> {
    let mut conn = audit.store().conn()?;
    if !(inviter.role()? == Role::Admin || is_approver(&mut conn, inviter, site.id)?) {
        return Err(Error::Forbidden(
            "only the site's approvers and administrators invite contractors".into(),
        ));
    }
    drop(conn);
    let days: i64 = days
        .trim()
        .parse()
        .ok()
        .filter(|d| (1..=90).contains(d))
        .ok_or_else(|| Error::invalid("days", "the account lasts 1 to 90 days"))?;
    let name = clean_name("name", name)?;
    let email = crate::models::clean_email(email)?;
    let expires = now + days * 24 * 3600 * MICROS;
    let actor = Actor::User(inviter.id);
    audit.record_with(|conn| {
        let user = on_backend!(conn, c => diesel::insert_into(users::table)
            .values((
                users::organisation_id.eq(site.organisation_id),
                users::name.eq(&name),
                users::email.eq(&email),
                users::role.eq(Role::Technician.as_str()),
                users::created_at_us.eq(now),
                users::expires_at_us.eq(expires),
                users::site_id.eq(site.id),
            ))
            .returning(User::as_returning())
            .get_result(c))
        .map_err(|err| match err {
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ) => Error::Conflict(format!("a user with email {email:?} already exists")),
            other => other.into(),
        })?;
        let invited = crate::emails::Invitation::Contractor {
            inviter: &inviter.name,
            site: &site.name,
            account_ends_us: expires,
        };
        let token_event = crate::accounts::invite_in(
            conn,
            &actor,
            config,
            &user,
            invited,
            (7 * 24 * 3600 * MICROS).min(expires - now),
            now,
        )?;
        let event = AuditEvent::new(actor.clone(), "user.invited")
            .source(source)
            .target(user.id)
            .details(serde_json::json!({
                "email": email, "site": site.id, "expires": format_us(expires),
            }));
        Ok((user, vec![event, token_event]))
    })
}
