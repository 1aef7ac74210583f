//! What one user may do with one request as it stands: the rule the request page shows as
//! buttons and [`super::end`] enforces, written once. (`decide` and `extend` refuse each
//! failed condition with its own words; they check the same conditions.)

use super::policy::SitePolicy;
use super::sites::is_approver;
use super::state::{AccessRequest, State};
use crate::error::Result;
use crate::models::{Role, User};
use crate::store::DbConnection;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Approve or deny: an approver of the site, not the requester, while pending.
    pub decide: bool,
    /// The requester is an approver of the site too: another approver must decide.
    pub own_request_as_approver: bool,
    /// Extend the session: the requester, while approved, where the site allows it.
    pub extend: bool,
    /// Revoke someone else's session: an approver of the site or an administrator, while
    /// approved. (The requester ends their own session instead.)
    pub revoke: bool,
}

impl Allowed {
    pub fn of(conn: &mut DbConnection, user: &User, request: &AccessRequest) -> Result<Allowed> {
        let approver = is_approver(conn, user, request.site_id)?;
        let own = request.requester_id == user.id;
        let state = request.state()?;
        let extendable = SitePolicy::of(conn, request.site_id)?.requester_may_extend;
        Ok(Allowed {
            decide: approver && !own && state == State::Pending,
            own_request_as_approver: approver && own && state == State::Pending,
            extend: extendable && own && state == State::Approved,
            revoke: (approver || user.role()? == Role::Admin) && !own && state == State::Approved,
        })
    }
}
