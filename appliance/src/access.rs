//! Remote access with approval ("virtual lockout-tagout").
//!
//! A technician asks for one agent of one machine, for a while, with a reason. The site's
//! approvers are told by email; one of them, signed in, approves (perhaps for less time) or
//! denies. Approval stores the firewall grant in the same transaction, so a decision and its
//! pinhole commit together; the firewall controller applies it. The session ends by expiry,
//! by the technician, by an approver's revoke, by the site's key switch, or by the
//! technician's account ending. Every step is audited with its actor and source address.
//!
//! Decisions are conditional updates (`WHERE state = 'pending'`) inside the audit
//! transaction, which takes the audit lock first: two approvers acting at once yield one
//! decision and one clear refusal.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use chrono::{NaiveTime, TimeZone, Utc};
use diesel::prelude::*;
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::grants::{Agent, Grant, GrantRequest};
use crate::ids::{OrganisationId, SiteId, UserId};
use crate::models::{Role, Site, User, clean_name};
use crate::schema::{access_requests, machines, site_approvers, site_policies, sites, users};
use crate::store::DbConnection;
use crate::time::format_us;
use crate::{mail, on_backend};

const MICROS: i64 = 1_000_000;

/// `HH:MM-HH:MM` in a site's time zone; a window may run past midnight (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourWindow {
    pub from: NaiveTime,
    pub until: NaiveTime,
}

impl HourWindow {
    pub fn parse(raw: &str) -> std::result::Result<HourWindow, String> {
        let expected = "HH:MM-HH:MM, such as 06:00-18:00, or empty for any time";
        let (from, until) = raw.trim().split_once('-').ok_or(expected)?;
        let time = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| expected);
        let (from, until) = (time(from)?, time(until)?);
        if from == until {
            return Err("the window starts and ends at the same time".into());
        }
        Ok(HourWindow { from, until })
    }

    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.from < self.until {
            self.from <= t && t < self.until
        } else {
            t >= self.from || t < self.until
        }
    }
}

impl fmt::Display for HourWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.from.format("%H:%M"),
            self.until.format("%H:%M")
        )
    }
}

fn parse_networks(field: &'static str, raw: &str) -> Result<Vec<Ipv4Net>> {
    raw.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Ipv4Net>()
                .or_else(|_| s.parse::<Ipv4Addr>().map(Ipv4Net::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    Error::invalid(
                        field,
                        format!("{s:?} is not an IPv4 address or network, such as 10.0.0.0/24"),
                    )
                })
        })
        .collect()
}

fn join_networks(networks: &[Ipv4Net]) -> String {
    networks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A site's access policy.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset, Serialize,
)]
#[diesel(table_name = site_policies, treat_none_as_null = true)]
pub struct SitePolicy {
    pub site_id: SiteId,
    pub approval_required: bool,
    pub max_minutes: i32,
    pub allowed_hours: String,
    pub timezone: String,
    pub requester_may_extend: bool,
    pub declared_networks: String,
    pub device_allowlist: String,
    pub remote_enabled: bool,
    pub signal_on: bool,
    pub updated_at_us: i64,
}

/// What an administrator sets on a site's policy page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyChange {
    pub approval_required: bool,
    pub max_minutes: String,
    pub allowed_hours: String,
    pub timezone: String,
    pub requester_may_extend: bool,
    pub declared_networks: String,
    pub device_allowlist: String,
}

impl SitePolicy {
    /// A new site: approval required, at most two hours, any time, nothing reachable until
    /// an administrator lists the machines' addresses.
    pub fn defaults(site: SiteId) -> SitePolicy {
        SitePolicy {
            site_id: site,
            approval_required: true,
            max_minutes: 120,
            allowed_hours: String::new(),
            timezone: "UTC".into(),
            requester_may_extend: false,
            declared_networks: String::new(),
            device_allowlist: String::new(),
            remote_enabled: true,
            signal_on: false,
            updated_at_us: 0,
        }
    }

    pub fn of(conn: &mut DbConnection, site: SiteId) -> Result<SitePolicy> {
        Ok(site_policies::table
            .find(site)
            .select(SitePolicy::as_select())
            .first(conn)
            .optional()?
            .unwrap_or_else(|| SitePolicy::defaults(site)))
    }

    fn save(&self, conn: &mut DbConnection) -> Result<()> {
        let updated = diesel::update(site_policies::table.find(self.site_id))
            .set(self)
            .execute(conn)?;
        if updated == 0 {
            diesel::insert_into(site_policies::table)
                .values(self)
                .execute(conn)?;
        }
        Ok(())
    }

    pub fn allowlist(&self) -> Vec<Ipv4Net> {
        parse_networks("device_allowlist", &self.device_allowlist).unwrap_or_default()
    }

    pub fn declarable(&self) -> Vec<Ipv4Net> {
        parse_networks("declared_networks", &self.declared_networks).unwrap_or_default()
    }

    pub fn hours(&self) -> Option<HourWindow> {
        HourWindow::parse(&self.allowed_hours).ok()
    }

