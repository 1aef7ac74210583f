//! A site's access policy: whether requests need approval, the longest session, the hours
//! and time zone, which device addresses machines may have and which addresses requesters
//! may declare, and the key switch's and signal's last state.

use std::fmt;
use std::net::Ipv4Addr;

use chrono::{NaiveTime, TimeZone, Utc};
use diesel::prelude::*;
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::SiteId;
use crate::models::Site;
use crate::schema::site_policies;
use crate::store::DbConnection;

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

    pub(super) fn save(&self, conn: &mut DbConnection) -> Result<()> {
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

    /// Validates and stores a new policy for `site` as of `now`, audited as
    /// `site.policy.changed`.
    pub fn set(
        audit: &Audit,
        actor: &Actor,
        config: &Config,
        site: &Site,
        change: &PolicyChange,
        now: i64,
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
                updated_at_us: now,
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
