//! Every email Plantgate sends: its subject and its body, in one place.
//!
//! The domain decides who is told and when, and queues the email with [`crate::mail::enqueue`]
//! in the transaction of the change it tells of; the words are here. The functions take plain
//! values (names, addresses, times), so this module sits on the floor of `config` and knows
//! nothing of the domain that calls it.

use crate::config::Config;
use crate::ids::{AccessRequestId, AlertId, GrantId};
use crate::time::format_us;
use crate::values::PortList;

/// One email: its subject and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub body: String,
}

/// The closing line of every notice about an account's security.
const IF_NOT_YOU: &str = "If this was not you, tell your administrator at once.";

fn minutes_text(seconds: i64) -> String {
    let minutes = seconds / 60;
    if minutes >= 60 && minutes % 60 == 0 {
        format!("{} h", minutes / 60)
    } else {
        format!("{minutes} min")
    }
}

// ---- Remote access -------------------------------------------------------------------

/// What every email about one remote access request names.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequestNames<'a> {
    pub id: AccessRequestId,
    pub machine: &'a str,
    pub machine_address: &'a str,
    pub site: &'a str,
    pub requester_name: &'a str,
    pub requester_email: &'a str,
    /// The address the technician connects from, and whether they declared it themselves.
    pub requester_addr: &'a str,
    pub address_declared: bool,
    /// The agent's key (`vnc`), its label (`VNC viewer`) and its ports (`tcp/5900`).
    pub agent: &'a str,
    pub agent_label: &'a str,
    pub agent_ports: &'a PortList,
}

impl AccessRequestNames<'_> {
    fn url(&self, config: &Config) -> String {
        format!("{}/access/{}", config.portal_url(), self.id.0)
    }

    fn subject(&self, what: &str) -> String {
        format!(
            "[Plantgate] Remote access {what}: {} at {}",
            self.machine, self.site
        )
    }
}

/// To each approver of the site: someone asks for access; decide in the portal.
pub fn access_approval_wanted(
    config: &Config,
    names: &AccessRequestNames<'_>,
    requested_seconds: i64,
    reason: &str,
    pending_until_us: i64,
) -> Email {
    let n = names;
    Email {
        subject: n.subject("request"),
        body: format!(
            "{} <{}> asks for remote access to {} ({}) at {}.\n\n\
             Agent: {}\nFor: {}\nFrom address: {}{}\nReason: {reason}\n\n\
             Decide in the portal (you sign in first; this email cannot approve anything):\n{}\n\n\
             If nobody decides, the request expires at {}.\n",
            n.requester_name,
            n.requester_email,
            n.machine,
            n.machine_address,
            n.site,
            n.agent,
            minutes_text(requested_seconds),
            n.requester_addr,
            if n.address_declared {
                " (declared)"
            } else {
                ""
            },
            n.url(config),
            format_us(pending_until_us),
        ),
    }
}

/// To the requester: approved (by `approver`, or by the site's policy) for `seconds`, where
/// to connect from and to, and until when.
pub fn access_approved(
    config: &Config,
    names: &AccessRequestNames<'_>,
    approver: Option<&str>,
    seconds: i64,
    expires_at_us: i64,
) -> Email {
    let n = names;
    Email {
        subject: n.subject("approved"),
        body: format!(
            "Your request for {} at {} was approved{} for {}.\n\n\
             Connect from {} to {} ({}), {}.\nAccess ends at {} unless it is ended sooner.\n\n{}\n",
            n.machine,
            n.site,
            approver.map(|a| format!(" by {a}")).unwrap_or_default(),
            minutes_text(seconds),
            n.requester_addr,
            n.machine_address,
            n.agent_ports,
            n.agent_label,
            format_us(expires_at_us),
            n.url(config),
        ),
    }
}

/// To the requester: `approver` denied the request, and why.
pub fn access_denied(
    config: &Config,
    names: &AccessRequestNames<'_>,
    approver: &str,
    reason: &str,
) -> Email {
    let n = names;
    Email {
        subject: n.subject("denied"),
        body: format!(
            "Your request for {} at {} was denied by {approver}.\n\nReason: {reason}\n\n{}\n",
            n.machine,
            n.site,
            n.url(config)
        ),
    }
}

/// To the requester: the session has ended, and why.
pub fn access_ended(config: &Config, names: &AccessRequestNames<'_>, why: &str) -> Email {
    let n = names;
    Email {
        subject: n.subject("ended"),
        body: format!(
            "Your remote session to {} at {} has ended: {why}.\n\n{}\n",
            n.machine,
            n.site,
            n.url(config)
        ),
    }
}

