//! A request as the store keeps it, and the states it moves through: pending, then
//! approved, denied, expired or cancelled; an approved request's session finally ended.

use std::str::FromStr;

use diesel::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::{AccessRequestId, GrantId, MachineId, OrganisationId, SiteId, UserId};
use crate::schema::access_requests;
use crate::store::DbConnection;

/// Microseconds in a second: the store keeps times in microseconds.
pub(super) const MICROS: i64 = 1_000_000;

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
    pub id: AccessRequestId,
    pub organisation_id: OrganisationId,
    pub site_id: SiteId,
    pub machine_id: MachineId,
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
    pub grant_id: Option<GrantId>,
    pub ended_at_us: Option<i64>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
}

impl AccessRequest {
    pub fn target(&self) -> String {
        self.id.to_string()
    }

    pub fn state(&self) -> Result<State> {
        self.state.parse()
    }

    pub(super) fn find(conn: &mut DbConnection, id: AccessRequestId) -> Result<AccessRequest> {
        access_requests::table
            .find(id)
            .select(AccessRequest::as_select())
            .first(conn)
            .optional()?
            .ok_or(Error::NotFound("access request"))
    }
}

/// The refusal of a change to request `id` that is no longer in the state the change
/// expected: it names the state the request is in.
pub(super) fn already_decided(conn: &mut DbConnection, id: AccessRequestId) -> Error {
    match AccessRequest::find(conn, id) {
        Ok(current) => Error::Conflict(format!(
            "request {} is already {}; nothing was changed",
            id.0, current.state
        )),
        Err(err) => err,
    }
}
