//! Alert rules and alerts: raised and cleared from readings and silence, never twice at once.
//!
//! Deciding is read-only ([`decide_for_readings`], [`decide_silent`]); applying
//! ([`apply`]) re-checks inside the audited transaction, so concurrent deciders cannot raise
//! the same alert twice: the partial unique index `alerts_one_active` allows one active
//! alert per (rule, device). The same transaction queues what tells of each change: a
//! delivery for the site's data connectors and an email to each of the rule's recipients
//! ([`crate::mail`], sent by the portal's mailer like every other email).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use diesel::prelude::*;
use serde::Serialize;

use crate::audit::{Actor, Audit, AuditEvent};
use crate::devices::Device;
use crate::error::{Error, Result};
use crate::ids::{AlertId, AlertRuleId, DeviceId, SiteId};
use crate::readings::{is_metric_name, latest_points, latest_values, points_since};
use crate::schema::{alert_rules, alerts, devices};
use crate::store::DbConnection;
use crate::store::on_backend;

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
}

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleScope {
    Site(SiteId),
    Device(DeviceId),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleRequest {
    pub scope: RuleScope,
    pub name: String,
    pub kind: AlertKind,
    pub metric: String,
    pub threshold: f64,
    pub hysteresis: f64,
    pub consecutive: i32,
    pub silent_seconds: i64,
    /// Comma-separated addresses; empty for no email.
    pub notify_email: String,
    /// For above/below: compare the value or its rate of change per minute.
    pub measure: Measure,
    /// For above/below: when above 0, the condition must hold this long instead of
    /// `consecutive` readings in a row.
    pub for_seconds: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = alert_rules)]
struct NewRule<'a> {
    site_id: Option<SiteId>,
    device_id: Option<DeviceId>,
    name: &'a str,
    kind: &'a str,
    metric: &'a str,
    threshold: f64,
    hysteresis: f64,
    consecutive: i32,
    silent_seconds: i64,
    notify_email: &'a str,
    created_at_us: i64,
    measure: &'a str,
    for_seconds: i64,
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

#[derive(Debug, Insertable)]
#[diesel(table_name = alerts)]
struct NewAlert {
    rule_id: AlertRuleId,
    device_id: DeviceId,
    raised_at_us: i64,
    raised_value: Option<f64>,
}

impl AlertRule {
    pub fn kind(&self) -> Result<AlertKind> {
        self.kind.parse()
    }

    pub fn measure(&self) -> Result<Measure> {
        self.measure.parse()
    }

    /// Creates a rule as of `now`, audited `alert.rule.created`.
    pub fn create(
        audit: &Audit,
        actor: &Actor,
        request: &RuleRequest,
        now: i64,
    ) -> Result<AlertRule> {
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid("name", "1 to 200 characters"));
        }
        match request.kind {
            AlertKind::Silent if request.silent_seconds < 1 => {
                return Err(Error::invalid("silent_seconds", "must be 1 or more"));
            }
            AlertKind::Silent => {}
            _ if !is_metric_name(&request.metric) => {
                return Err(Error::invalid(
                    "metric",
                    format!("{:?} is not a metric name", request.metric),
                ));
            }
            _ => {}
        }
        if !request.threshold.is_finite()
            || !request.hysteresis.is_finite()
            || request.hysteresis < 0.0
        {
            return Err(Error::invalid(
                "threshold",
                "threshold must be finite and hysteresis 0 or more",
            ));
        }
        if !(1..=1000).contains(&request.consecutive) {
            return Err(Error::invalid("consecutive", "must be between 1 and 1000"));
        }
        if !(0..=MAX_FOR_SECONDS).contains(&request.for_seconds) {
            return Err(Error::invalid(
                "for_seconds",
                format!("must be between 0 and {MAX_FOR_SECONDS}"),
            ));
        }
        let threshold_rule = matches!(request.kind, AlertKind::Above | AlertKind::Below);
        if !threshold_rule && (request.measure != Measure::Value || request.for_seconds != 0) {
            return Err(Error::invalid(
                "measure",
                "a rate of change or a duration applies to above and below rules only",
            ));
        }
        let (site_id, device_id) = match request.scope {
            RuleScope::Site(site) => (Some(site), None),
            RuleScope::Device(device) => (None, Some(device)),
        };
        audit.record_with(|conn| {
            let rule = on_backend!(conn, c => diesel::insert_into(alert_rules::table)
                .values(NewRule {
                    site_id,
                    device_id,
                    name,
                    kind: request.kind.as_str(),
                    metric: &request.metric,
                    threshold: request.threshold,
                    hysteresis: request.hysteresis,
                    consecutive: request.consecutive,
                    silent_seconds: request.silent_seconds,
                    notify_email: request.notify_email.trim(),
                    created_at_us: now,
                    measure: request.measure.as_str(),
                    for_seconds: request.for_seconds,
                })
                .returning(AlertRule::as_returning())
                .get_result(c))
            .map_err(|err| match err {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                    _,
                ) => Error::NotFound("site or device"),
                other => other.into(),
            })?;
            let event = AuditEvent::new(actor.clone(), "alert.rule.created")
                .target(rule.id)
                .details(serde_json::to_value(&rule).unwrap_or_default());
            Ok((rule, vec![event]))
        })
    }

    pub fn list(conn: &mut DbConnection) -> Result<Vec<AlertRule>> {
        Ok(alert_rules::table
            .order(alert_rules::id)
            .select(AlertRule::as_select())
            .load(conn)?)
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

/// A change an evaluation wants; [`apply`] makes it.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    Raise {
        rule: AlertRuleId,
        device: DeviceId,
        value: Option<f64>,
    },
    Clear {
        rule: AlertRuleId,
        device: DeviceId,
        value: Option<f64>,
    },
}

