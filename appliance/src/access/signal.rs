//! The "remote access active" signal (a lamp or relay at each site): which sites have a
//! session approved now, and the record of each time the signal was driven.

use diesel::prelude::*;

use super::policy::SitePolicy;
use super::state::State;
use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::error::Result;
use crate::models::Site;
use crate::schema::{access_requests, sites};
use crate::store::DbConnection;

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