    fn zone(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Refuses when `now` is outside the allowed hours.
    pub fn check_hours(&self, now: i64) -> Result<()> {
        let Some(window) = self.hours() else {
            return Ok(());
        };
        let local = Utc
            .timestamp_micros(now)
            .single()
            .map(|t| t.with_timezone(&self.zone()).time())
            .unwrap_or_default();
        if window.contains(local) {
            Ok(())
        } else {
            Err(Error::invalid(
                "time",
                format!(
                    "remote access at this site is allowed {window} ({}); it is {} there now",
                    self.timezone,
                    local.format("%H:%M")
                ),
            ))
        }
    }

    pub fn allows_device(&self, address: Ipv4Addr) -> bool {
        self.allowlist().iter().any(|net| net.contains(&address))
    }

    /// Validates and stores a new policy for `site`, audited as `site.policy.changed`.
    pub fn set(
        audit: &Audit,
        actor: &Actor,
        config: &Config,
        site: &Site,
        change: &PolicyChange,
    ) -> Result<SitePolicy> {
        let ceiling = config.firewall.max_grant_minutes;
        let max_minutes = change
            .max_minutes
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|m| (1..=i64::from(ceiling)).contains(&i64::from(*m)))
            .ok_or_else(|| {
                Error::invalid(
                    "max_minutes",
                    format!(
                        "{:?}: a whole number of minutes from 1 to {ceiling} (firewall.max_grant_minutes)",
                        change.max_minutes
                    ),
                )
            })?;
        let allowed_hours = match change.allowed_hours.trim() {
            "" => String::new(),
            raw => HourWindow::parse(raw)
                .map_err(|problem| Error::invalid("allowed_hours", problem))?
                .to_string(),
        };
        let timezone = match change.timezone.trim() {
            "" => "UTC".to_owned(),
            raw => raw
                .parse::<chrono_tz::Tz>()
                .map_err(|_| {
                    Error::invalid(
                        "timezone",
                        format!("{raw:?} is not a time zone; use a name such as Europe/Berlin"),
                    )
                })?
                .name()
                .to_owned(),
        };
        let device_network = config.device_network()?;
        let allowlist = parse_networks("device_allowlist", &change.device_allowlist)?;
        if let Some(outside) = allowlist.iter().find(|net| !device_network.contains(*net)) {
            return Err(Error::invalid(
                "device_allowlist",
                format!("{outside} is not inside the device network {device_network}"),
            ));
        }
        let declarable = parse_networks("declared_networks", &change.declared_networks)?;
        if let Some(inside) = declarable
            .iter()
            .find(|net| device_network.contains(*net) || net.contains(&device_network))
        {
            return Err(Error::invalid(
                "declared_networks",
                format!("{inside} overlaps the device network {device_network}"),
            ));
        }
        audit.record_with(|conn| {
            let before = SitePolicy::of(conn, site.id)?;
            let policy = SitePolicy {
                site_id: site.id,
                approval_required: change.approval_required,
                max_minutes,
                allowed_hours: allowed_hours.clone(),
                timezone: timezone.clone(),
                requester_may_extend: change.requester_may_extend,
                declared_networks: join_networks(&declarable),
                device_allowlist: join_networks(&allowlist),
                remote_enabled: before.remote_enabled,
                signal_on: before.signal_on,
                updated_at_us: crate::time::now_us(),
            };
            policy.save(conn)?;
            let event = AuditEvent::new(actor.clone(), "site.policy.changed")
                .target(site.id)
                .details(serde_json::json!({
                    "approval_required": policy.approval_required,
                    "max_minutes": policy.max_minutes,
                    "allowed_hours": policy.allowed_hours,
                    "timezone": policy.timezone,
                    "requester_may_extend": policy.requester_may_extend,
                    "declared_networks": policy.declared_networks,
                    "device_allowlist": policy.device_allowlist,
                }));
            Ok((policy, vec![event]))
        })
    }
}

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
    pub id: i64,
    pub organisation_id: OrganisationId,
    pub site_id: SiteId,
    pub name: String,
    pub address: String,
    pub agents: String,
    pub created_at_us: i64,
    pub removed_at_us: Option<i64>,
}

impl Machine {
    pub fn agent_names(&self) -> Vec<&str> {
        self.agents.split(',').filter(|a| !a.is_empty()).collect()
    }

    pub fn target(&self) -> String {
        format!("machine:{}", self.id)
    }

    /// Adds a machine to `site`: its address must be a host of the device network and on
    /// the site's allowlist, and each agent must exist. Audited as `machine.added`.
    pub fn add(
        audit: &Audit,
        actor: &Actor,
        config: &Config,
        site: &Site,
        name: &str,
        address: &str,
        agents: &[String],
    ) -> Result<Machine> {
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
                    machines::created_at_us.eq(crate::time::now_us()),
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

    /// Removes a machine that has no session open; audited as `machine.removed`.
    pub fn remove(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        id: i64,
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
                .set(machines::removed_at_us.eq(crate::time::now_us()))
                .execute(conn)?;
            let event = AuditEvent::new(actor.clone(), "machine.removed")
                .target(machine.target())
                .details(serde_json::json!({ "name": machine.name, "address": machine.address }));
            Ok(((), vec![event]))
        })
    }

    /// A machine of `organisation` that was not removed, or "not found".
    pub fn find(conn: &mut DbConnection, organisation: OrganisationId, id: i64) -> Result<Machine> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
    Ended,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Approved,
        State::Denied,
        State::Expired,
        State::Cancelled,
        State::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Ended => "ended",
        }
    }
}

impl FromStr for State {
    type Err = Error;
    fn from_str(s: &str) -> Result<State> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::invalid("state", format!("{s:?} is not a request state")))
    }
}

/// A request, its decision, and the session it became.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = access_requests)]
pub struct AccessRequest {
    pub id: i64,
    pub organisation_id: OrganisationId,
    pub site_id: SiteId,
    pub machine_id: i64,
    pub agent: String,
    pub requester_id: UserId,
    pub requester_addr: String,
    pub address_declared: bool,
    pub requested_seconds: i64,
    pub reason: String,
    pub state: String,
    pub created_at_us: i64,
    pub pending_until_us: i64,
    pub decided_by: Option<UserId>,
    pub decided_at_us: Option<i64>,
    pub decision_reason: Option<String>,
    pub approved_seconds: Option<i64>,
    pub grant_id: Option<i64>,
    pub ended_at_us: Option<i64>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
}

impl AccessRequest {
    pub fn target(&self) -> String {
        format!("access_request:{}", self.id)
    }

    pub fn state(&self) -> Result<State> {
        self.state.parse()
    }

    fn find(conn: &mut DbConnection, id: i64) -> Result<AccessRequest> {
        access_requests::table
            .find(id)
            .select(AccessRequest::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("access request"))
    }
}

/// What a technician fills in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRequest {
    pub machine_id: i64,
    pub agent: String,
    pub minutes: String,
    pub reason: String,
    /// An address other than the one the portal sees, which the site's policy must allow.
    pub declared_address: String,
}

/// The people and names a request's emails and pages show.
struct Context {
    site: Site,
    machine: Machine,
    requester: User,
    agent: Agent,
}

fn context(conn: &mut DbConnection, request: &AccessRequest) -> Result<Context> {
    let site = site_of(conn, request.organisation_id, request.site_id)?;
    let machine = machines::table
        .find(request.machine_id)
        .select(Machine::as_select())
        .first(conn)?;
    let requester = users::table
        .find(request.requester_id)
        .select(User::as_select())
        .first(conn)?;
    let agent = Agent::find(conn, &request.agent)?;
    Ok(Context {
        site,
        machine,
        requester,
        agent,
    })
}

