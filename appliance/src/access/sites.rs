//! Sites as remote access sees them (a contractor sees one), the approvers named for each,
//! and the machines on the device network that requests are for.

use std::net::Ipv4Addr;

use diesel::prelude::*;
use serde::Serialize;

use super::policy::SitePolicy;
use super::state::State;
use crate::audit::{Actor, Audit, AuditEvent};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::grants::Agent;
use crate::ids::{MachineId, OrganisationId, SiteId, UserId};
use crate::models::{Role, Site, User, clean_name};
use crate::schema::{access_requests, machines, site_approvers, sites, users};
use crate::store::DbConnection;
use crate::store::on_backend;

/// A site of `organisation`, or "not found".
pub fn site_of(conn: &mut DbConnection, organisation: OrganisationId, id: SiteId) -> Result<Site> {
    sites::table
        .find(id)
        .filter(sites::organisation_id.eq(organisation))
        .select(Site::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound("site"))
}

/// The one site a contractor account is limited to, if it is limited.
pub fn user_site(conn: &mut DbConnection, user: UserId) -> Result<Option<SiteId>> {
    Ok(users::table
        .find(user)
        .select(users::site_id)
        .first::<Option<i64>>(conn)
        .optional()?
        .flatten()
        .map(SiteId))
}

/// The sites `user` may see: every site of their organisation, or their one site.
pub fn sites_for(conn: &mut DbConnection, user: &User) -> Result<Vec<Site>> {
    let only = user_site(conn, user.id)?;
    Ok(Site::list_for(conn, user.organisation_id)?
        .into_iter()
        .filter(|site| only.is_none_or(|only| only == site.id))
        .collect())
}

/// One site `user` may see, or "not found" for any other: another organisation's site
/// and one that does not exist look the same.
pub fn visible_site(conn: &mut DbConnection, user: &User, id: i64) -> Result<Site> {
    sites_for(conn, user)?
        .into_iter()
        .find(|s| s.id.0 == id)
        .ok_or(Error::NotFound("site"))
}

pub fn approvers(conn: &mut DbConnection, site: SiteId) -> Result<Vec<User>> {
    Ok(site_approvers::table
        .inner_join(users::table)
        .filter(site_approvers::site_id.eq(site))
        .filter(users::disabled_at_us.is_null())
        .order(users::name)
        .select(User::as_select())
        .load(conn)?)
}

/// True when `user` holds the approver role and is named an approver of `site`.
pub fn is_approver(conn: &mut DbConnection, user: &User, site: SiteId) -> Result<bool> {
    if user.role()? != Role::Approver {
        return Ok(false);
    }
    let named: i64 = site_approvers::table
        .filter(site_approvers::site_id.eq(site))
        .filter(site_approvers::user_id.eq(user.id))
        .count()
        .get_result(conn)?;
    Ok(named > 0)
}

/// Names `user` an approver of `site` (`add`) or takes it back; audited.
pub fn set_approver(
    audit: &Audit,
    actor: &Actor,
    site: &Site,
    user: UserId,
    add: bool,
) -> Result<()> {
    audit.record_with(|conn| {
        let candidate: User = users::table
            .find(user)
            .filter(users::organisation_id.eq(site.organisation_id))
            .select(User::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("user"))?;
        let key = site_approvers::table
            .filter(site_approvers::site_id.eq(site.id))
            .filter(site_approvers::user_id.eq(user));
        let changed = if add {
            if candidate.role()? != Role::Approver {
                return Err(Error::invalid(
                    "user",
                    format!(
                        "{} has the role {}; only approvers can approve",
                        candidate.name, candidate.role
                    ),
                ));
            }
            if key.count().get_result::<i64>(conn)? > 0 {
                0
            } else {
                diesel::insert_into(site_approvers::table)
                    .values((
                        site_approvers::site_id.eq(site.id),
                        site_approvers::user_id.eq(user),
                    ))
                    .execute(conn)?
            }
        } else {
            diesel::delete(key).execute(conn)?
        };
        let events = (changed > 0)
            .then(|| {
                let action = if add {
                    "site.approver.added"
                } else {
                    "site.approver.removed"
                };
                AuditEvent::new(actor.clone(), action)
                    .target(site.id)
                    .details(serde_json::json!({ "user": user, "email": candidate.email }))
            })
            .into_iter()
            .collect();
        Ok(((), events))
    })
}

/// A machine on the device network.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = machines)]
pub struct Machine {
    pub id: MachineId,
    pub organisation_id: OrganisationId,
    pub site_id: SiteId,
    pub name: String,
    pub address: String,
    pub agents: String,
    pub created_at_us: i64,
    pub removed_at_us: Option<i64>,
}

/// What an administrator fills in to add a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMachine<'a> {
    pub name: &'a str,
    /// An IPv4 host of the device network.
    pub address: &'a str,
    /// Agent names (such as s7 or vnc); blank and repeated names are ignored.
    pub agents: &'a [String],
}