/// Rules covering `device_ids` directly or through their site, with the devices they cover.
fn rules_covering(
    conn: &mut DbConnection,
    device_ids: &[DeviceId],
) -> Result<Vec<(AlertRule, DeviceId)>> {
    let device_sites: Vec<(DeviceId, SiteId)> = devices::table
        .filter(devices::id.eq_any(device_ids))
        .select((devices::id, devices::site_id))
        .load(conn)?;
    let sites: BTreeSet<SiteId> = device_sites.iter().map(|(_, site)| *site).collect();
    let rules: Vec<AlertRule> = alert_rules::table
        .filter(
            alert_rules::device_id
                .eq_any(device_ids)
                .or(alert_rules::site_id.eq_any(sites)),
        )
        .select(AlertRule::as_select())
        .load(conn)?;
    let mut pairs = Vec::new();
    for rule in rules {
        for (device, site) in &device_sites {
            if rule.device_id == Some(*device) || rule.site_id == Some(*site) {
                pairs.push((rule.clone(), *device));
            }
        }
    }
    Ok(pairs)
}

fn active_set(
    conn: &mut DbConnection,
    device_ids: &[DeviceId],
) -> Result<BTreeSet<(AlertRuleId, DeviceId)>> {
    Ok(alerts::table
        .filter(alerts::device_id.eq_any(device_ids))
        .filter(alerts::cleared_at_us.is_null())
        .select((alerts::rule_id, alerts::device_id))
        .load::<(AlertRuleId, DeviceId)>(conn)?
        .into_iter()
        .collect())
}

