//! Moving a device between the sites of its organisation. It lives above both the device
//! registry and the alerts, because a move reaches into both: the device reports to its new
//! site from then on, and an alert a rule raised that no longer covers it is cleared in the
//! same transaction (else nothing would ever clear it).

use diesel::prelude::*;

use crate::alerts::{AlertRule, clear_active_of_rule};
use crate::audit::{Actor, Audit, AuditEvent};
use crate::devices::Device;
use crate::error::{Error, Result};
use crate::ids::{OrganisationId, SiteId};
use crate::schema::{alert_rules, alerts, devices, sites};

/// Moves a device to another site of its organisation as of `now`, audited
/// `device.moved`. Its readings stay where they are; from now on it reports to the new
/// site (its connectors, its site rules), and an active alert of a rule that no longer
/// covers it is cleared.
pub fn move_device(
    audit: &Audit,
    actor: &Actor,
    serial: &str,
    site: SiteId,
    now: i64,
) -> Result<Device> {
    audit.record_with(|conn| {
        let device = Device::find_by_serial(conn, serial)?.ok_or(Error::NotFound("device"))?;
        let organisation: Option<OrganisationId> = sites::table
            .find(site)
            .select(sites::organisation_id)
            .first(conn)
            .optional()?;
        if organisation != Some(device.organisation_id) {
            return Err(Error::NotFound("site"));
        }
        if device.site_id == site {
            return Ok((device, Vec::new()));
        }
        diesel::update(devices::table.find(device.id))
            .set(devices::site_id.eq(site))
            .execute(conn)?;
        let moved = Device::find_by_serial(conn, serial)?.ok_or(Error::NotFound("device"))?;
        let mut events = vec![
            AuditEvent::new(actor.clone(), "device.moved")
                .target(device.id)
                .details(serde_json::json!({
                    "serial": device.serial, "from": device.site_id, "to": site,
                })),
        ];
        let active: Vec<AlertRule> = alert_rules::table
            .inner_join(alerts::table)
            .filter(alerts::device_id.eq(device.id))
            .filter(alerts::cleared_at_us.is_null())
            .select(AlertRule::as_select())
            .load(conn)?;
        for rule in active.iter().filter(|rule| !rule.covers(&moved)) {
            events.extend(clear_active_of_rule(
                conn,
                actor,
                (rule.id, Some(device.id)),
                "device moved",
                now,
            )?);
        }
        Ok((moved, events))
    })
}
