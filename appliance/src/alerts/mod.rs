//! Alert rules and alerts: raised and cleared from readings and silence, never twice at once.
//!
//! Rules are managed in [`rules`] (created, changed, disabled, removed: each audited, and
//! each change that leaves an alert without its condition clears it). Deciding is read-only
//! ([`decide_for_readings`], [`decide_silent`]); applying ([`apply`]) re-checks inside the
//! audited transaction, so concurrent deciders cannot raise the same alert twice: the
//! partial unique index `alerts_one_active` allows one active alert per (rule, device). The
//! same transaction queues what tells of each change: a delivery for the site's data
//! connectors and an email to each of the rule's recipients ([`crate::mail`], sent by the
//! portal's mailer like every other email). [`replay`] answers what a rule would have
//! raised over past readings, without changing anything.

use std::fmt;
use std::str::FromStr;

use diesel::prelude::*;
use serde::Serialize;

use crate::devices::{Device, DeviceKind};
use crate::error::{Error, Result};
use crate::ids::{AlertId, AlertRuleId, DeviceId, SiteId};
use crate::schema::{alert_rules, alerts};
use crate::store::DbConnection;

mod decide;
pub mod replay;
pub mod rules;

pub(crate) use decide::clear_active_of_rule;
pub use decide::{AlertChange, apply, decide_for_readings, decide_silent};
pub use rules::RuleRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// `consecutive` readings in a row above `threshold`; clears below threshold - hysteresis.
    Above,
    /// `consecutive` readings in a row below `threshold`; clears above threshold + hysteresis.
    Below,
    /// No reading for `silent_seconds`; clears with the next reading.
    Silent,
    /// A device-reported event (shock, tamper): a non-zero value raises, zero clears.
    Event,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Above => "above",
            AlertKind::Below => "below",
            AlertKind::Silent => "silent",
            AlertKind::Event => "event",
        }
    }
}

/// What a threshold rule compares: the reading itself, or its rate of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    Value,
    /// Change per minute between a reading and the one before it (by measured time).
    Rate,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Value => "value",
            Measure::Rate => "rate",
        }
    }
}

impl FromStr for Measure {
    type Err = Error;
    fn from_str(s: &str) -> Result<Measure> {
        match s {
            "value" => Ok(Measure::Value),
            "rate" => Ok(Measure::Rate),
            other => Err(Error::invalid(
                "measure",
                format!("{other:?} is not a measure; allowed: value, rate"),
            )),
        }
    }
}