/// What the readings just stored for these (device, metrics) mean for alerts. Read-only.
pub fn decide_for_readings(
    conn: &mut DbConnection,
    touched: &BTreeMap<DeviceId, BTreeSet<String>>,
) -> Result<Vec<AlertChange>> {
    let device_ids: Vec<DeviceId> = touched.keys().copied().collect();
    let pairs = rules_covering(conn, &device_ids)?;
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let active = active_set(conn, &device_ids)?;
    let mut changes = Vec::new();
    for (rule, device) in pairs {
        let is_active = active.contains(&(rule.id, device));
        let kind = rule.kind()?;
        if kind == AlertKind::Silent {
            if is_active {
                changes.push(AlertChange::Clear {
                    rule: rule.id,
                    device,
                    value: None,
                });
            }
            continue;
        }
        if !touched
            .get(&device)
            .is_some_and(|metrics| metrics.contains(&rule.metric))
        {
            continue;
        }
        let (raise, clear, latest) = match kind {
            AlertKind::Above | AlertKind::Below => {
                let series = threshold_series(conn, &rule, device)?;
                let Some(&(latest, latest_at)) = series.first() else {
                    continue;
                };
                let beyond = |v: f64| match kind {
                    AlertKind::Above => v > rule.threshold,
                    _ => v < rule.threshold,
                };
                let back = match kind {
                    AlertKind::Above => latest < rule.threshold - rule.hysteresis,
                    _ => latest > rule.threshold + rule.hysteresis,
                };
                let held = if rule.for_seconds > 0 {
                    // Every point in the window is beyond, and so was the last one at or
                    // before its start: the condition has lasted the whole window.
                    let start = latest_at - rule.for_seconds.saturating_mul(1_000_000);
                    series
                        .iter()
                        .take_while(|(_, at)| *at >= start)
                        .all(|(v, _)| beyond(*v))
                        && series
                            .iter()
                            .find(|(_, at)| *at <= start)
                            .is_some_and(|(v, _)| beyond(*v))
                } else {
                    let n = usize::try_from(rule.consecutive).unwrap_or(usize::MAX);
                    series.len() >= n && series.iter().take(n).all(|(v, _)| beyond(*v))
                };
                (held, back, latest)
            }
            AlertKind::Event => {
                let values = latest_values(conn, device, &rule.metric, 1)?;
                let Some(&latest) = values.first() else {
                    continue;
                };
                (latest != 0.0, latest == 0.0, latest)
            }
            AlertKind::Silent => continue,
        };
        if !is_active && raise {
            changes.push(AlertChange::Raise {
                rule: rule.id,
                device,
                value: Some(latest),
            });
        } else if is_active && clear {
            changes.push(AlertChange::Clear {
                rule: rule.id,
                device,
                value: Some(latest),
            });
        }
    }
    Ok(changes)
}

/// The measure a threshold rule compares, newest first, as (measure, measured_at_us): enough
/// points for `consecutive` in a row, or for its `for_seconds` window plus the point before.
fn threshold_series(
    conn: &mut DbConnection,
    rule: &AlertRule,
    device: DeviceId,
) -> Result<Vec<(f64, i64)>> {
    let rate = rule.measure()? == Measure::Rate;
    let extra = if rate { 1 } else { 0 };
    let points = if rule.for_seconds > 0 {
        let newest = latest_points(conn, device, &rule.metric, None, 1)?;
        let Some(&(_, latest_at)) = newest.first() else {
            return Ok(Vec::new());
        };
        let start = latest_at - rule.for_seconds.saturating_mul(1_000_000);
        let mut points = points_since(conn, device, &rule.metric, start)?;
        points.extend(latest_points(
            conn,
            device,
            &rule.metric,
            Some(start),
            1 + extra,
        )?);
        points
    } else {
        latest_points(
            conn,
            device,
            &rule.metric,
            None,
            i64::from(rule.consecutive) + extra,
        )?
    };
    if !rate {
        return Ok(points);
    }
    Ok(points
        .windows(2)
        .filter(|w| w[0].1 > w[1].1)
        .map(|w| {
            let minutes = (w[0].1 - w[1].1) as f64 / 60_000_000.0;
            ((w[0].0 - w[1].0) / minutes, w[0].1)
        })
        .collect())
}

/// Devices covered by a `silent` rule that have not been heard from for its
/// `silent_seconds` (since registration, if never). Read-only.
pub fn decide_silent(conn: &mut DbConnection, now_us: i64) -> Result<Vec<AlertChange>> {
    let rules: Vec<AlertRule> = alert_rules::table
        .filter(alert_rules::kind.eq(AlertKind::Silent.as_str()))
        .select(AlertRule::as_select())
        .load(conn)?;
    let mut changes = Vec::new();
    for rule in rules {
        let mut query = devices::table
            .filter(devices::revoked_at_us.is_null())
            .into_boxed();
        query = match (rule.device_id, rule.site_id) {
            (Some(device), _) => query.filter(devices::id.eq(device)),
            (None, Some(site)) => query.filter(devices::site_id.eq(site)),
            (None, None) => continue,
        };
        let covered: Vec<Device> = query.select(Device::as_select()).load(conn)?;
        let ids: Vec<DeviceId> = covered.iter().map(|d| d.id).collect();
        let active = active_set(conn, &ids)?;
        let limit_us = rule.silent_seconds.saturating_mul(1_000_000);
        for device in covered {
            let heard = device.last_seen_at_us.unwrap_or(device.created_at_us);
            if now_us.saturating_sub(heard) >= limit_us && !active.contains(&(rule.id, device.id)) {
                changes.push(AlertChange::Raise {
                    rule: rule.id,
                    device: device.id,
                    value: None,
                });
            }
        }
    }
    Ok(changes)
}

