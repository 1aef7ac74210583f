//! Remote access pages: sites (policy, approvers, machines, key switch, invitations) and
//! requests (ask, decide, connect, end, history, export). The rules live in
//! `appliance::access`; these handlers check who is asking and render the answer.
//!
//! [`requests`] and [`sites`] are the pages; [`firewall`] is what they tell the firewall
//! and say about it.

pub mod firewall;
pub mod requests;
mod shared;
pub mod sites;
