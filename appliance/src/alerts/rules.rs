//! Managing alert rules: create, change, disable and enable, remove. Each is audited in the
//! transaction that makes it, and each acts only within the caller's organisation: a rule,
//! site or device of another organisation is "not found", as if it did not exist.
//!
//! A change that leaves an active alert without its condition (the rule changed, disabled
//! or removed) clears that alert in the same transaction, telling the rule's recipients and
//! connectors as any clearing does; otherwise it would stay active with nothing left to
//! clear it. A rule that still holds clears nothing here: its next reading raises it again.

use diesel::prelude::*;

use super::decide::clear_active_of_rule;
use super::{AlertKind, AlertRule, MAX_FOR_SECONDS, Measure, RuleScope};
use crate::audit::{Actor, Audit, AuditEvent};
use crate::error::{Error, Result};
use crate::ids::{AlertRuleId, DeviceId, OrganisationId, SiteId};
use crate::readings::is_metric_name;
use crate::schema::{alert_rules, devices, sites};
use crate::store::DbConnection;
use crate::store::on_backend;

/// The most addresses one rule emails.
pub const MAX_RECIPIENTS: usize = 20;

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

/// A request's values once checked: what is stored.
pub(super) struct Checked {
    name: String,
    notify_email: String,
    site_id: Option<SiteId>,
    device_id: Option<DeviceId>,
    device_kind: Option<&'static str>,
}

impl RuleRequest {
    /// Checks every value, naming the field of the first that is refused; then that the
    /// scope's site or device belongs to `organisation`.
    pub(super) fn check(
        &self,
        conn: &mut DbConnection,
        organisation: OrganisationId,
    ) -> Result<Checked> {
        let request = self;
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
                    format!(
                        "{:?} is not a metric name: 1 to 64 of a-z 0-9 _ . - starting with a letter",
                        request.metric
                    ),
                ));
            }
            _ => {}
        }
        if !request.threshold.is_finite() {
            return Err(Error::invalid("threshold", "must be a finite number"));
        }
        if !request.hysteresis.is_finite() || request.hysteresis < 0.0 {
            return Err(Error::invalid("hysteresis", "must be a number, 0 or more"));
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
        let mut recipients = Vec::new();
        for address in request.notify_email.split(',').map(str::trim) {
            if address.is_empty() {
                continue;
            }
            let address = crate::models::clean_email(address).map_err(|_| {
                Error::invalid(
                    "notify_email",
                    format!("{address:?} is not an email address"),
                )
            })?;
            if !recipients.contains(&address) {
                recipients.push(address);
            }
        }
        if recipients.len() > MAX_RECIPIENTS {
            return Err(Error::invalid(
                "notify_email",
                format!("at most {MAX_RECIPIENTS} addresses"),
            ));
        }
        let (site_id, device_id, device_kind) = match request.scope {
            RuleScope::Site(site) => (Some(site), None, None),
            RuleScope::SiteKind(site, kind) => (Some(site), None, Some(kind.as_str())),
            RuleScope::Device(device) => (None, Some(device), None),
        };
        let owner: Option<OrganisationId> = match (site_id, device_id) {
            (Some(site), _) => sites::table
                .find(site)
                .select(sites::organisation_id)
                .first(conn)
                .optional()?,
            (None, Some(device)) => devices::table
                .find(device)
                .select(devices::organisation_id)
                .first(conn)
                .optional()?,
            (None, None) => None,
        };
        if owner != Some(organisation) {
            return Err(match request.scope {
                RuleScope::Device(_) => Error::NotFound("device"),
                _ => Error::NotFound("site"),
            });
        }
        Ok(Checked {
            name: name.to_owned(),
            notify_email: recipients.join(", "),
            site_id,
            device_id,
            device_kind,
        })
    }
}

#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = alert_rules, treat_none_as_null = true)]
struct RuleRow<'a> {
    site_id: Option<SiteId>,
    device_id: Option<DeviceId>,
    device_kind: Option<&'a str>,
    name: &'a str,
    kind: &'a str,
    metric: &'a str,
    threshold: f64,
    hysteresis: f64,
    consecutive: i32,
    silent_seconds: i64,
    notify_email: &'a str,
    measure: &'a str,
    for_seconds: i64,
}

impl<'a> RuleRow<'a> {
    fn of(request: &'a RuleRequest, checked: &'a Checked) -> RuleRow<'a> {
        RuleRow {
            site_id: checked.site_id,
            device_id: checked.device_id,
            device_kind: checked.device_kind,
            name: &checked.name,
            kind: request.kind.as_str(),
            // A silence rule watches no metric.
            metric: if request.kind == AlertKind::Silent {
                ""
            } else {
                &request.metric
            },
            threshold: request.threshold,
            hysteresis: request.hysteresis,
            consecutive: request.consecutive,
            silent_seconds: request.silent_seconds,
            notify_email: &checked.notify_email,
            measure: request.measure.as_str(),
            for_seconds: request.for_seconds,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = alert_rules)]
struct NewRule<'a> {
    #[diesel(embed)]
    row: RuleRow<'a>,
    created_at_us: i64,
}