fn minutes_text(seconds: i64) -> String {
    let minutes = seconds / 60;
    if minutes >= 60 && minutes % 60 == 0 {
        format!("{} h", minutes / 60)
    } else {
        format!("{minutes} min")
    }
}

fn request_url(config: &Config, id: i64) -> String {
    format!("{}/access/{id}", config.portal_url())
}

/// False once the account is disabled or expired, or its organisation is disabled.
fn account_active(conn: &mut DbConnection, user: UserId, now: i64) -> Result<bool> {
    let account: Option<(Option<i64>, Option<i64>, Option<i64>)> = users::table
        .inner_join(crate::schema::organisations::table)
        .filter(users::id.eq(user))
        .select((
            users::disabled_at_us,
            users::expires_at_us,
            crate::schema::organisations::disabled_at_us,
        ))
        .first(conn)
        .optional()?;
    Ok(account.is_some_and(|(disabled, expires, org_disabled)| {
        disabled.is_none() && expires.is_none_or(|at| at > now) && org_disabled.is_none()
    }))
}

/// Everything a request must pass, at request time and again at approval: the key switch,
/// the hours, the allowlist, and every check a firewall grant makes.
#[allow(clippy::too_many_arguments)]
fn check_grantable(
    conn: &mut DbConnection,
    config: &Config,
    policy: &SitePolicy,
    machine: &Machine,
    requester_addr: &str,
    agent: &str,
    seconds: i64,
    reason: &str,
    now: i64,
) -> Result<crate::grants::ValidGrant> {
    if !policy.remote_enabled {
        return Err(Error::Conflict(
            "remote access is switched off at this site (key switch)".into(),
        ));
    }
    policy.check_hours(now)?;
    let address: Ipv4Addr = machine
        .address
        .parse()
        .map_err(|_| Error::invalid("machine", "stored address is invalid"))?;
    if !policy.allows_device(address) {
        return Err(Error::invalid(
            "machine",
            format!(
                "{} ({address}) is no longer on the site's device allowlist",
                machine.name
            ),
        ));
    }
    Grant::validate(
        conn,
        config,
        &GrantRequest {
            requester: requester_addr.to_owned(),
            device: machine.address.clone(),
            agent: agent.to_owned(),
            duration_seconds: u64::try_from(seconds).unwrap_or(0),
            reason: reason.to_owned(),
            dnat_port: None,
        },
    )
}

/// Records a technician's request; nothing is stored when any check fails. The site's
/// approvers are emailed, or, where the policy needs no approval, it is approved at once.
pub fn request(
    audit: &Audit,
    config: &Config,
    requester: &User,
    source: &str,
    new: &NewRequest,
    now: i64,
) -> Result<AccessRequest> {
    if !matches!(
        requester.role()?,
        Role::Technician | Role::Approver | Role::Admin
    ) {
        return Err(Error::Forbidden(
            "only technicians, approvers and administrators can ask for remote access".into(),
        ));
    }
    let mut conn = audit.store().conn()?;
    let machine = Machine::find(&mut conn, requester.organisation_id, new.machine_id)?;
    if user_site(&mut conn, requester.id)?.is_some_and(|only| only != machine.site_id) {
        return Err(Error::NotFound("machine"));
    }
    let site = site_of(&mut conn, machine.organisation_id, machine.site_id)?;
    let policy = SitePolicy::of(&mut conn, site.id)?;
    let agent = new.agent.trim();
    if !machine.agent_names().contains(&agent) {
        return Err(Error::invalid(
            "agent",
            format!(
                "{} offers {}, not {agent:?}",
                machine.name,
                machine.agent_names().join(", ")
            ),
        ));
    }
    let minutes: i64 = new
        .minutes
        .trim()
        .parse()
        .ok()
        .filter(|m| (1..=i64::from(policy.max_minutes)).contains(m))
        .ok_or_else(|| {
            Error::invalid(
                "duration",
                format!(
                    "{:?}: a number of minutes from 1 to {}, this site's maximum",
                    new.minutes, policy.max_minutes
                ),
            )
        })?;
    let (requester_addr, declared) = match new.declared_address.trim() {
        "" => (source.to_owned(), false),
        declared => {
            let address: Ipv4Addr = declared.parse().map_err(|_| {
                Error::invalid("address", format!("{declared:?} is not an IPv4 address"))
            })?;
            if !policy.declarable().iter().any(|net| net.contains(&address)) {
                return Err(Error::invalid(
                    "address",
                    format!(
                        "{address} is not in the networks this site lets requesters declare ({})",
                        if policy.declared_networks.is_empty() {
                            "none"
                        } else {
                            &policy.declared_networks
                        }
                    ),
                ));
            }
            (address.to_string(), true)
        }
    };
    if requester_addr.parse::<Ipv4Addr>().is_err() {
        return Err(Error::invalid(
            "address",
            format!(
                "the portal sees you at {requester_addr}, which is not IPv4; declare your IPv4 address"
            ),
        ));
    }
    let reason = new.reason.trim();
    check_grantable(
        &mut conn,
        config,
        &policy,
        &machine,
        &requester_addr,
        agent,
        minutes * 60,
        reason,
        now,
    )?;
    let approvers: Vec<User> = approvers(&mut conn, site.id)?
        .into_iter()
        .filter(|u| u.id != requester.id)
        .collect();
    if policy.approval_required && approvers.is_empty() {
        return Err(Error::invalid(
            "site",
            format!(
                "nobody can approve requests for {} yet; an administrator names an approver first",
                site.name
            ),
        ));
    }
    drop(conn);
    let actor = Actor::User(requester.id);
    let created = audit.record_with(|conn| {
        let request = on_backend!(conn, c => diesel::insert_into(access_requests::table)
            .values((
                access_requests::organisation_id.eq(site.organisation_id),
                access_requests::site_id.eq(site.id),
                access_requests::machine_id.eq(machine.id),
                access_requests::agent.eq(agent),
                access_requests::requester_id.eq(requester.id),
                access_requests::requester_addr.eq(&requester_addr),
                access_requests::address_declared.eq(declared),
                access_requests::requested_seconds.eq(minutes * 60),
                access_requests::reason.eq(reason),
                access_requests::state.eq(State::Pending.as_str()),
                access_requests::created_at_us.eq(now),
                access_requests::pending_until_us.eq(now + i64::from(config.access.pending_hours) * 3600 * MICROS),
            ))
            .returning(AccessRequest::as_returning())
            .get_result(c))?;
        let mut events = vec![
            AuditEvent::new(actor.clone(), "access.requested")
                .source(source)
                .target(request.target())
                .details(serde_json::json!({
                    "site": site.id, "machine": machine.name, "device": machine.address,
                    "agent": agent, "requester_addr": requester_addr, "declared": declared,
                    "minutes": minutes, "reason": reason,
                })),
        ];
        if policy.approval_required {
            let subject = format!(
                "[Plantgate] Remote access request: {} at {}",
                machine.name, site.name
            );
            let body = format!(
                "{} <{}> asks for remote access to {} ({}) at {}.\n\n\
                 Agent: {agent}\nFor: {}\nFrom address: {requester_addr}{}\nReason: {reason}\n\n\
                 Decide in the portal (you sign in first; this email cannot approve anything):\n{}\n\n\
                 If nobody decides, the request expires at {}.\n",
                requester.name,
                requester.email,
                machine.name,
                machine.address,
                site.name,
                minutes_text(minutes * 60),
                if declared { " (declared)" } else { "" },
                request_url(config, request.id),
                format_us(request.pending_until_us),
            );
            for approver in &approvers {
                mail::enqueue(conn, &approver.email, &subject, &body, &request.target(), now)?;
            }
            events.push(
                AuditEvent::new(actor.clone(), "access.notified")
                    .source(source)
                    .target(request.target())
                    .details(serde_json::json!({
                        "approvers": approvers.iter().map(|a| &a.email).collect::<Vec<_>>(),
                    })),
            );
            Ok((request, events))
        } else {
            let system = Actor::System("access-policy".into());
            let (request, more) =
                approve_in(conn, config, &system, None, &request, None, source, now)?;
            events.extend(more);
            Ok((request, events))
        }
    })?;
    Ok(created)
}

