//! The requests a user may see, as the portal lists them (their own; their sites' as an
//! approver; their organisation's as an administrator), and the "remote access active"
//! banners of the sites they see.

use diesel::prelude::*;
use serde::Serialize;

use super::messages;
use super::requests::{context, visible_request};
use super::sites::user_site;
use super::state::{AccessRequest, State};
use crate::error::Result;
use crate::grants::Grant;
use crate::ids::{AccessRequestId, GrantId};
use crate::models::{Role, User};
use crate::schema::{access_requests, machines, site_approvers, sites, users};
use crate::store::DbConnection;

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
pub fn find_visible(
    conn: &mut DbConnection,
    user: &User,
    id: AccessRequestId,
) -> Result<RequestView> {
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
    let rows: Vec<(String, String, String, Option<GrantId>)> = query.load(conn)?;
    rows.into_iter()
        .map(|(site, machine, technician, grant)| {
            let until = match grant {
                Some(id) => Some(Grant::find(conn, id)?.expires_at_us),
                None => None,
            };
            Ok(messages::banner(&site, &technician, &machine, until))
        })
        .collect()
}
