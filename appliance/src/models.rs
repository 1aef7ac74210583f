//! Row structs and typed ids for the directory: organisations, sites (plants) and users.
//! Every write here goes through [`Audit::record_with`], so the change and its audit record
//! commit together or not at all.

use diesel::prelude::*;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::{Error, Result};
pub use crate::ids::{OrganisationId, SiteId, UserId};
use crate::schema::{organisations, sites, users};
use crate::store::DbConnection;
use crate::store::on_backend;
pub use crate::values::Role;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = organisations)]
pub struct Organisation {
    pub id: OrganisationId,
    pub name: String,
    pub created_at_us: i64,
    pub disabled_at_us: Option<i64>,
    /// The organisation first-run setup made, which owns the appliance: its administrators
    /// manage the other organisations and the appliance's own settings.
    pub operator: bool,
}

#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Associations, Serialize,
)]
#[diesel(table_name = sites, belongs_to(Organisation))]
pub struct Site {
    pub id: SiteId,
    pub organisation_id: OrganisationId,
    pub name: String,
    pub location: String,
    pub created_at_us: i64,
}

/// A user row; `role` is kept as its text form, see [`User::role`].
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Associations, Serialize,
)]
#[diesel(table_name = users, belongs_to(Organisation))]
pub struct User {
    pub id: UserId,
    pub organisation_id: OrganisationId,
    pub name: String,
    pub email: String,
    pub role: String,
    pub created_at_us: i64,
}

impl User {
    pub fn role(&self) -> Result<Role> {
        self.role.parse()
    }
}

/// A user joined with the name of their organisation, as lists show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserListing {
    #[serde(flatten)]
    pub user: User,
    pub organisation: String,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = organisations)]
struct NewOrganisation<'a> {
    name: &'a str,
    created_at_us: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = sites)]
struct NewSite<'a> {
    organisation_id: OrganisationId,
    name: &'a str,
    location: &'a str,
    created_at_us: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
struct NewUser<'a> {
    organisation_id: OrganisationId,
    name: &'a str,
    email: &'a str,
    role: &'a str,
    created_at_us: i64,
}

const MAX_NAME_CHARS: usize = 200;

pub(crate) fn clean_name(field: &'static str, raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// A deliberately plain check: one `@`, something on each side, no spaces, at most 254
/// characters. Whether the address works is proven by mail, not by a regex.
pub(crate) fn clean_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@') && !domain.starts_with('.') && !domain.ends_with('.'));
    if valid {
        Ok(email)
    } else {
        Err(Error::invalid(
            "email",
            format!("{raw:?} is not an email address"),
        ))
    }
}

/// Maps a unique-constraint violation to a conflict the user can act on.
fn conflict_or(err: diesel::result::Error, what: impl FnOnce() -> String) -> Error {
    match err {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => Error::Conflict(what()),
        other => other.into(),
    }
}

/// Maps a unique-constraint violation on an email address to a refusal beside `field`.
pub(crate) fn email_taken_or(err: diesel::result::Error, field: &'static str) -> Error {
    match err {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => Error::invalid(field, "this address is already in use"),
        other => other.into(),
    }
}

/// Maps a foreign-key refusal (the row is still referenced) to a conflict that says what
/// to do instead.
fn in_use_or(err: diesel::result::Error, what: impl FnOnce() -> String) -> Error {
    match err {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _,
        ) => Error::Conflict(what()),
        other => other.into(),
    }
}

const MAX_LOCATION_CHARS: usize = 200;

fn clean_location(raw: &str) -> Result<String> {
    let location = raw.trim();
    if location.chars().count() > MAX_LOCATION_CHARS {
        return Err(Error::invalid(
            "location",
            format!("must be at most {MAX_LOCATION_CHARS} characters"),
        ));
    }
    if location.chars().any(char::is_control) {
        return Err(Error::invalid(
            "location",
            "must not contain control characters",
        ));
    }
    Ok(location.to_owned())
}

impl Organisation {
    /// Creates an organisation as of `now`, audited `organisation.created`.
    pub fn create(audit: &Audit, actor: &Actor, name: &str, now: i64) -> Result<Organisation> {
        let name = clean_name("name", name)?;
        audit.record_with(|conn| {
            let org = on_backend!(conn, c => diesel::insert_into(organisations::table)
                    .values(NewOrganisation { name: &name, created_at_us: now })
                    .returning(Organisation::as_returning())
                .get_result(c))
            .map_err(|err| {
                conflict_or(err, || {
                    format!("an organisation named {name:?} already exists")
                })
            })?;
            let event = AuditEvent::new(actor.clone(), "organisation.created")
                .target(org.id)
                .details(serde_json::json!({ "name": org.name }));
            Ok((org, vec![event]))
        })
    }

    pub fn list(conn: &mut DbConnection) -> Result<Vec<Organisation>> {
        Ok(organisations::table
            .order(organisations::name)
            .select(Organisation::as_select())
            .load(conn)?)
    }