/// The longest "for X" a rule may ask for.
pub const MAX_FOR_SECONDS: i64 = 24 * 3600;

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlertKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<AlertKind> {
        match s {
            "above" => Ok(AlertKind::Above),
            "below" => Ok(AlertKind::Below),
            "silent" => Ok(AlertKind::Silent),
            "event" => Ok(AlertKind::Event),
            other => Err(Error::invalid(
                "kind",
                format!("{other:?} is not an alert kind; allowed: above, below, silent, event"),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = alert_rules)]
pub struct AlertRule {
    pub id: AlertRuleId,
    pub site_id: Option<SiteId>,
    pub device_id: Option<DeviceId>,
    pub name: String,
    pub kind: String,
    pub metric: String,
    pub threshold: f64,
    pub hysteresis: f64,
    pub consecutive: i32,
    pub silent_seconds: i64,
    pub notify_email: String,
    pub created_at_us: i64,
    pub measure: String,
    pub for_seconds: i64,
    /// With `site_id`: only the site's devices of this kind.
    pub device_kind: Option<String>,
    /// A disabled rule raises nothing until it is enabled again.
    pub disabled_at_us: Option<i64>,
    /// A removed rule is kept for the history of the alerts it raised, and does nothing.
    pub removed_at_us: Option<i64>,
}

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleScope {
    Site(SiteId),
    /// The devices of one kind at a site.
    SiteKind(SiteId, DeviceKind),
    Device(DeviceId),
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, Serialize)]
#[diesel(table_name = alerts)]
pub struct Alert {
    pub id: AlertId,
    pub rule_id: AlertRuleId,
    pub device_id: DeviceId,
    pub raised_at_us: i64,
    pub raised_value: Option<f64>,
    pub cleared_at_us: Option<i64>,
    pub cleared_value: Option<f64>,
}

impl AlertRule {
    pub fn kind(&self) -> Result<AlertKind> {
        self.kind.parse()
    }

    pub fn measure(&self) -> Result<Measure> {
        self.measure.parse()
    }

    pub fn scope(&self) -> Result<RuleScope> {
        match (self.device_id, self.site_id, &self.device_kind) {
            (Some(device), _, _) => Ok(RuleScope::Device(device)),
            (None, Some(site), None) => Ok(RuleScope::Site(site)),
            (None, Some(site), Some(kind)) => Ok(RuleScope::SiteKind(site, kind.parse()?)),
            // The table's CHECK forbids it; said plainly should a store be damaged.
            (None, None, _) => Err(Error::Conflict(format!(
                "alert rule {} has neither a site nor a device",
                self.id
            ))),
        }
    }

    /// Whether the rule covers `device` (whatever its state: enabled or not).
    pub fn covers(&self, device: &Device) -> bool {
        match (self.device_id, self.site_id) {
            (Some(id), _) => id == device.id,
            (None, Some(site)) => {
                site == device.site_id
                    && self.device_kind.as_ref().is_none_or(|k| *k == device.kind)
            }
            (None, None) => false,
        }
    }

    /// Whether the rule raises and clears alerts: neither disabled nor removed.
    pub fn is_live(&self) -> bool {
        self.disabled_at_us.is_none() && self.removed_at_us.is_none()
    }

    /// The rule's settings, as a request to create or change one takes them.
    pub fn request(&self) -> Result<RuleRequest> {
        Ok(RuleRequest {
            scope: self.scope()?,
            name: self.name.clone(),
            kind: self.kind()?,
            metric: self.metric.clone(),
            threshold: self.threshold,
            hysteresis: self.hysteresis,
            consecutive: self.consecutive,
            silent_seconds: self.silent_seconds,
            notify_email: self.notify_email.clone(),
            measure: self.measure()?,
            for_seconds: self.for_seconds,
        })
    }

    /// Every rule not removed, by id.
    pub fn list(conn: &mut DbConnection) -> Result<Vec<AlertRule>> {
        Ok(alert_rules::table
            .filter(alert_rules::removed_at_us.is_null())
            .order(alert_rules::id)
            .select(AlertRule::as_select())
            .load(conn)?)
    }

    /// Every rule, removed ones included (an old alert still names the rule that raised
    /// it), by id.
    pub fn list_all(conn: &mut DbConnection) -> Result<Vec<AlertRule>> {
        Ok(alert_rules::table
            .order(alert_rules::id)
            .select(AlertRule::as_select())
            .load(conn)?)
    }

    /// A rule by id, removed or not.
    pub fn find(conn: &mut DbConnection, id: AlertRuleId) -> Result<Option<AlertRule>> {
        Ok(alert_rules::table
            .find(id)
            .select(AlertRule::as_select())
            .first(conn)
            .optional()?)
    }
}

impl Alert {
    pub fn list_for_device(conn: &mut DbConnection, device: DeviceId) -> Result<Vec<Alert>> {
        Ok(alerts::table
            .filter(alerts::device_id.eq(device))
            .order(alerts::id)
            .select(Alert::as_select())
            .load(conn)?)
    }
}

impl AlertRule {
    /// The addresses the rule emails (`notify_email` is comma-separated; empty for none).
    pub fn recipients(&self) -> Vec<&str> {
        self.notify_email
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
            .collect()
    }

    /// The rule's condition in words, as its emails state it.
    pub fn condition(&self) -> String {
        match self.kind.as_str() {
            "silent" => format!("no data for {} s", self.silent_seconds),
            "event" => format!("device reported {}", self.metric),
            kind => {
                let measure = if self.measure == "rate" {
                    format!("{} change per minute", self.metric)
                } else {
                    self.metric.clone()
                };
                if self.for_seconds > 0 {
                    format!(
                        "{measure} {kind} {} for {} s",
                        self.threshold, self.for_seconds
                    )
                } else {
                    format!(
                        "{measure} {kind} {} for {} reading(s) in a row",
                        self.threshold, self.consecutive
                    )
                }
            }
        }
    }
}