/// To the requester: nobody decided in time.
pub fn access_expired(names: &AccessRequestNames<'_>) -> Email {
    Email {
        subject: names.subject("request expired"),
        body: format!(
            "Nobody decided on your request for {} at {} in time; ask again if you still need access.\n",
            names.machine, names.site
        ),
    }
}

/// To every administrator: a revoke was recorded, but the firewall controller did not
/// confirm it (`why`); its lease closes the pinholes within `within_seconds`.
pub fn revoke_pending(grant: GrantId, why: &str, within_seconds: u64, now_us: i64) -> Email {
    Email {
        subject: format!(
            "Plantgate: revoke of grant {} pending: firewall controller unreachable",
            grant.0
        ),
        body: format!(
            "Grant {} was revoked at {}, but the firewall controller did not confirm that its \
             pinholes are gone ({why}).\n\nThe controller's lease closes every pinhole by itself \
             within {within_seconds} seconds while the controller is down. Check the controller \
             (`systemctl status plantgate-firewall`); when it runs again it removes the grant's \
             pinholes and records firewall.grant.cut.\n",
            grant.0,
            format_us(now_us)
        ),
    }
}

// ---- Mail relay ----------------------------------------------------------------------

/// To the administrator testing the mail relay settings; sent at once, not queued.
pub fn relay_test() -> Email {
    Email {
        subject: "[Plantgate] Test email".to_owned(),
        body: "This is a test email from your Plantgate appliance's mail settings.\n".to_owned(),
    }
}

// ---- Accounts ------------------------------------------------------------------------

/// Who is invited, and to what.
#[derive(Debug, Clone, Copy)]
pub enum Invitation<'a> {
    /// The first administrator of a new organisation.
    FirstAdministrator { organisation: &'a str },
    /// A contractor of one site, whose account ends at `account_ends_us`.
    Contractor {
        inviter: &'a str,
        site: &'a str,
        account_ends_us: i64,
    },
}

/// The invitation with its one-time `link`, which works until `link_valid_until_us`.
pub fn invitation(
    config: &Config,
    invited: Invitation<'_>,
    link: &str,
    link_valid_until_us: i64,
) -> Email {
    let (subject, opening, closing) = match invited {
        Invitation::FirstAdministrator { organisation } => (
            format!("[Plantgate] You administer {organisation}"),
            format!(
                "You are the administrator of {organisation} on the Plantgate appliance at {}.",
                config.portal_url()
            ),
            "At first sign-in you set up a second factor.".to_owned(),
        ),
        Invitation::Contractor {
            inviter,
            site,
            account_ends_us,
        } => (
            format!("[Plantgate] You are invited to {site}"),
            format!("{inviter} invites you to request remote access to machines at {site}."),
            format!(
                "At first sign-in you set up an authenticator app. Your account ends at {}.",
                format_us(account_ends_us)
            ),
        ),
    };
    Email {
        subject,
        body: format!(
            "{opening}\n\nSet your password here (the link works once, until {}):\n{link}\n\n{closing}\n",
            format_us(link_valid_until_us),
        ),
    }
}

/// To the owner: the password was set or changed.
pub fn password_set(now_us: i64) -> Email {
    Email {
        subject: "[Plantgate] Your password was set".to_owned(),
        body: format!(
            "The password of your Plantgate account was set or changed at {}.\n\n{IF_NOT_YOU}\n",
            format_us(now_us)
        ),
    }
}

/// To the old address: the account's email address was changed to `new_address`.
pub fn email_address_changed(new_address: &str, now_us: i64) -> Email {
    Email {
        subject: "[Plantgate] Your email address was changed".to_owned(),
        body: format!(
            "The email address of your Plantgate account was changed to {new_address} at {}.\n\n\
             {IF_NOT_YOU}\n",
            format_us(now_us)
        ),
    }
}

/// To the new address: `name`'s notices and codes come here from now on.
pub fn email_address_now_yours(name: &str, old_address: &str, now_us: i64) -> Email {
    Email {
        subject: "[Plantgate] This is now your account's email address".to_owned(),
        body: format!(
            "From {}, Plantgate sends the notices and codes of {name}'s account here (it was {old_address}).\n",
            format_us(now_us)
        ),
    }
}