    pub fn find(conn: &mut DbConnection, id: OrganisationId) -> Result<Organisation> {
        organisations::table
            .find(id)
            .select(Organisation::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("organisation"))
    }

    /// Renames an organisation; audited `organisation.renamed` with both names.
    pub fn rename(
        audit: &Audit,
        actor: &Actor,
        id: OrganisationId,
        name: &str,
    ) -> Result<Organisation> {
        let name = clean_name("name", name)?;
        audit.record_with(|conn| {
            let before = Organisation::find(conn, id)?;
            diesel::update(organisations::table.find(id))
                .set(organisations::name.eq(&name))
                .execute(conn)
                .map_err(|err| {
                    conflict_or(err, || {
                        format!("an organisation named {name:?} already exists")
                    })
                })?;
            let event = AuditEvent::new(actor.clone(), "organisation.renamed")
                .target(id)
                .details(serde_json::json!({ "from": before.name, "to": name }));
            Ok((Organisation { name, ..before }, vec![event]))
        })
    }

    /// Deletes an organisation that has no sites left, with its users, as long as none of
    /// them has remote-access history (that stays readable: disable the organisation
    /// instead). The operator organisation is never deleted. Audited `organisation.deleted`.
    pub fn delete(audit: &Audit, actor: &Actor, id: OrganisationId) -> Result<()> {
        use crate::schema::site_approvers;
        audit.record_with(|conn| {
            let org = Organisation::find(conn, id)?;
            if org.operator {
                return Err(Error::invalid(
                    "organisation",
                    "the operator organisation owns the appliance and cannot be deleted",
                ));
            }
            let plants: i64 = sites::table
                .filter(sites::organisation_id.eq(id))
                .count()
                .get_result(conn)?;
            if plants > 0 {
                return Err(Error::Conflict(format!(
                    "{} still has {plants} site(s); delete them first, or disable the organisation",
                    org.name
                )));
            }
            let members: Vec<UserId> = users::table
                .filter(users::organisation_id.eq(id))
                .select(users::id)
                .load(conn)?;
            let kept = || {
                format!(
                    "{} has users with remote-access history, which must stay readable; disable the organisation instead",
                    org.name
                )
            };
            diesel::delete(site_approvers::table.filter(site_approvers::user_id.eq_any(&members)))
                .execute(conn)?;
            diesel::delete(users::table.filter(users::organisation_id.eq(id)))
                .execute(conn)
                .map_err(|err| in_use_or(err, kept))?;
            diesel::delete(organisations::table.find(id))
                .execute(conn)
                .map_err(|err| in_use_or(err, kept))?;
            let event = AuditEvent::new(actor.clone(), "organisation.deleted")
                .target(id)
                .details(serde_json::json!({ "name": org.name, "users_deleted": members.len() }));
            Ok(((), vec![event]))
        })
    }

    /// The organisation that owns the appliance, once first-run setup made it.
    pub fn operator(conn: &mut DbConnection) -> Result<Option<Organisation>> {
        Ok(organisations::table
            .filter(organisations::operator.eq(true))
            .select(Organisation::as_select())
            .first(conn)
            .optional()?)
    }

    pub fn find_by_name(conn: &mut DbConnection, name: &str) -> Result<Option<Organisation>> {
        Ok(organisations::table
            .filter(organisations::name.eq(name))
            .select(Organisation::as_select())
            .first(conn)
            .optional()?)
    }
}