/// Which of the lifecycle changes [`AlertRule::set_enabled`] and [`AlertRule::remove`]
/// make, as the audit log names them.
fn audited(rule: &AlertRule, action: &'static str, actor: &Actor) -> AuditEvent {
    AuditEvent::new(actor.clone(), action)
        .target(rule.id)
        .details(serde_json::to_value(rule).unwrap_or_default())
}

impl AlertRule {
    /// Creates a rule as of `now` in `organisation`, audited `alert.rule.created`.
    pub fn create(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        request: &RuleRequest,
        now: i64,
    ) -> Result<AlertRule> {
        audit.record_with(|conn| {
            let checked = request.check(conn, organisation)?;
            let rule = on_backend!(conn, c => diesel::insert_into(alert_rules::table)
                .values(NewRule { row: RuleRow::of(request, &checked), created_at_us: now })
                .returning(AlertRule::as_returning())
                .get_result(c))?;
            Ok((
                rule.clone(),
                vec![audited(&rule, "alert.rule.created", actor)],
            ))
        })
    }

    /// A rule of `organisation` that is not removed, or "not found".
    pub fn find_in(
        conn: &mut DbConnection,
        organisation: OrganisationId,
        id: AlertRuleId,
    ) -> Result<AlertRule> {
        let rule = AlertRule::find(conn, id)?
            .filter(|rule| rule.removed_at_us.is_none())
            .ok_or(Error::NotFound("alert rule"))?;
        if rule.organisation(conn)? != organisation {
            return Err(Error::NotFound("alert rule"));
        }
        Ok(rule)
    }

    /// The site the rule lies at: its own, or its device's.
    pub fn site(&self, conn: &mut DbConnection) -> Result<SiteId> {
        match (self.site_id, self.device_id) {
            (Some(site), _) => Ok(site),
            (None, Some(device)) => Ok(devices::table
                .find(device)
                .select(devices::site_id)
                .first(conn)?),
            (None, None) => Err(Error::NotFound("alert rule's site")),
        }
    }

    fn organisation(&self, conn: &mut DbConnection) -> Result<OrganisationId> {
        let site = self.site(conn)?;
        Ok(sites::table
            .find(site)
            .select(sites::organisation_id)
            .first(conn)?)
    }

    /// Changes every setting of a rule, audited `alert.rule.changed` with the settings
    /// before and after. Its active alerts are cleared: the next reading raises them again
    /// if the new settings hold.
    pub fn update(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        id: AlertRuleId,
        request: &RuleRequest,
        now: i64,
    ) -> Result<AlertRule> {
        audit.record_with(|conn| {
            let before = AlertRule::find_in(conn, organisation, id)?;
            let checked = request.check(conn, organisation)?;
            diesel::update(alert_rules::table.find(id))
                .set(RuleRow::of(request, &checked))
                .execute(conn)?;
            let after = AlertRule::find_in(conn, organisation, id)?;
            let mut events = vec![
                AuditEvent::new(actor.clone(), "alert.rule.changed")
                    .target(id)
                    .details(serde_json::json!({ "before": before, "after": after })),
            ];
            events.extend(clear_active_of_rule(
                conn,
                actor,
                (id, None),
                "rule changed",
                now,
            )?);
            Ok((after, events))
        })
    }

    /// Disables (`enabled` false) or enables a rule as of `now`, audited
    /// `alert.rule.disabled` or `alert.rule.enabled`; disabling clears its active alerts.
    /// Asking for the state it is already in changes nothing and records nothing.
    pub fn set_enabled(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        id: AlertRuleId,
        enabled: bool,
        now: i64,
    ) -> Result<AlertRule> {
        audit.record_with(|conn| {
            let rule = AlertRule::find_in(conn, organisation, id)?;
            if rule.disabled_at_us.is_none() == enabled {
                return Ok((rule, Vec::new()));
            }
            diesel::update(alert_rules::table.find(id))
                .set(alert_rules::disabled_at_us.eq((!enabled).then_some(now)))
                .execute(conn)?;
            let rule = AlertRule::find_in(conn, organisation, id)?;
            let action = if enabled {
                "alert.rule.enabled"
            } else {
                "alert.rule.disabled"
            };
            let mut events = vec![audited(&rule, action, actor)];
            if !enabled {
                events.extend(clear_active_of_rule(
                    conn,
                    actor,
                    (id, None),
                    "rule disabled",
                    now,
                )?);
            }
            Ok((rule, events))
        })
    }

    /// Removes a rule as of `now`, audited `alert.rule.removed`: it raises nothing more and
    /// its active alerts are cleared, while the alerts it raised stay in the history.
    pub fn remove(
        audit: &Audit,
        actor: &Actor,
        organisation: OrganisationId,
        id: AlertRuleId,
        now: i64,
    ) -> Result<AlertRule> {
        audit.record_with(|conn| {
            let rule = AlertRule::find_in(conn, organisation, id)?;
            diesel::update(alert_rules::table.find(id))
                .set(alert_rules::removed_at_us.eq(Some(now)))
                .execute(conn)?;
            let mut events = vec![audited(&rule, "alert.rule.removed", actor)];
            events.extend(clear_active_of_rule(
                conn,
                actor,
                (id, None),
                "rule removed",
                now,
            )?);
            let removed = AlertRule::find(conn, id)?.ok_or(Error::NotFound("alert rule"))?;
            Ok((removed, events))
        })
    }
}
