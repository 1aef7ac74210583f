//! What remote access shows people: the names a request's emails carry (their words are in
//! [`crate::emails`]), the "remote access active" banner, and times as pages show them.

use chrono::Utc;

use super::sites::Machine;
use super::state::AccessRequest;
use crate::emails::AccessRequestNames;
use crate::grants::Agent;
use crate::models::{Site, User};

/// The people and names a request's emails and pages show.
pub(super) struct Context {
    pub(super) site: Site,
    pub(super) machine: Machine,
    pub(super) requester: User,
    pub(super) agent: Agent,
}

impl Context {
    /// What this request's emails name; their words are in [`crate::emails`].
    pub(super) fn names<'a>(&'a self, request: &'a AccessRequest) -> AccessRequestNames<'a> {
        AccessRequestNames {
            id: request.id,
            machine: &self.machine.name,
            machine_address: &self.machine.address,
            site: &self.site.name,
            requester_name: &self.requester.name,
            requester_email: &self.requester.email,
            requester_addr: &request.requester_addr,
            address_declared: request.address_declared,
            agent: &request.agent,
            agent_label: &self.agent.label,
            agent_ports: &self.agent.ports,
        }
    }
}

/// One "remote access active" banner line: `technician` on `machine` at `site`, until the
/// grant's end where there is a grant.
pub(super) fn banner(site: &str, technician: &str, machine: &str, until_us: Option<i64>) -> String {
    let until = match until_us {
        Some(us) => format!(" until {}", short_time(us)),
        None => String::new(),
    };
    format!("Remote access active at {site}: {technician} on {machine}{until}")
}

/// `2026-11-22 14:05 UTC`, as pages show times.
pub fn short_time(us: i64) -> String {
    chrono::DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}