/// To the owner: `attempts` wrong passwords in a row locked sign-ins until `until_us`,
/// from the one browser that had signed in before (`known_browser`), or from every
/// browser that had not.
pub fn account_locked(known_browser: bool, attempts: u32, source: &str, until_us: i64) -> Email {
    let until = format_us(until_us);
    let body = if known_browser {
        format!(
            "After {attempts} wrong passwords in a row from a browser you signed in with before, the last from {source}, \
             sign-ins from that browser are locked until {until}.\n\n\
             If this was not you, tell your administrator: someone may have that browser.\n"
        )
    } else {
        format!(
            "After {attempts} wrong passwords in a row, the last from {source}, your Plantgate account is locked until {until} \
             for sign-ins from browsers it has not been used in before.\n\n\
             A browser you signed in with before still signs you in. If this was not you, tell your administrator: \
             someone may be guessing your password.\n"
        )
    };
    Email {
        subject: "[Plantgate] Your account was locked".to_owned(),
        body,
    }
}

// ---- Second factor -------------------------------------------------------------------

/// The one-time sign-in code, to the owner's address.
pub fn sign_in_code(code: &str, source: &str) -> Email {
    Email {
        subject: "[Plantgate] Your sign-in code".to_owned(),
        body: format!(
            "Your Plantgate sign-in code is {code}. It works once, for ten minutes.\n\n\
             If you did not try to sign in from {source}, tell your administrator: someone has your password.\n"
        ),
    }
}

/// How a second factor was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    EmailCodes,
    AuthenticatorApp,
}

/// To the owner: a second factor was set up.
pub fn second_factor_set_up(factor: SecondFactor) -> Email {
    let what = match factor {
        SecondFactor::EmailCodes => {
            "Codes sent to this address are now the second factor of your Plantgate account."
        }
        SecondFactor::AuthenticatorApp => {
            "An authenticator app was set up as the second factor of your Plantgate account, \
             and new recovery codes were made."
        }
    };
    Email {
        subject: "[Plantgate] A second factor was set up on your account".to_owned(),
        body: format!("{what}\n\n{IF_NOT_YOU}\n"),
    }
}

/// To the owner: `wrong` wrong codes after a right password; codes refused until `until_us`.
pub fn codes_locked(wrong: u32, source: &str, until_us: i64) -> Email {
    Email {
        subject: "[Plantgate] Too many wrong sign-in codes".to_owned(),
        body: format!(
            "Someone signed in to your Plantgate account with your password and then gave {wrong} wrong \
             second-factor codes, the last from {source}. Codes for your account are refused until {}, and a \
             sign-in that still waits for its code ends at its next try.\n\n\
             If this was not you, someone knows your password: change it as soon as you can sign in, and tell your \
             administrator.\n",
            format_us(until_us)
        ),
    }
}

// ---- Telemetry -----------------------------------------------------------------------

/// One alert, raised or cleared, as its rule's recipients read it.
#[derive(Debug, Clone, Copy)]
pub struct AlertNotice<'a> {
    pub alert: AlertId,
    pub raised: bool,
    pub rule: &'a str,
    /// The rule's condition in words (`temperature above 80 for 3 reading(s) in a row`).
    pub condition: &'a str,
    pub device_serial: &'a str,
    pub value: Option<f64>,
    pub at_us: i64,
}

/// To each of the rule's recipients: the alert was raised, or cleared.
pub fn alert_changed(notice: &AlertNotice<'_>) -> Email {
    let n = notice;
    let what = if n.raised { "RAISED" } else { "cleared" };
    Email {
        subject: format!(
            "[Plantgate] alert {what}: {} on {}",
            n.rule, n.device_serial
        ),
        body: format!(
            "Alert {what}.\n\nRule: {} ({})\nDevice: {}\nValue: {}\nAt: {}\nAlert id: {}\n",
            n.rule,
            n.condition,
            n.device_serial,
            n.value.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            format_us(n.at_us),
            n.alert,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_minutes_read_as_hours_when_whole() {
        assert_eq!(minutes_text(90 * 60), "90 min");
        assert_eq!(minutes_text(120 * 60), "2 h");
        assert_eq!(minutes_text(30 * 60), "30 min");
    }

    #[test]
    fn a_sign_in_code_names_the_address_it_was_asked_from() {
        let email = sign_in_code("123456", "198.51.100.7");
        assert!(email.body.contains("123456"));
        assert!(email.body.contains("198.51.100.7"));
    }

    #[test]
    fn an_alert_email_says_raised_or_cleared_in_its_subject() {
        let mut notice = AlertNotice {
            alert: AlertId(7),
            raised: true,
            rule: "hot",
            condition: "temperature above 80",
            device_serial: "press-1",
            value: Some(81.5),
            at_us: 0,
        };
        assert_eq!(
            alert_changed(&notice).subject,
            "[Plantgate] alert RAISED: hot on press-1"
        );
        notice.raised = false;
        notice.value = None;
        let cleared = alert_changed(&notice);
        assert_eq!(cleared.subject, "[Plantgate] alert cleared: hot on press-1");
        assert!(cleared.body.contains("Value: -"));
    }
}
