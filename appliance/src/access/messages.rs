//! What remote access tells people: the subject and body of each email a request sends,
//! the words of a contractor's invitation, the "remote access active" banner, and times as
//! pages show them. The state machine decides who is told, and when; the words are here.

use chrono::Utc;

use super::sites::Machine;
use super::state::AccessRequest;
use crate::config::Config;
use crate::grants::Agent;
use crate::ids::AccessRequestId;
use crate::models::{Site, User};
use crate::time::format_us;

/// The people and names a request's emails and pages show.
pub(super) struct Context {
    pub(super) site: Site,
    pub(super) machine: Machine,
    pub(super) requester: User,
    pub(super) agent: Agent,
}

/// One email: its subject and its body.
pub(super) struct Email {
    pub(super) subject: String,
    pub(super) body: String,
}

fn minutes_text(seconds: i64) -> String {
    let minutes = seconds / 60;
    if minutes >= 60 && minutes % 60 == 0 {
        format!("{} h", minutes / 60)
    } else {
        format!("{minutes} min")
    }
}

fn request_url(config: &Config, id: AccessRequestId) -> String {
    format!("{}/access/{}", config.portal_url(), id.0)
}

/// To each approver of the site: `requester` asks for access; decide in the portal.
pub(super) fn approval_wanted(
    config: &Config,
    request: &AccessRequest,
    requester: &User,
    machine: &Machine,
    site: &Site,
) -> Email {
    let (agent, requester_addr, reason) =
        (&request.agent, &request.requester_addr, &request.reason);
    let declared = request.address_declared;
    Email {
        subject: format!(
            "[Plantgate] Remote access request: {} at {}",
            machine.name, site.name
        ),
        body: format!(
            "{} <{}> asks for remote access to {} ({}) at {}.\n\n\
             Agent: {agent}\nFor: {}\nFrom address: {requester_addr}{}\nReason: {reason}\n\n\
             Decide in the portal (you sign in first; this email cannot approve anything):\n{}\n\n\
             If nobody decides, the request expires at {}.\n",
            requester.name,
            requester.email,
            machine.name,
            machine.address,
            site.name,
            minutes_text(request.requested_seconds),
            if declared { " (declared)" } else { "" },
            request_url(config, request.id),
            format_us(request.pending_until_us),
        ),
    }
}

/// To the requester: approved (by `approver`, or by the site's policy) for `seconds`, where
/// to connect from and to, and until when.
pub(super) fn approved(
    config: &Config,
    cx: &Context,
    request: &AccessRequest,
    approver: Option<&User>,
    seconds: i64,
    expires_at_us: i64,
) -> Email {
    let connect_to = format!(
        "{} ({}), {}",
        cx.machine.address, cx.agent.ports, cx.agent.label
    );
    Email {
        subject: format!(
            "[Plantgate] Remote access approved: {} at {}",
            cx.machine.name, cx.site.name
        ),
        body: format!(
            "Your request for {} at {} was approved{} for {}.\n\n\
             Connect from {} to {connect_to}.\nAccess ends at {} unless it is ended sooner.\n\n{}\n",
            cx.machine.name,
            cx.site.name,
            approver
                .map(|a| format!(" by {}", a.name))
                .unwrap_or_default(),
            minutes_text(seconds),
            request.requester_addr,
            format_us(expires_at_us),
            request_url(config, request.id),
        ),
    }
}

/// To the requester: `approver` denied request `id`, and why.
pub(super) fn denied(
    config: &Config,
    cx: &Context,
    approver: &User,
    reason: &str,
    id: AccessRequestId,
) -> Email {
    Email {
        subject: format!(
            "[Plantgate] Remote access denied: {} at {}",
            cx.machine.name, cx.site.name
        ),
        body: format!(
            "Your request for {} at {} was denied by {}.\n\nReason: {reason}\n\n{}\n",
            cx.machine.name,
            cx.site.name,
            approver.name,
            request_url(config, id)
        ),
    }
}

/// To the requester: the session of request `id` has ended, and why.
pub(super) fn ended(config: &Config, cx: &Context, why: &str, id: AccessRequestId) -> Email {
    Email {
        subject: format!(
            "[Plantgate] Remote access ended: {} at {}",
            cx.machine.name, cx.site.name
        ),
        body: format!(
            "Your remote session to {} at {} has ended: {why}.\n\n{}\n",
            cx.machine.name,
            cx.site.name,
            request_url(config, id)
        ),
    }
}

/// To the requester: nobody decided in time.
pub(super) fn expired(cx: &Context) -> Email {
    Email {
        subject: format!(
            "[Plantgate] Remote access request expired: {} at {}",
            cx.machine.name, cx.site.name
        ),
        body: format!(
            "Nobody decided on your request for {} at {} in time; ask again if you still need access.\n",
            cx.machine.name, cx.site.name
        ),
    }
}

/// The words of a contractor's invitation; `accounts::invite_in` puts the link between the
/// opening and the closing.
pub(super) struct Invitation {
    pub(super) subject: String,
    pub(super) opening: String,
    pub(super) closing: String,
}

/// `inviter` invites a contractor to `site`, for an account that ends at `expires_at_us`.
pub(super) fn contractor_invitation(inviter: &User, site: &Site, expires_at_us: i64) -> Invitation {
    Invitation {
        subject: format!("[Plantgate] You are invited to {}", site.name),
        opening: format!(
            "{} invites you to request remote access to machines at {}.",
            inviter.name, site.name
        ),
        closing: format!(
            "At first sign-in you set up an authenticator app. Your account ends at {}.",
            format_us(expires_at_us)
        ),
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