/// An approver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Approve, for at most the minutes asked for (empty: as asked).
    Approve {
        minutes: String,
    },
    Deny {
        reason: String,
    },
}

/// Approves inside the caller's transaction: stores the grant, marks the request approved
/// if it is still pending, and tells the requester. `approver` is `None` for the policy.
#[allow(clippy::too_many_arguments)]
fn approve_in(
    conn: &mut DbConnection,
    config: &Config,
    actor: &Actor,
    approver: Option<&User>,
    request: &AccessRequest,
    seconds: Option<i64>,
    source: &str,
    now: i64,
) -> Result<(AccessRequest, Vec<AuditEvent>)> {
    let cx = context(conn, request)?;
    if !account_active(conn, request.requester_id, now)? {
        return Err(Error::Conflict(format!(
            "{}'s account is disabled or has ended; the request cannot be approved",
            cx.requester.name
        )));
    }
    let policy = SitePolicy::of(conn, request.site_id)?;
    let seconds = seconds.unwrap_or(request.requested_seconds);
    let valid = check_grantable(
        conn,
        config,
        &policy,
        &cx.machine,
        &request.requester_addr,
        &request.agent,
        seconds,
        &format!("access request {}: {}", request.id, request.reason),
        now,
    )?;
    let (grant, grant_event) = Grant::insert(conn, actor, &valid, now)?;
    let updated = diesel::update(
        access_requests::table
            .find(request.id)
            .filter(access_requests::state.eq(State::Pending.as_str())),
    )
    .set((
        access_requests::state.eq(State::Approved.as_str()),
        access_requests::decided_by.eq(approver.map(|a| a.id)),
        access_requests::decided_at_us.eq(now),
        access_requests::approved_seconds.eq(seconds),
        access_requests::grant_id.eq(grant.id),
    ))
    .execute(conn)?;
    if updated != 1 {
        return Err(already_decided(conn, request.id));
    }
    let approved = AccessRequest::find(conn, request.id)?;
    let connect_to = format!(
        "{} ({}), {}",
        cx.machine.address, cx.agent.ports, cx.agent.label
    );
    mail::enqueue(
        conn,
        &cx.requester.email,
        &format!(
            "[Plantgate] Remote access approved: {} at {}",
            cx.machine.name, cx.site.name
        ),
        &format!(
            "Your request for {} at {} was approved{} for {}.\n\n\
             Connect from {} to {connect_to}.\nAccess ends at {} unless it is ended sooner.\n\n{}\n",
            cx.machine.name,
            cx.site.name,
            approver
                .map(|a| format!(" by {}", a.name))
                .unwrap_or_default(),
            minutes_text(seconds),
            request.requester_addr,
            format_us(grant.expires_at_us),
            request_url(config, request.id),
        ),
        &request.target(),
        now,
    )?;
    let event = AuditEvent::new(actor.clone(), "access.approved")
        .source(source)
        .target(request.target())
        .details(serde_json::json!({
            "grant": grant.id,
            "minutes": seconds / 60,
            "requested_minutes": request.requested_seconds / 60,
            "requester": cx.requester.email,
            "expires": format_us(grant.expires_at_us),
            "by_policy": approver.is_none(),
        }));
    Ok((approved, vec![grant_event, event]))
}

/// Moves a request from `from` to a final state `to`, recording when, why and by whom.
/// The update is conditional on `from`, so a request that changed meanwhile is refused with
/// the state it is in, and nothing is written.
fn finish(
    conn: &mut DbConnection,
    request: &AccessRequest,
    from: State,
    to: State,
    why: &str,
    by: &Actor,
    now: i64,
) -> Result<()> {
    let updated = diesel::update(
        access_requests::table
            .find(request.id)
            .filter(access_requests::state.eq(from.as_str())),
    )
    .set((
        access_requests::state.eq(to.as_str()),
        access_requests::ended_at_us.eq(now),
        access_requests::end_reason.eq(why),
        access_requests::ended_by.eq(by.to_string()),
    ))
    .execute(conn)?;
    if updated == 1 {
        Ok(())
    } else {
        Err(already_decided(conn, request.id))
    }
}

fn already_decided(conn: &mut DbConnection, id: i64) -> Error {
    match AccessRequest::find(conn, id) {
        Ok(current) => Error::Conflict(format!(
            "request {id} is already {}; nothing was changed",
            current.state
        )),
        Err(err) => err,
    }
}