impl Machine {
    pub fn agent_names(&self) -> Vec<&str> {
        self.agents.split(',').filter(|a| !a.is_empty()).collect()
    }

    pub fn target(&self) -> String {
        self.id.to_string()
    }

    /// Adds a machine to `site` as of `now`: its address must be a host of the device
    /// network and on the site's allowlist, and each agent must exist. Audited as
    /// `machine.added`.
    pub fn add(
        audit: &Audit,
        actor: &Actor,
        config: &Config,
        site: &Site,
        machine: &NewMachine<'_>,
        now: i64,
    ) -> Result<Machine> {
        let NewMachine {
            name,
            address,
            agents,
        } = *machine;
        let name = clean_name("name", name)?;
        let address: Ipv4Addr = address.trim().parse().map_err(|_| {
            Error::invalid("address", format!("{address:?} is not an IPv4 address"))
        })?;
        let network = config.device_network()?;
        if !network.contains(&address)
            || address == network.network()
            || address == network.broadcast()
        {
            return Err(Error::invalid(
                "address",
                format!("{address} is not a host in the device network {network}"),
            ));
        }
        let mut conn = audit.store().conn()?;
        let policy = SitePolicy::of(&mut conn, site.id)?;
        if !policy.allows_device(address) {
            return Err(Error::invalid(
                "address",
                format!(
                    "{address} is not on {}'s device allowlist ({}); an administrator adds it under the site's policy first",
                    site.name,
                    if policy.device_allowlist.is_empty() {
                        "empty"
                    } else {
                        &policy.device_allowlist
                    }
                ),
            ));
        }
        let mut names: Vec<String> = Vec::new();
        for agent in agents.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let agent = Agent::find(&mut conn, agent)?;
            if !names.contains(&agent.name) {
                names.push(agent.name);
            }
        }
        drop(conn);
        if names.is_empty() {
            return Err(Error::invalid(
                "agents",
                "choose at least one device agent (such as s7 or vnc)",
            ));
        }
        let agents = names.join(",");
        audit.record_with(|conn| {
            let taken: i64 = machines::table
                .filter(machines::site_id.eq(site.id))
                .filter(machines::name.eq(&name))
                .filter(machines::removed_at_us.is_null())
                .count()
                .get_result(conn)?;
            if taken > 0 {
                return Err(Error::Conflict(format!(
                    "{} already has a machine named {name:?}",
                    site.name
                )));
            }
            let machine = on_backend!(conn, c => diesel::insert_into(machines::table)
                .values((
                    machines::organisation_id.eq(site.organisation_id),
                    machines::site_id.eq(site.id),
                    machines::name.eq(&name),
                    machines::address.eq(address.to_string()),
                    machines::agents.eq(&agents),
                    machines::created_at_us.eq(now),
                ))
                .returning(Machine::as_returning())
                .get_result(c))?;
            let event = AuditEvent::new(actor.clone(), "machine.added")
                .target(machine.target())
                .details(serde_json::json!({
                    "site": site.id, "name": machine.name, "address": machine.address, "agents": machine.agents,
                }));
            Ok((machine, vec![event]))
        })
    }

    /// Removes a machine that has no session open, as of `now`; audited as `machine.removed`.
    pub fn remove(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        id: MachineId,
        now: i64,
    ) -> Result<()> {
        audit.record_with(|conn| {
            let machine = Machine::find(conn, organisation, id)?;
            let open: i64 = access_requests::table
                .filter(access_requests::machine_id.eq(id))
                .filter(
                    access_requests::state
                        .eq_any([State::Pending.as_str(), State::Approved.as_str()]),
                )
                .count()
                .get_result(conn)?;
            if open > 0 {
                return Err(Error::Conflict(format!(
                    "{} has open requests or sessions; end them first",
                    machine.name
                )));
            }
            diesel::update(machines::table.find(id))
                .set(machines::removed_at_us.eq(now))
                .execute(conn)?;
            let event = AuditEvent::new(actor.clone(), "machine.removed")
                .target(machine.target())
                .details(serde_json::json!({ "name": machine.name, "address": machine.address }));
            Ok(((), vec![event]))
        })
    }

    /// A machine of `organisation` that was not removed, or "not found".
    pub fn find(
        conn: &mut DbConnection,
        organisation: OrganisationId,
        id: MachineId,
    ) -> Result<Machine> {
        machines::table
            .find(id)
            .filter(machines::organisation_id.eq(organisation))
            .filter(machines::removed_at_us.is_null())
            .select(Machine::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("machine"))
    }

    pub fn of_site(conn: &mut DbConnection, site: SiteId) -> Result<Vec<Machine>> {
        Ok(machines::table
            .filter(machines::site_id.eq(site))
            .filter(machines::removed_at_us.is_null())
            .order(machines::name)
            .select(Machine::as_select())
            .load(conn)?)
    }
}
