//! Organisations and their first administrators: an operator creates an organisation,
//! whose administrator is invited to set a password; first-run setup creates the
//! appliance's operating organisation and its administrator with the enrolment token.

use diesel::prelude::*;

use super::invitations::invite_in;
use super::passwords::{PasswordPolicy, hash_password};
use crate::audit::{Actor, Audit, AuditEvent};
use crate::enrolment::{self, FIRST_ADMIN};
use crate::error::{Error, Result};
use crate::ids::{OrganisationId, UserId};
use crate::models::{Organisation, Role, User, clean_email, clean_name, email_taken_or};
use crate::schema::{organisations, users};
use crate::store::DbConnection;
use crate::store::on_backend;

/// What creating an organisation asks for: its name and its first administrator.
#[derive(Debug, Clone, Default)]
pub struct NewOrganisation {
    pub name: String,
    pub admin_name: String,
    pub admin_email: String,
}

/// Creates an organisation with its first administrator, who is emailed a link to set
/// their password, in one transaction. Audited `organisation.created` and `user.invited`.
pub fn create_organisation(
    audit: &Audit,
    actor: &Actor,
    config: &crate::config::Config,
    request: &NewOrganisation,
    source: &str,
    now: i64,
) -> Result<(crate::models::Organisation, User)> {
    let name = clean_name("name", &request.name)?;
    let admin_name = clean_name("admin_name", &request.admin_name)?;
    let admin_email = clean_email(&request.admin_email)
        .map_err(|_| Error::invalid("admin_email", "is not an email address"))?;
    audit.record_with(|conn| {
        let org: crate::models::Organisation = on_backend!(conn, c => diesel::insert_into(organisations::table)
            .values((organisations::name.eq(&name), organisations::created_at_us.eq(now)))
            .returning(crate::models::Organisation::as_returning())
            .get_result(c))
        .map_err(|err| match err {
            diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => {
                Error::invalid("name", format!("an organisation named {name:?} already exists"))
            }
            other => other.into(),
        })?;
        let admin: User = on_backend!(conn, c => diesel::insert_into(users::table)
            .values((
                users::organisation_id.eq(org.id),
                users::name.eq(&admin_name),
                users::email.eq(&admin_email),
                users::role.eq(Role::Admin.as_str()),
                users::created_at_us.eq(now),
            ))
            .returning(User::as_returning())
            .get_result(c))
        .map_err(|err| email_taken_or(err, "admin_email"))?;
        let token_event = invite_in(
            conn,
            actor,
            config,
            &admin,
            crate::emails::Invitation::FirstAdministrator { organisation: &name },
            7 * 24 * 3600 * 1_000_000,
            now,
        )?;
        let events = vec![
            AuditEvent::new(actor.clone(), "organisation.created")
                .source(source)
                .target(org.id)
                .details(serde_json::json!({ "name": org.name })),
            AuditEvent::new(actor.clone(), "user.invited")
                .source(source)
                .target(admin.id)
                .details(serde_json::json!({ "email": admin.email, "role": admin.role, "organisation": org.id })),
            token_event,
        ];
        Ok(((org, admin), events))
    })
}

/// What first-run setup asks for.
#[derive(Debug, Clone)]
pub struct FirstAdmin {
    pub token: String,
    pub organisation: String,
    pub name: String,
    pub email: String,
    pub password: String,
}

/// True until the first administrator exists.
pub fn needs_setup(conn: &mut DbConnection) -> Result<bool> {
    Ok(User::count_with_role(conn, Role::Admin)? == 0)
}

/// Creates the organisation and the first administrator with the one-time enrolment token,
/// in one transaction: the token creates one administrator at most, and a refused attempt
/// leaves nothing behind.
pub fn setup_first_admin(
    audit: &Audit,
    request: &FirstAdmin,
    policy: PasswordPolicy,
    source: &str,
    now: i64,
) -> Result<User> {
    let organisation = clean_name("organisation", &request.organisation)?;
    let name = clean_name("name", &request.name)?;
    let email = clean_email(&request.email)?;
    policy.check(&request.password, &email)?;
    let hash = hash_password(&request.password)?;
    audit.record_with(|conn| {
        let token = enrolment::redeem(conn, FIRST_ADMIN, request.token.trim(), now)?;
        let existing: Option<crate::ids::OrganisationId> =
            organisations::table.filter(organisations::name.eq(&organisation)).select(organisations::id).first(conn).optional()?;
        let org = match existing {
            Some(id) => id,
            None => on_backend!(conn, c => diesel::insert_into(organisations::table)
                .values((organisations::name.eq(&organisation), organisations::created_at_us.eq(now)))
                .returning(organisations::id)
                .get_result(c))?,
        };
        // The first administrator's organisation owns the appliance.
        if crate::models::Organisation::operator(conn)?.is_none() {
            diesel::update(organisations::table.find(org))
                .set(organisations::operator.eq(true))
                .execute(conn)?;
        }
        let user: User = on_backend!(conn, c => diesel::insert_into(users::table)
            .values((
                users::organisation_id.eq(org),
                users::name.eq(&name),
                users::email.eq(&email),
                users::role.eq(Role::Admin.as_str()),
                users::created_at_us.eq(now),
                users::password_hash.eq(&hash),
                users::password_changed_at_us.eq(now),
            ))
            .returning(User::as_returning())
            .get_result(c))
        .map_err(|err| email_taken_or(err, "email"))?;
        let event = AuditEvent::new(Actor::User(user.id), "setup.first_admin.created")
            .source(source)
            .target(user.id)
            .details(serde_json::json!({ "enrolment": format!("enrolment:{token}"), "organisation": organisation, "email": email }));
        Ok((user, vec![event]))
    })
}

// Here rather than beside the rest of `Organisation` in `models`: disabling one ends its
// members' sessions, which sit above the models.
impl Organisation {
    /// Disables (or enables) an organisation: its users cannot sign in, their portal
    /// sessions end now (returned: how many), and the portal's access worker revokes their
    /// remote sessions at its next tick. Audited `organisation.disabled|enabled`.
    pub fn set_disabled(
        audit: &Audit,
        actor: &Actor,
        id: OrganisationId,
        disabled: bool,
        now: i64,
    ) -> Result<usize> {
        audit.record_with(|conn| {
            if disabled && Organisation::find(conn, id)?.operator {
                return Err(Error::invalid(
                    "organisation",
                    "the operator organisation owns the appliance and cannot be disabled",
                ));
            }
            let updated = diesel::update(organisations::table.find(id))
                .set(organisations::disabled_at_us.eq(disabled.then_some(now)))
                .execute(conn)?;
            if updated == 0 {
                return Err(Error::NotFound("organisation"));
            }
            let mut ended = 0;
            if disabled {
                let members: Vec<UserId> = users::table
                    .filter(users::organisation_id.eq(id))
                    .select(users::id)
                    .load(conn)?;
                for user in members {
                    ended +=
                        crate::sessions::end_all(conn, user, None, "organisation disabled", now)?;
                }
            }
            let action = if disabled {
                "organisation.disabled"
            } else {
                "organisation.enabled"
            };
            let event = AuditEvent::new(actor.clone(), action)
                .target(id)
                .details(serde_json::json!({ "sessions_ended": ended }));
            Ok((ended, vec![event]))
        })
    }
}