/// An approver decides on a pending request. The approver must be named for the request's
/// site (anyone else gets "not found") and must not be its requester.
pub fn decide(
    audit: &Audit,
    config: &Config,
    approver: &User,
    id: i64,
    decision: &Decision,
    source: &str,
    now: i64,
) -> Result<AccessRequest> {
    let actor = Actor::User(approver.id);
    let attempt = audit.record_with(|conn| {
        let request = visible_request(conn, approver, id)?;
        if !is_approver(conn, approver, request.site_id)? && request.requester_id != approver.id {
            return Err(Error::Forbidden(
                "only the site's named approvers decide on its requests".into(),
            ));
        }
        if request.requester_id == approver.id {
            return Err(Error::Forbidden(
                "nobody approves their own request; another approver of the site must decide"
                    .into(),
            ));
        }
        if request.state()? != State::Pending {
            return Err(already_decided(conn, id));
        }
        if request.pending_until_us <= now {
            return Err(Error::Conflict(format!(
                "request {id} expired at {}; nothing was changed",
                format_us(request.pending_until_us)
            )));
        }
        match decision {
            Decision::Approve { minutes } => {
                let seconds = match minutes.trim() {
                    "" => None,
                    raw => Some(
                        raw.parse::<i64>()
                            .ok()
                            .filter(|m| (1..=request.requested_seconds / 60).contains(m))
                            .ok_or_else(|| {
                                Error::invalid(
                                    "duration",
                                    format!(
                                        "{raw:?}: approve for 1 to {} minutes, at most what was asked",
                                        request.requested_seconds / 60
                                    ),
                                )
                            })?
                            * 60,
                    ),
                };
                approve_in(conn, config, &actor, Some(approver), &request, seconds, source, now)
            }
            Decision::Deny { reason } => {
                let reason = reason.trim();
                if reason.is_empty() || reason.chars().count() > 500 {
                    return Err(Error::invalid(
                        "reason",
                        "say why the request is denied (1-500 characters)",
                    ));
                }
                let updated = diesel::update(
                    access_requests::table
                        .find(id)
                        .filter(access_requests::state.eq(State::Pending.as_str())),
                )
                .set((
                    access_requests::state.eq(State::Denied.as_str()),
                    access_requests::decided_by.eq(approver.id),
                    access_requests::decided_at_us.eq(now),
                    access_requests::decision_reason.eq(reason),
                ))
                .execute(conn)?;
                if updated != 1 {
                    return Err(already_decided(conn, id));
                }
                let cx = context(conn, &request)?;
                mail::enqueue(
                    conn,
                    &cx.requester.email,
                    &format!(
                        "[Plantgate] Remote access denied: {} at {}",
                        cx.machine.name, cx.site.name
                    ),
                    &format!(
                        "Your request for {} at {} was denied by {}.\n\nReason: {reason}\n\n{}\n",
                        cx.machine.name,
                        cx.site.name,
                        approver.name,
                        request_url(config, id)
                    ),
                    &request.target(),
                    now,
                )?;
                let event = AuditEvent::new(actor.clone(), "access.denied")
                    .source(source)
                    .target(request.target())
                    .details(serde_json::json!({ "reason": reason, "requester": cx.requester.email }));
                Ok((AccessRequest::find(conn, id)?, vec![event]))
            }
        }
    });
    if let Err(Error::Forbidden(why)) = &attempt {
        // A refused self-approval is itself worth a record.
        audit.record(
            AuditEvent::new(actor, "access.decision.refused")
                .source(source)
                .target(format!("access_request:{id}"))
                .outcome(Outcome::Denied)
                .details(serde_json::json!({ "why": why })),
        )?;
    }
    attempt
}

/// Ends a request: its requester cancels it while pending or ends the session; an approver
/// of the site or an administrator revokes it. Everyone else gets "not found".
pub fn end(
    audit: &Audit,
    config: &Config,
    user: &User,
    id: i64,
    reason: &str,
    source: &str,
    now: i64,
) -> Result<AccessRequest> {
    let actor = Actor::User(user.id);
    audit.record_with(|conn| {
        let request = visible_request(conn, user, id)?;
        let own = request.requester_id == user.id;
        let may_revoke = user.role()? == Role::Admin || is_approver(conn, user, request.site_id)?;
        let state = request.state()?;
        match state {
            State::Pending if own => {
                finish(
                    conn,
                    &request,
                    State::Pending,
                    State::Cancelled,
                    "cancelled by the requester",
                    &actor,
                    now,
                )?;
                let event = AuditEvent::new(actor.clone(), "access.cancelled")
                    .source(source)
                    .target(request.target());
                Ok((AccessRequest::find(conn, id)?, vec![event]))
            }
            State::Approved if own || may_revoke => {
                let (why, action) = if own {
                    ("ended by the technician".to_owned(), "access.ended")
                } else {
                    let reason = reason.trim();
                    (
                        if reason.is_empty() {
                            format!("revoked by {}", user.name)
                        } else {
                            format!("revoked by {}: {reason}", user.name)
                        },
                        "access.revoked",
                    )
                };
                let events = close_in(conn, config, &actor, &request, &why, action, source, now)?;
                Ok((AccessRequest::find(conn, id)?, events))
            }
            State::Pending | State::Approved => Err(Error::Forbidden(
                "only the requester or the site's approvers can end this".into(),
            )),
            _ => Err(Error::Conflict(format!(
                "request {id} is already {}; nothing was changed",
                request.state
            ))),
        }
    })
}

/// Ends an approved request's session inside the caller's transaction: revokes its grant
/// (if still live), marks it ended, tells the requester. Returns the audit events.
#[allow(clippy::too_many_arguments)]
fn close_in(
    conn: &mut DbConnection,
    config: &Config,
    actor: &Actor,
    request: &AccessRequest,
    why: &str,
    action: &str,
    source: &str,
    now: i64,
) -> Result<Vec<AuditEvent>> {
    let mut events = Vec::new();
    if let Some(grant) = request.grant_id
        && let Ok((_, event)) = Grant::revoke_in(conn, actor, grant, why)
    {
        events.push(event);
    }
    finish(
        conn,
        request,
        State::Approved,
        State::Ended,
        why,
        actor,
        now,
    )?;
    let cx = context(conn, request)?;
    mail::enqueue(
        conn,
        &cx.requester.email,
        &format!(
            "[Plantgate] Remote access ended: {} at {}",
            cx.machine.name, cx.site.name
        ),
        &format!(
            "Your remote session to {} at {} has ended: {why}.\n\n{}\n",
            cx.machine.name,
            cx.site.name,
            request_url(config, request.id)
        ),
        &request.target(),
        now,
    )?;
    events.push(
        AuditEvent::new(actor.clone(), action)
            .source(source)
            .target(request.target())
            .details(serde_json::json!({ "why": why, "grant": request.grant_id })),
    );
    Ok(events)
}