impl Site {
    /// Creates a site of `organisation` as of `now`, audited `site.created`.
    pub fn create(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        name: &str,
        location: &str,
        now: i64,
    ) -> Result<Site> {
        let name = clean_name("name", name)?;
        let location = clean_location(location)?;
        audit.record_with(|conn| {
            let site = on_backend!(conn, c => diesel::insert_into(sites::table)
                    .values(NewSite { organisation_id: organisation, name: &name, location: &location, created_at_us: now })
                    .returning(Site::as_returning())
                .get_result(c))
                .map_err(|err| match err {
                    diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::ForeignKeyViolation, _) => {
                        Error::NotFound("organisation")
                    }
                    other => conflict_or(other, || format!("this organisation already has a site named {name:?}")),
                })?;
            let event = AuditEvent::new(actor.clone(), "site.created")
                .target(site.id)
                .details(serde_json::json!({ "name": site.name, "organisation": organisation }));
            Ok((site, vec![event]))
        })
    }

    /// A site of `organisation`; any other id is "not found".
    pub fn find_in(
        conn: &mut DbConnection,
        organisation: OrganisationId,
        id: SiteId,
    ) -> Result<Site> {
        sites::table
            .find(id)
            .filter(sites::organisation_id.eq(organisation))
            .select(Site::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("site"))
    }

    /// Renames a site of `organisation` or changes its location; audited `site.updated`.
    pub fn update(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        id: SiteId,
        name: &str,
        location: &str,
    ) -> Result<Site> {
        let name = clean_name("name", name)?;
        let location = clean_location(location)?;
        audit.record_with(|conn| {
            let before = Site::find_in(conn, organisation, id)?;
            diesel::update(sites::table.find(id))
                .set((sites::name.eq(&name), sites::location.eq(&location)))
                .execute(conn)
                .map_err(|err| {
                    conflict_or(err, || {
                        format!("this organisation already has a site named {name:?}")
                    })
                })?;
            let event = AuditEvent::new(actor.clone(), "site.updated")
                .target(id)
                .details(serde_json::json!({
                    "from": { "name": before.name, "location": before.location },
                    "to": { "name": name, "location": location },
                }));
            Ok((
                Site {
                    name,
                    location,
                    ..before
                },
                vec![event],
            ))
        })
    }

    /// Deletes a site of `organisation` with its machines, approvers and policy. A site
    /// with devices, contractor accounts or remote-access history is kept, so that history
    /// stays readable: the refusal says so. Audited `site.deleted`.
    pub fn delete(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        id: SiteId,
    ) -> Result<()> {
        use crate::schema::{machines, site_approvers, site_policies};
        audit.record_with(|conn| {
            let site = Site::find_in(conn, organisation, id)?;
            let kept = || {
                format!(
                    "{} has devices, contractor accounts or remote-access history, which must stay readable; switch its remote access off instead",
                    site.name
                )
            };
            diesel::delete(site_approvers::table.filter(site_approvers::site_id.eq(id)))
                .execute(conn)?;
            diesel::delete(site_policies::table.filter(site_policies::site_id.eq(id)))
                .execute(conn)?;
            diesel::delete(machines::table.filter(machines::site_id.eq(id)))
                .execute(conn)
                .map_err(|err| in_use_or(err, kept))?;
            diesel::delete(sites::table.find(id))
                .execute(conn)
                .map_err(|err| in_use_or(err, kept))?;
            let event = AuditEvent::new(actor.clone(), "site.deleted")
                .target(id)
                .details(serde_json::json!({ "name": site.name, "location": site.location }));
            Ok(((), vec![event]))
        })
    }

    pub fn list_for(conn: &mut DbConnection, organisation: OrganisationId) -> Result<Vec<Site>> {
        Ok(sites::table
            .filter(sites::organisation_id.eq(organisation))
            .order(sites::name)
            .select(Site::as_select())
            .load(conn)?)
    }
}

impl User {
    /// Creates a user of `organisation` as of `now`, audited `user.created`.
    pub fn create(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        name: &str,
        email: &str,
        role: Role,
        now: i64,
    ) -> Result<User> {
        let name = clean_name("name", name)?;
        let email = clean_email(email)?;
        audit.record_with(|conn| {
            let user = on_backend!(conn, c => diesel::insert_into(users::table)
                    .values(NewUser {
                        organisation_id: organisation,
                        name: &name,
                        email: &email,
                        role: role.as_str(),
                        created_at_us: now,
                    })
                    .returning(User::as_returning())
                .get_result(c))
                .map_err(|err| match err {
                    diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::ForeignKeyViolation, _) => {
                        Error::NotFound("organisation")
                    }
                    other => conflict_or(other, || format!("a user with email {email:?} already exists")),
                })?;
            let event = AuditEvent::new(actor.clone(), "user.created")
                .target(user.id)
                .details(serde_json::json!({ "email": user.email, "role": user.role, "organisation": organisation }));
            Ok((user, vec![event]))
        })
    }

    /// Every user with their organisation's name, ordered by organisation then email.
    pub fn list_all(conn: &mut DbConnection) -> Result<Vec<UserListing>> {
        let rows: Vec<(User, String)> = users::table
            .inner_join(organisations::table)
            .order((organisations::name, users::email))
            .select((User::as_select(), organisations::name))
            .load(conn)?;
        Ok(rows
            .into_iter()
            .map(|(user, organisation)| UserListing { user, organisation })
            .collect())
    }

    pub fn find_by_email(conn: &mut DbConnection, email: &str) -> Result<Option<User>> {
        Ok(users::table
            .filter(users::email.eq(email.trim().to_lowercase()))
            .select(User::as_select())
            .first(conn)
            .optional()?)
    }

    pub fn count_with_role(conn: &mut DbConnection, role: Role) -> Result<i64> {
        Ok(users::table
            .filter(users::role.eq(role.as_str()))
            .count()
            .get_result(conn)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            clean_email("  Ada@Plant.Example ").ok(),
            Some("ada@plant.example".to_owned())
        );
        for bad in [
            "",
            "ada",
            "@plant.example",
            "ada@",
            "ada@plant",
            "a da@plant.example",
            "ada@@plant.example",
        ] {
            assert!(clean_email(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