/// Makes the changes as of `now`, each audited `alert.raised` or `alert.cleared`; a change
/// another writer already made is skipped. Returns how many took effect.
pub fn apply(audit: &Audit, actor: &Actor, changes: &[AlertChange], now: i64) -> Result<usize> {
    if changes.is_empty() {
        return Ok(0);
    }
    audit.record_with(|conn| {
        let mut events = Vec::new();
        for change in changes {
            match *change {
                AlertChange::Raise {
                    rule,
                    device,
                    value,
                } => {
                    let inserted = on_backend!(conn, c => diesel::insert_into(alerts::table)
                        .values(NewAlert { rule_id: rule, device_id: device, raised_at_us: now, raised_value: value })
                        .on_conflict_do_nothing()
                        .execute(c))?;
                    if inserted == 1 {
                        tell_of_alert_change(conn, rule, device, Change::Raised, value, now)?;
                        events.push(
                            AuditEvent::new(actor.clone(), "alert.raised")
                                .target(device)
                                .details(serde_json::json!({ "rule": rule, "value": value })),
                        );
                    }
                }
                AlertChange::Clear {
                    rule,
                    device,
                    value,
                } => {
                    let updated = diesel::update(
                        alerts::table
                            .filter(alerts::rule_id.eq(rule))
                            .filter(alerts::device_id.eq(device))
                            .filter(alerts::cleared_at_us.is_null()),
                    )
                    .set((
                        alerts::cleared_at_us.eq(Some(now)),
                        alerts::cleared_value.eq(value),
                    ))
                    .execute(conn)?;
                    if updated == 1 {
                        tell_of_alert_change(conn, rule, device, Change::Cleared, value, now)?;
                        events.push(
                            AuditEvent::new(actor.clone(), "alert.cleared")
                                .target(device)
                                .details(serde_json::json!({ "rule": rule, "value": value })),
                        );
                    }
                }
            }
        }
        Ok((events.len(), events))
    })
}

/// Whether an alert was raised or cleared, as connectors and emails name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Raised,
    Cleared,
}

/// Queues, in the caller's transaction, what tells of the raise or clearing of the
/// active-or-just-cleared alert of (rule, device): a delivery for the site's data
/// connectors, and an email to each of the rule's recipients.
fn tell_of_alert_change(
    conn: &mut DbConnection,
    rule: AlertRuleId,
    device: DeviceId,
    change: Change,
    value: Option<f64>,
    at_us: i64,
) -> Result<()> {
    let rule_row: AlertRule = alert_rules::table
        .find(rule)
        .select(AlertRule::as_select())
        .first(conn)?;
    let alert_id: AlertId = alerts::table
        .filter(alerts::rule_id.eq(rule))
        .filter(alerts::device_id.eq(device))
        .order(alerts::id.desc())
        .select(alerts::id)
        .first(conn)?;
    let state = match change {
        Change::Raised => "raised",
        Change::Cleared => "cleared",
    };
    crate::connectors::enqueue_alert(
        conn,
        &crate::connectors::AlertOut {
            state,
            alert_id: alert_id.0,
            rule_id: rule.0,
            rule: &rule_row.name,
            kind: &rule_row.kind,
            metric: &rule_row.metric,
            device,
            value,
            at_us,
        },
    )?;
    let recipients = rule_row.recipients();
    if !recipients.is_empty() {
        let serial: String = devices::table
            .find(device)
            .select(devices::serial)
            .first(conn)?;
        let condition = rule_row.condition();
        let email = crate::emails::alert_changed(&crate::emails::AlertNotice {
            alert: alert_id,
            raised: change == Change::Raised,
            rule: &rule_row.name,
            condition: &condition,
            device_serial: &serial,
            value,
            at_us,
        });
        for recipient in recipients {
            crate::mail::enqueue(conn, recipient, &email, &alert_id.to_string(), at_us)?;
        }
    }
    Ok(())
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