/// The technician adds `minutes` to their own live session, where the site's policy lets
/// requesters extend; the whole session stays within the site's longest session.
#[allow(clippy::too_many_arguments)]
pub fn extend(
    audit: &Audit,
    user: &User,
    id: i64,
    minutes: &str,
    source: &str,
    now: i64,
) -> Result<AccessRequest> {
    let actor = Actor::User(user.id);
    audit.record_with(|conn| {
        let request = visible_request(conn, user, id)?;
        if request.requester_id != user.id {
            return Err(Error::Forbidden(
                "only the technician who asked can extend a session".into(),
            ));
        }
        if request.state()? != State::Approved {
            return Err(Error::Conflict(format!(
                "request {id} is {}, not a live session",
                request.state
            )));
        }
        let policy = SitePolicy::of(conn, request.site_id)?;
        if !policy.requester_may_extend {
            return Err(Error::Forbidden(
                "this site does not let technicians extend sessions; ask again".into(),
            ));
        }
        if !policy.remote_enabled {
            return Err(Error::Conflict(
                "remote access is switched off at this site (key switch)".into(),
            ));
        }
        policy.check_hours(now)?;
        let grant_id = request
            .grant_id
            .ok_or_else(|| Error::Conflict(format!("request {id} has no grant")))?;
        let grant = Grant::find(conn, grant_id)?;
        let started = request.decided_at_us.unwrap_or(grant.created_at_us);
        let ceiling = started + i64::from(policy.max_minutes) * 60 * MICROS;
        let room = (ceiling - grant.expires_at_us).max(0) / (60 * MICROS);
        let added: i64 = minutes
            .trim()
            .parse()
            .ok()
            .filter(|m| (1..=room).contains(m))
            .ok_or_else(|| {
                Error::invalid(
                    "duration",
                    format!(
                        "{minutes:?}: sessions at this site last at most {} minutes; up to {room} can be added",
                        policy.max_minutes
                    ),
                )
            })?;
        let expires = grant.expires_at_us + added * 60 * MICROS;
        let (_, grant_event) = Grant::extend_in(conn, &actor, grant_id, expires)?;
        diesel::update(access_requests::table.find(id))
            .set(access_requests::approved_seconds.eq(
                request.approved_seconds.unwrap_or(0) + added * 60,
            ))
            .execute(conn)?;
        let event = AuditEvent::new(actor.clone(), "access.extended")
            .source(source)
            .target(request.target())
            .details(serde_json::json!({ "minutes": added, "until": format_us(expires) }));
        Ok((AccessRequest::find(conn, id)?, vec![grant_event, event]))
    })
}

/// Turns a site's "remote access enabled" key switch on or off. Off cuts every session of
/// the site at once and refuses approvals until it is on again. `by` is the approver who
/// turned it, or `None` for the hardware switch. Returns how many sessions were cut.
pub fn set_key_switch(
    audit: &Audit,
    config: &Config,
    by: Option<&User>,
    site: &Site,
    on: bool,
    source: &str,
    now: i64,
) -> Result<usize> {
    let actor = by.map_or_else(|| Actor::System("key-switch".into()), |u| Actor::User(u.id));
    audit.record_with(|conn| {
        if let Some(user) = by
            && !is_approver(conn, user, site.id)?
        {
            return Err(Error::Forbidden(
                "only the site's approvers can turn its key switch".into(),
            ));
        }
        let mut policy = SitePolicy::of(conn, site.id)?;
        if policy.remote_enabled == on {
            return Ok((0, Vec::new()));
        }
        policy.remote_enabled = on;
        policy.updated_at_us = now;
        policy.save(conn)?;
        let mut events = Vec::new();
        let mut cut = 0;
        if !on {
            for request in in_state(conn, Some(site.id), State::Approved)? {
                events.extend(close_in(
                    conn,
                    config,
                    &actor,
                    &request,
                    "remote access switched off at the site",
                    "access.revoked",
                    source,
                    now,
                )?);
                cut += 1;
            }
        }
        let action = if on {
            "access.key_switch.on"
        } else {
            "access.key_switch.off"
        };
        events.insert(
            0,
            AuditEvent::new(actor.clone(), action)
                .source(source)
                .target(site.id)
                .details(serde_json::json!({ "sessions_cut": cut })),
        );
        Ok((cut, events))
    })
}

fn in_state(
    conn: &mut DbConnection,
    site: Option<SiteId>,
    state: State,
) -> Result<Vec<AccessRequest>> {
    let mut query = access_requests::table
        .filter(access_requests::state.eq(state.as_str()))
        .order(access_requests::id)
        .select(AccessRequest::as_select())
        .into_boxed();
    if let Some(site) = site {
        query = query.filter(access_requests::site_id.eq(site));
    }
    Ok(query.load(conn)?)
}

/// What a tick changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub expired: usize,
    pub ended: usize,
}

