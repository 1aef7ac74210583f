//! An organisation's accounts as administrators manage them: listing, disabling,
//! changing name, email or role, and deleting an account without history.

use diesel::prelude::*;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::emails;
use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::models::{Role, User, clean_email, email_taken_or};
use crate::schema::users;
use crate::store::DbConnection;

/// A user as an administrator's list shows them.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct Account {
    pub id: UserId,
    pub organisation_id: crate::ids::OrganisationId,
    pub name: String,
    pub email: String,
    pub role: String,
    pub disabled_at_us: Option<i64>,
    /// Sign-ins from browsers the account has not used before are locked until then.
    pub locked_until_us: Option<i64>,
    pub expires_at_us: Option<i64>,
    /// Second-factor codes are refused until then (too many wrong ones).
    pub code_locked_until_us: Option<i64>,
}

/// The accounts of one organisation, by email.
pub fn accounts_of(
    conn: &mut DbConnection,
    organisation: crate::ids::OrganisationId,
) -> Result<Vec<Account>> {
    Ok(users::table
        .filter(users::organisation_id.eq(organisation))
        .order(users::email)
        .select(Account::as_select())
        .load(conn)?)
}

/// Disables or re-enables `user`, which must belong to `organisation` (anything else is "not
/// found", so ids of other organisations reveal nothing). Disabling ends every session.
pub fn set_disabled(
    audit: &Audit,
    actor: &Actor,
    organisation: crate::ids::OrganisationId,
    user: UserId,
    disabled: bool,
    now: i64,
) -> Result<()> {
    audit.record_with(|conn| {
        let target = users::table
            .find(user)
            .filter(users::organisation_id.eq(organisation));
        let updated = diesel::update(target)
            .set(users::disabled_at_us.eq(if disabled { Some(now) } else { None }))
            .execute(conn)?;
        if updated == 0 {
            return Err(Error::NotFound("user"));
        }
        let ended = if disabled {
            crate::sessions::end_all(conn, user, None, "user disabled", now)?
        } else {
            0
        };
        let action = if disabled {
            "user.disabled"
        } else {
            "user.enabled"
        };
        let event = AuditEvent::new(actor.clone(), action)
            .target(user)
            .details(serde_json::json!({ "sessions_ended": ended }));
        Ok(((), vec![event]))
    })
}

/// What an administrator (or the user, for their own name and email) may change of an
/// account. `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountChange {
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Option<Role>,
}

/// Changes the name, email or role of `user`, which must belong to `organisation`. Nobody
/// changes their own role, so an organisation never loses its last administrator by
/// accident. A new email address is told to both addresses, so a hijacked account cannot
/// move its mail away unnoticed. Audited `user.updated` (and `auth.email.changed`).
pub fn update_account(
    audit: &Audit,
    actor: &Actor,
    organisation: crate::ids::OrganisationId,
    user: UserId,
    change: &AccountChange,
    now: i64,
) -> Result<User> {
    let name = change
        .name
        .as_deref()
        .map(|n| crate::models::clean_name("name", n))
        .transpose()?;
    let email = change.email.as_deref().map(clean_email).transpose()?;
    audit.record_with(|conn| {
        let before: User = users::table
            .find(user)
            .filter(users::organisation_id.eq(organisation))
            .select(User::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("user"))?;
        let role = change.role.unwrap_or(before.role()?);
        if role != before.role()? && *actor == Actor::User(user) {
            return Err(Error::invalid("role", "you cannot change your own role"));
        }
        let after = User {
            name: name.clone().unwrap_or_else(|| before.name.clone()),
            email: email.clone().unwrap_or_else(|| before.email.clone()),
            role: role.as_str().to_owned(),
            ..before.clone()
        };
        diesel::update(users::table.find(user))
            .set((
                users::name.eq(&after.name),
                users::email.eq(&after.email),
                users::role.eq(&after.role),
            ))
            .execute(conn)
            .map_err(|err| email_taken_or(err, "email"))?;
        let mut events = vec![
            AuditEvent::new(actor.clone(), "user.updated")
                .target(user)
                .details(serde_json::json!({
                    "from": { "name": before.name, "email": before.email, "role": before.role },
                    "to": { "name": after.name, "email": after.email, "role": after.role },
                })),
        ];
        if after.email != before.email {
            crate::mail::enqueue(
                conn,
                &before.email,
                &emails::email_address_changed(&after.email, now),
                &user.to_string(),
                now,
            )?;
            crate::mail::enqueue(
                conn,
                &after.email,
                &emails::email_address_now_yours(&after.name, &before.email, now),
                &user.to_string(),
                now,
            )?;
            events.push(
                AuditEvent::new(actor.clone(), "auth.email.changed")
                    .target(user)
                    .details(serde_json::json!({ "from": before.email, "to": after.email })),
            );
        }
        if after.role != before.role {
            // Pages read the role afresh on every request; the sessions may stay.
            events.push(
                AuditEvent::new(actor.clone(), "user.role.changed")
                    .target(user)
                    .details(serde_json::json!({ "from": before.role, "to": after.role })),
            );
        }
        Ok((after, events))
    })
}

/// Deletes an account of `organisation` that has no history to keep (it never asked for or
/// decided remote access); its sessions, tokens, second factors and approver roles go with
/// it. Anything else is refused with the advice to disable it. Audited `user.deleted`.
pub fn delete_account(
    audit: &Audit,
    actor: &Actor,
    organisation: crate::ids::OrganisationId,
    user: UserId,
) -> Result<()> {
    if *actor == Actor::User(user) {
        return Err(Error::invalid("user", "you cannot delete your own account"));
    }
    audit.record_with(|conn| {
        let account: User = users::table
            .find(user)
            .filter(users::organisation_id.eq(organisation))
            .select(User::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("user"))?;
        // Being named a site's approver is configuration, not history: it goes too.
        let approves = diesel::delete(
            crate::schema::site_approvers::table
                .filter(crate::schema::site_approvers::user_id.eq(user)),
        )
        .execute(conn)?;
        diesel::delete(users::table.find(user))
            .execute(conn)
            .map_err(|err| match err {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                    _,
                ) => Error::Conflict(format!(
                    "{} has remote-access history, which must stay readable; disable the account instead",
                    account.email
                )),
                other => other.into(),
            })?;
        let event = AuditEvent::new(actor.clone(), "user.deleted")
            .target(user)
            .details(serde_json::json!({
                "email": account.email, "role": account.role, "sites_approved": approves,
            }));
        Ok(((), vec![event]))
    })
}
