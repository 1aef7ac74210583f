//! Remote access with approval ("virtual lockout-tagout").
//!
//! A technician asks for one agent of one machine, for a while, with a reason. The site's
//! approvers are told by email; one of them, signed in, approves (perhaps for less time) or
//! denies. Approval stores the firewall grant in the same transaction, so a decision and its
//! pinhole commit together; the firewall controller applies it. The session ends by expiry,
//! by the technician, by an approver's revoke, by the site's key switch, or by the
//! technician's account ending. Every step is audited with its actor and source address.
//!
//! Decisions are conditional updates (`WHERE state = 'pending'`) inside the audit
//! transaction, which takes the audit lock first: two approvers acting at once yield one
//! decision and one clear refusal.
//!
//! The module's parts, from the ground up:
//!
//! - `state`: a request as the store keeps it, and the states it moves through;
//! - `policy`: a site's access policy (hours, longest session, allowlists, key switch);
//! - `sites`: sites, their named approvers, and the machines on the device network;
//! - `allowed`: what one user may do with one request as it stands;
//! - `messages`: the names a request's emails carry (their words are in `emails`), the banner;
//! - `requests`: asking for access, and an approver's decision;
//! - `sessions`: what an approved request became: extended, ended, revoked, cut by the
//!   key switch, or swept by the periodic tick;
//! - `views`: the requests a user may see, as pages list them, and the banners;
//! - `export`: those requests as JSONL or CSV;
//! - `signal`: the "remote access active" signal, site by site;
//! - `contractors`: outside technicians, invited for one site and a while.
//!
//! Invitations themselves (the emailed link, setting the first password) belong to
//! accounts; [`accept_invitation`] and [`invitation_purpose`] are named here as well.

mod allowed;
mod contractors;
mod export;
mod messages;
mod policy;
mod requests;
mod sessions;
mod signal;
mod sites;
mod state;
mod views;

pub use crate::accounts::{accept_invitation, invitation_purpose};
pub use allowed::Allowed;
pub use contractors::invite_contractor;
pub use export::export;
pub use messages::short_time;
pub use policy::{HourWindow, PolicyChange, SitePolicy};
pub use requests::{Decision, NewRequest, decide, may_request, request};
pub use sessions::{TickReport, end, extend, set_key_switch, tick};
pub use signal::{active_sites, record_signal};
pub use sites::{
    Machine, NewMachine, approvers, is_approver, set_approver, site_of, sites_for, user_site,
    visible_site,
};
pub use state::{AccessRequest, State};
pub use views::{RequestView, Show, banners, find_visible, visible};