/// The periodic sweep: pending requests past their time expire; approved sessions whose
/// grant ended (expiry, or a revoke outside this module) end; sessions of accounts that
/// expired, were disabled or whose organisation was disabled are revoked.
pub fn tick(audit: &Audit, config: &Config, now: i64) -> Result<TickReport> {
    let actor = Actor::System("access".into());
    audit.record_with(|conn| {
        let mut report = TickReport::default();
        let mut events = Vec::new();
        for request in in_state(conn, None, State::Pending)? {
            if request.pending_until_us > now {
                continue;
            }
            finish(
                conn,
                &request,
                State::Pending,
                State::Expired,
                "nobody decided in time",
                &actor,
                now,
            )?;
            let cx = context(conn, &request)?;
            mail::enqueue(
                conn,
                &cx.requester.email,
                &format!(
                    "[Plantgate] Remote access request expired: {} at {}",
                    cx.machine.name, cx.site.name
                ),
                &format!(
                    "Nobody decided on your request for {} at {} in time; ask again if you still need access.\n",
                    cx.machine.name, cx.site.name
                ),
                &request.target(),
                now,
            )?;
            events.push(
                AuditEvent::new(actor.clone(), "access.expired")
                    .target(request.target())
                    .details(serde_json::json!({ "pending_until": format_us(request.pending_until_us) })),
            );
            report.expired += 1;
        }
        for request in in_state(conn, None, State::Approved)? {
            let grant = match request.grant_id {
                Some(id) => Some(Grant::find(conn, id)?),
                None => None,
            };
            let grant_over = grant.as_ref().is_none_or(|g| {
                g.expires_at_us <= now || g.revoked_at_us.is_some() || g.closed_at_us.is_some()
            });
            let account_over = !account_active(conn, request.requester_id, now)?;
            if grant_over {
                let why = match &grant {
                    Some(g) if g.revoked_at_us.is_some() => "the firewall grant was revoked",
                    _ => "the approved time ran out",
                };
                finish(conn, &request, State::Approved, State::Ended, why, &actor, now)?;
                events.push(
                    AuditEvent::new(actor.clone(), "access.ended")
                        .target(request.target())
                        .details(serde_json::json!({ "why": why, "grant": request.grant_id })),
                );
                report.ended += 1;
            } else if account_over {
                events.extend(close_in(
                    conn,
                    config,
                    &actor,
                    &request,
                    "the technician's account ended",
                    "access.revoked",
                    "appliance",
                    now,
                )?);
                report.ended += 1;
            }
        }
        Ok((report, events))
    })
}

/// One row of the activity views and exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestView {
    #[serde(flatten)]
    pub request: AccessRequest,
    pub site: String,
    pub machine: String,
    pub device_addr: String,
    pub requester: String,
    pub requester_email: String,
    pub decided_by_name: Option<String>,
    pub expires_at_us: Option<i64>,
    pub connected_at_us: Option<i64>,
    pub ports: Option<String>,
}

/// A request `user` may see, or "not found": their own, their sites' as an approver, and
/// their organisation's as an administrator.
fn visible_request(conn: &mut DbConnection, user: &User, id: i64) -> Result<AccessRequest> {
    let request = AccessRequest::find(conn, id)?;
    if may_see(conn, user, &request)? {
        Ok(request)
    } else {
        Err(Error::NotFound("access request"))
    }
}

fn may_see(conn: &mut DbConnection, user: &User, request: &AccessRequest) -> Result<bool> {
    if request.organisation_id != user.organisation_id {
        return Ok(false);
    }
    Ok(request.requester_id == user.id
        || user.role()? == Role::Admin
        || is_approver(conn, user, request.site_id)?)
}

/// Which requests a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Pending and approved.
    Open,
    /// Everything, newest first.
    All,
}

/// The requests `user` may see, newest first, with names joined in.
pub fn visible(
    conn: &mut DbConnection,
    user: &User,
    show: Show,
    limit: i64,
) -> Result<Vec<RequestView>> {
    let mut query = access_requests::table
        .filter(access_requests::organisation_id.eq(user.organisation_id))
        .order(access_requests::id.desc())
        .select(AccessRequest::as_select())
        .into_boxed();
    if show == Show::Open {
        query = query.filter(
            access_requests::state.eq_any([State::Pending.as_str(), State::Approved.as_str()]),
        );
    }
    let role = user.role()?;
    if role != Role::Admin {
        let sites: Vec<i64> = if role == Role::Approver {
            site_approvers::table
                .filter(site_approvers::user_id.eq(user.id))
                .select(site_approvers::site_id)
                .load(conn)?
        } else {
            Vec::new()
        };
        query = query.filter(
            access_requests::requester_id
                .eq(user.id)
                .or(access_requests::site_id.eq_any(sites)),
        );
    }
    let requests = query.limit(limit).load(conn)?;
    requests.into_iter().map(|r| view(conn, r)).collect()
}

/// One request `user` may see, or "not found".
pub fn find_visible(conn: &mut DbConnection, user: &User, id: i64) -> Result<RequestView> {
    let request = visible_request(conn, user, id)?;
    view(conn, request)
}

fn view(conn: &mut DbConnection, request: AccessRequest) -> Result<RequestView> {
    let cx = context(conn, &request)?;
    let decided_by_name = match request.decided_by {
        Some(id) => users::table
            .find(id)
            .select(users::name)
            .first(conn)
            .optional()?,
        None => None,
    };
    let grant = match request.grant_id {
        Some(id) => Some(Grant::find(conn, id)?),
        None => None,
    };
    Ok(RequestView {
        site: cx.site.name,
        machine: cx.machine.name,
        device_addr: cx.machine.address,
        requester: cx.requester.name,
        requester_email: cx.requester.email,
        decided_by_name,
        expires_at_us: grant.as_ref().map(|g| g.expires_at_us),
        connected_at_us: grant.as_ref().and_then(|g| g.applied_at_us),
        ports: Some(cx.agent.ports.to_string()),
        request,
    })
}

/// "Remote access active" banners for `user`: one line per session approved now at the
/// sites they can see.
pub fn banners(conn: &mut DbConnection, user: &User) -> Result<Vec<String>> {
    let only = user_site(conn, user.id)?;
    let mut query = access_requests::table
        .inner_join(machines::table)
        .inner_join(sites::table)
        .inner_join(users::table)
        .filter(access_requests::organisation_id.eq(user.organisation_id))
        .filter(access_requests::state.eq(State::Approved.as_str()))
        .order(access_requests::id)
        .select((
            sites::name,
            machines::name,
            users::name,
            access_requests::grant_id,
        ))
        .into_boxed();
    if let Some(only) = only {
        query = query.filter(access_requests::site_id.eq(only));
    }
    let rows: Vec<(String, String, String, Option<i64>)> = query.load(conn)?;
    rows.into_iter()
        .map(|(site, machine, technician, grant)| {
            let until = match grant {
                Some(id) => format!(
                    " until {}",
                    short_time(Grant::find(conn, id)?.expires_at_us)
                ),
                None => String::new(),
            };
            Ok(format!(
                "Remote access active at {site}: {technician} on {machine}{until}"
            ))
        })
        .collect()
}

