//! Deciding what readings and silence mean for alerts, and applying it: raise, clear, and
//! tell of each change (connectors and email) in the transaction that makes it. Only live
//! rules (neither disabled nor removed) decide anything.

use std::collections::{BTreeMap, BTreeSet};

use diesel::prelude::*;

use super::{AlertKind, AlertRule, Measure};
use crate::audit::{Actor, Audit, AuditEvent};
use crate::devices::Device;
use crate::error::Result;
use crate::ids::{AlertId, AlertRuleId, DeviceId};
use crate::readings::{latest_points, latest_values, points_since};
use crate::schema::{alert_rules, alerts, devices};
use crate::store::DbConnection;
use crate::store::on_backend;

#[derive(Debug, Insertable)]
#[diesel(table_name = alerts)]
struct NewAlert {
    rule_id: AlertRuleId,
    device_id: DeviceId,
    raised_at_us: i64,
    raised_value: Option<f64>,
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

/// Live rules covering `device_ids` directly or through their site (and kind), with the
/// devices they cover.
fn rules_covering(
    conn: &mut DbConnection,
    device_ids: &[DeviceId],
) -> Result<Vec<(AlertRule, DeviceId)>> {
    let covered: Vec<Device> = devices::table
        .filter(devices::id.eq_any(device_ids))
        .select(Device::as_select())
        .load(conn)?;
    let sites: BTreeSet<_> = covered.iter().map(|d| d.site_id).collect();
    let rules: Vec<AlertRule> = alert_rules::table
        .filter(alert_rules::disabled_at_us.is_null())
        .filter(alert_rules::removed_at_us.is_null())
        .filter(
            alert_rules::device_id
                .eq_any(device_ids)
                .or(alert_rules::site_id.eq_any(sites)),
        )
        .select(AlertRule::as_select())
        .load(conn)?;
    let mut pairs = Vec::new();
    for rule in rules {
        for device in &covered {
            if rule.covers(device) {
                pairs.push((rule.clone(), device.id));
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
        .filter(alert_rules::disabled_at_us.is_null())
        .filter(alert_rules::removed_at_us.is_null())
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
        let covered: Vec<Device> = query
            .select(Device::as_select())
            .load::<Device>(conn)?
            .into_iter()
            .filter(|device| rule.covers(device))
            .collect();
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
                    // The rule may have been disabled or removed since it was decided.
                    let live: i64 = alert_rules::table
                        .find(rule)
                        .filter(alert_rules::disabled_at_us.is_null())
                        .filter(alert_rules::removed_at_us.is_null())
                        .count()
                        .get_result(conn)?;
                    if live == 0 {
                        continue;
                    }
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

/// Clears, in the caller's transaction, the active alerts of `rule` as of `now` (on every
/// device, or on `only` one), telling of each as any clearing does; returns the audit
/// events (`alert.cleared`, with `because`).
pub(crate) fn clear_active_of_rule(
    conn: &mut DbConnection,
    actor: &Actor,
    (rule, only): (AlertRuleId, Option<DeviceId>),
    because: &str,
    now: i64,
) -> Result<Vec<AuditEvent>> {
    let mut query = alerts::table
        .filter(alerts::rule_id.eq(rule))
        .filter(alerts::cleared_at_us.is_null())
        .into_boxed();
    if let Some(device) = only {
        query = query.filter(alerts::device_id.eq(device));
    }
    let active: Vec<DeviceId> = query.select(alerts::device_id).load(conn)?;
    let mut events = Vec::new();
    for device in active {
        diesel::update(
            alerts::table
                .filter(alerts::rule_id.eq(rule))
                .filter(alerts::device_id.eq(device))
                .filter(alerts::cleared_at_us.is_null()),
        )
        .set(alerts::cleared_at_us.eq(Some(now)))
        .execute(conn)?;
        tell_of_alert_change(conn, rule, device, Change::Cleared, None, now)?;
        events.push(
            AuditEvent::new(actor.clone(), "alert.cleared")
                .target(device)
                .details(serde_json::json!({ "rule": rule, "value": null, "because": because })),
        );
    }
    Ok(events)
}