/// `2026-11-22 14:05 UTC`, as pages show times.
pub fn short_time(us: i64) -> String {
    chrono::DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// Writes the requests `user` may see, oldest first, as JSONL or CSV (cells a spreadsheet
/// would run as formulas are neutralised).
pub fn export(
    conn: &mut DbConnection,
    user: &User,
    format: crate::audit::export::ExportFormat,
    out: &mut dyn std::io::Write,
) -> Result<usize> {
    use crate::audit::export::ExportFormat;
    let mut rows = visible(conn, user, Show::All, i64::MAX)?;
    rows.reverse();
    let fail = |err: std::io::Error| Error::invalid("export", err.to_string());
    match format {
        ExportFormat::Jsonl => {
            for row in &rows {
                serde_json::to_writer(&mut *out, row)
                    .map_err(|err| Error::invalid("export", err.to_string()))?;
                out.write_all(b"\n").map_err(fail)?;
            }
        }
        ExportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record([
                "id",
                "state",
                "site",
                "machine",
                "device_addr",
                "agent",
                "ports",
                "requester",
                "requester_email",
                "requester_addr",
                "address_declared",
                "reason",
                "requested_minutes",
                "created_at",
                "decided_by",
                "decided_at",
                "decision_reason",
                "approved_minutes",
                "connected_at",
                "expires_at",
                "ended_at",
                "end_reason",
            ])
            .map_err(|err| Error::invalid("export", err.to_string()))?;
            let time = |us: Option<i64>| us.map(format_us).unwrap_or_default();
            for row in &rows {
                let r = &row.request;
                let cells = [
                    r.id.to_string(),
                    r.state.clone(),
                    row.site.clone(),
                    row.machine.clone(),
                    row.device_addr.clone(),
                    r.agent.clone(),
                    row.ports.clone().unwrap_or_default(),
                    row.requester.clone(),
                    row.requester_email.clone(),
                    r.requester_addr.clone(),
                    r.address_declared.to_string(),
                    r.reason.clone(),
                    (r.requested_seconds / 60).to_string(),
                    format_us(r.created_at_us),
                    row.decided_by_name.clone().unwrap_or_default(),
                    time(r.decided_at_us),
                    r.decision_reason.clone().unwrap_or_default(),
                    r.approved_seconds
                        .map(|s| (s / 60).to_string())
                        .unwrap_or_default(),
                    time(row.connected_at_us),
                    time(row.expires_at_us),
                    time(r.ended_at_us),
                    r.end_reason.clone().unwrap_or_default(),
                ];
                csv.write_record(
                    cells
                        .iter()
                        .map(|c| crate::audit::export::neutralise_formula(c).into_owned()),
                )
                .map_err(|err| Error::invalid("export", err.to_string()))?;
            }
            csv.flush().map_err(fail)?;
        }
    }
    Ok(rows.len())
}

/// Sites with a session approved now: the "remote access active" signal, by site.
pub fn active_sites(conn: &mut DbConnection) -> Result<Vec<(Site, bool)>> {
    let active: Vec<i64> = access_requests::table
        .filter(access_requests::state.eq(State::Approved.as_str()))
        .select(access_requests::site_id)
        .distinct()
        .load(conn)?;
    let all: Vec<Site> = sites::table
        .order(sites::id)
        .select(Site::as_select())
        .load(conn)?;
    Ok(all
        .into_iter()
        .map(|site| {
            let on = active.contains(&site.id.0);
            (site, on)
        })
        .collect())
}

/// Records that a site's signal was driven to `on` (`access.signal.on|off`), or that
/// driving it failed.
pub fn record_signal(
    audit: &Audit,
    site: &Site,
    on: bool,
    outcome: std::result::Result<(), String>,
    now: i64,
) -> Result<()> {
    let actor = Actor::System("signal".into());
    audit.record_with(|conn| {
        let action = if on {
            "access.signal.on"
        } else {
            "access.signal.off"
        };
        let event = AuditEvent::new(actor.clone(), action).target(site.id);
        match outcome {
            Ok(()) => {
                let mut policy = SitePolicy::of(conn, site.id)?;
                policy.signal_on = on;
                policy.updated_at_us = now;
                policy.save(conn)?;
                Ok(((), vec![event]))
            }
            Err(why) => Ok((
                (),
                vec![
                    event
                        .outcome(Outcome::Failure)
                        .details(serde_json::json!({ "error": why })),
                ],
            )),
        }
    })
}

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
        let token_event = crate::accounts::invite_in(
            conn,
            &actor,
            config,
            &user,
            &format!("[Plantgate] You are invited to {}", site.name),
            &format!(
                "{} invites you to request remote access to machines at {}.",
                inviter.name, site.name
            ),
            &format!(
                "At first sign-in you set up an authenticator app. Your account ends at {}.",
                format_us(expires)
            ),
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

/// A contractor sets the first password through the invitation link; the token is spent in
/// the same transaction. Audited as `user.invitation.accepted`.
pub fn accept_invitation(
    audit: &Audit,
    policy: crate::accounts::PasswordPolicy,
    user: UserId,
    token: &str,
    password: &str,
    source: &str,
    now: i64,
) -> Result<User> {
    let account: User = users::table
        .find(user)
        .select(User::as_select())
        .first(&mut *audit.store().conn()?)
        .optional()?
        .ok_or_else(|| {
            Error::invalid(
                "token",
                "this invitation is not valid (used, replaced or expired)",
            )
        })?;
    policy.check(password, &account.email)?;
    let hash = crate::accounts::hash_password(password)?;
    audit.record_with(|conn| {
        crate::enrolment::redeem(conn, &invitation_purpose(user), token)?;
        diesel::update(users::table.find(user))
            .set((
                users::password_hash.eq(&hash),
                users::password_changed_at_us.eq(now),
            ))
            .execute(conn)?;
        let event = AuditEvent::new(Actor::User(user), "user.invitation.accepted")
            .source(source)
            .target(user);
        Ok((account.clone(), vec![event]))
    })
}

/// The enrolment-token purpose of a contractor's invitation.
pub fn invitation_purpose(user: UserId) -> String {
    format!("invitation:{}", user.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_windows_parse_and_wrap_midnight() {
        let day = HourWindow::parse("06:00-18:00").expect("valid");
        let t = |s| NaiveTime::parse_from_str(s, "%H:%M").expect("time");
        assert!(day.contains(t("06:00")) && day.contains(t("17:59")));
        assert!(!day.contains(t("18:00")) && !day.contains(t("05:59")));
        let night = HourWindow::parse("22:00-06:00").expect("valid");
        assert!(night.contains(t("23:00")) && night.contains(t("05:00")));
        assert!(!night.contains(t("12:00")));
        for bad in ["", "6-18", "06:00", "25:00-26:00", "06:00-06:00"] {
            assert!(HourWindow::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
