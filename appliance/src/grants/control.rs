//! The one conversation with the firewall controller: the requests and answers on its Unix
//! socket (both ends parse them here), the status row it keeps in the store, and what a
//! revoke tells the person who asked when the controller does not confirm it.
//!
//! Why a revoke holds without the controller: every pinhole in the kernel also needs the
//! controller's lease (one set element with a timeout of `firewall.lease_seconds`), which a
//! live controller renews every third of the lease, and only after it has read the store and
//! closed every ended grant. A controller that is killed, or that cannot read the store, stops
//! renewing: within the lease every pinhole closes by itself, revoked or not.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use diesel::prelude::*;

use crate::audit::{Actor, Audit, AuditEvent, Outcome};
use crate::config::Config;
use crate::error::Result;
use crate::ids::GrantId;
use crate::schema::{firewall_status, users};
use crate::store::DbConnection;

/// One line a client writes to the controller's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Bring the whole table to what the store says (start, timer, several grants at once).
    Reconcile,
    /// Keep a pending change to management access.
    Confirm,
    /// Apply one grant's change (opened, extended, revoked, ended): only its elements.
    Grant(GrantId),
}

impl Request {
    pub fn line(&self) -> String {
        match self {
            Request::Reconcile => "reconcile".to_owned(),
            Request::Confirm => "confirm".to_owned(),
            Request::Grant(id) => format!("grant {}", id.0),
        }
    }

    pub fn parse(line: &str) -> std::result::Result<Request, String> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("reconcile"), None, _) => Ok(Request::Reconcile),
            (Some("confirm"), None, _) => Ok(Request::Confirm),
            (Some("grant"), Some(id), None) => id
                .parse()
                .map(|id| Request::Grant(GrantId(id)))
                .map_err(|_| format!("{id:?} is not a grant id")),
            _ => Err(format!(
                "unknown command {:?}; send reconcile, confirm or grant ID",
                line.trim()
            )),
        }
    }
}

/// What the kernel holds for one grant once the controller has acted on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    /// Its pinholes are in the kernel.
    Open { pinholes: usize },
    /// None of its pinholes is in the kernel, save those another live grant also opens.
    Closed {
        removed: usize,
        connections_cut: u32,
    },
}

/// One line the controller answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A reconcile or confirm succeeded; the words say what it did.
    Done(String),
    Grant {
        id: GrantId,
        state: GrantState,
    },
    Failed(String),
}

impl Answer {
    pub fn line(&self) -> String {
        match self {
            Answer::Done(words) => format!("ok {words}"),
            Answer::Grant {
                id,
                state: GrantState::Open { pinholes },
            } => format!("grant {} open {pinholes}", id.0),
            Answer::Grant {
                id,
                state:
                    GrantState::Closed {
                        removed,
                        connections_cut,
                    },
            } => format!("grant {} closed {removed} {connections_cut}", id.0),
            // One line: a newline inside would end the answer early.
            Answer::Failed(words) => format!("error {}", words.replace('\n', " ")),
        }
    }

    pub fn parse(line: &str) -> Answer {
        let line = line.trim();
        if let Some(words) = line.strip_prefix("ok") {
            return Answer::Done(words.trim().to_owned());
        }
        if let Some(words) = line.strip_prefix("error") {
            return Answer::Failed(words.trim().to_owned());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        let state = match (words.first(), words.get(2)) {
            (Some(&"grant"), Some(&"open")) => number(3).map(|n| GrantState::Open {
                pinholes: usize::try_from(n).unwrap_or(usize::MAX),
            }),
            (Some(&"grant"), Some(&"closed")) => {
                number(3)
                    .zip(number(4))
                    .map(|(removed, cut)| GrantState::Closed {
                        removed: usize::try_from(removed).unwrap_or(usize::MAX),
                        connections_cut: u32::try_from(cut).unwrap_or(u32::MAX),
                    })
            }
            _ => None,
        };
        match (words.get(1).and_then(|w| w.parse().ok()), state) {
            (Some(id), Some(state)) => Answer::Grant {
                id: GrantId(id),
                state,
            },
            _ => Answer::Failed(format!("unexpected answer {line:?}")),
        }
    }
}

/// Asks the controller and waits for its answer; `Err` when it cannot be reached at all.
pub fn ask(config: &Config, request: Request) -> std::result::Result<Answer, String> {
    let path = config.firewall_socket();
    let failed = |err: std::io::Error| format!("{}: {err}", path.display());
    let stream = std::os::unix::net::UnixStream::connect(&path).map_err(failed)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(failed)?;
    (&stream)
        .write_all(format!("{}\n", request.line()).as_bytes())
        .map_err(failed)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(failed)?;
    if answer.is_empty() {
        return Err(format!("{}: closed without an answer", path.display()));
    }
    Ok(Answer::parse(&answer))
}

/// Applies one grant's change now; `Err` says why the kernel's state is not known.
pub fn apply_grant(config: &Config, id: GrantId) -> std::result::Result<GrantState, String> {
    match ask(config, Request::Grant(id))? {
        Answer::Grant {
            id: answered,
            state,
        } if answered == id => Ok(state),
        Answer::Failed(why) => Err(why),
        other => Err(format!("unexpected answer {:?}", other.line())),
    }
}

/// Whether the kernel is known to hold none of a revoked grant's pinholes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    Confirmed {
        removed: usize,
        connections_cut: u32,
    },
    /// Recorded in the store, not yet confirmed in the kernel: the lease closes it.
    Pending { why: String, within_seconds: u64 },
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Enforcement::Confirmed {
                removed,
                connections_cut,
            } => write!(
                f,
                "firewall: confirmed closed ({removed} pinholes removed, {connections_cut} connections cut)"
            ),
            Enforcement::Pending {
                why,
                within_seconds,
            } => write!(
                f,
                "revoke recorded; pending: firewall controller unreachable ({why}); the pinhole closes by itself within {within_seconds} s"
            ),
        }
    }
}

/// After a revoke is stored: asks the controller to remove the grant's pinholes and
/// waits for its confirmation. Without one, the pending revoke is audited
/// (`firewall.revoke.pending`, a failure) and every administrator is emailed, as of `now`.
pub fn enforce_revoke(
    audit: &Audit,
    actor: &Actor,
    config: &Config,
    id: GrantId,
    now: i64,
) -> Enforcement {
    let why = match apply_grant(config, id) {
        Ok(GrantState::Closed {
            removed,
            connections_cut,
        }) => {
            return Enforcement::Confirmed {
                removed,
                connections_cut,
            };
        }
        Ok(GrantState::Open { .. }) => "the controller still holds it open".to_owned(),
        Err(why) => why,
    };
    let within_seconds = config.firewall.lease_seconds;
    let pending = Enforcement::Pending {
        why: why.clone(),
        within_seconds,
    };
    if let Err(err) = record_pending(audit, actor, config, id, &why, now) {
        tracing::error!(error = %err, grant = id.0, "cannot record the pending revoke");
    }
    pending
}

fn record_pending(
    audit: &Audit,
    actor: &Actor,
    config: &Config,
    id: GrantId,
    why: &str,
    now: i64,
) -> Result<()> {
    let within = config.firewall.lease_seconds;
    audit.record_with(|conn| {
        let admins: Vec<String> = users::table
            .filter(users::role.eq("admin"))
            .filter(users::disabled_at_us.is_null())
            .select(users::email)
            .load(conn)?;
        let email = crate::emails::revoke_pending(id, why, within, now);
        for admin in &admins {
            crate::mail::enqueue(conn, admin, &email, &id.to_string(), now)?;
        }
        let event = AuditEvent::new(actor.clone(), "firewall.revoke.pending")
            .target(id)
            .outcome(Outcome::Failure)
            .details(serde_json::json!({
                "why": why,
                "closes_within_seconds": within,
                "administrators_emailed": admins.len(),
            }));
        Ok(((), vec![event]))
    })
}

/// What the controller last proved, as it recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = firewall_status)]
pub struct FirewallStatus {
    pub started_at_us: i64,
    pub lease_seconds: i32,
    pub lease_renewed_at_us: i64,
    pub reconciled_at_us: Option<i64>,
    pub last_error: Option<String>,
}

/// The controller's state as the portal shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It has never recorded a lease on this store.
    NeverRan,
    Running(FirewallStatus),
    /// It missed its renewals; `lease_ends_at_us` is when every pinhole closed (or closes)
    /// by itself.
    Unreachable {
        status: FirewallStatus,
        lease_ends_at_us: i64,
    },
}

impl FirewallStatus {
    pub fn read(conn: &mut DbConnection) -> Result<Option<FirewallStatus>> {
        Ok(firewall_status::table
            .find(1)
            .select(FirewallStatus::as_select())
            .first(conn)
            .optional()?)
    }

    /// Records a renewed lease; called by the controller only.
    pub fn record(&self, conn: &mut DbConnection) -> Result<()> {
        let updated = diesel::update(firewall_status::table.find(1))
            .set((
                firewall_status::started_at_us.eq(self.started_at_us),
                firewall_status::lease_seconds.eq(self.lease_seconds),
                firewall_status::lease_renewed_at_us.eq(self.lease_renewed_at_us),
                firewall_status::reconciled_at_us.eq(self.reconciled_at_us),
                firewall_status::last_error.eq(&self.last_error),
            ))
            .execute(conn)?;
        if updated == 0 {
            diesel::insert_into(firewall_status::table)
                .values((
                    firewall_status::id.eq(1),
                    firewall_status::started_at_us.eq(self.started_at_us),
                    firewall_status::lease_seconds.eq(self.lease_seconds),
                    firewall_status::lease_renewed_at_us.eq(self.lease_renewed_at_us),
                    firewall_status::reconciled_at_us.eq(self.reconciled_at_us),
                    firewall_status::last_error.eq(&self.last_error),
                ))
                .execute(conn)?;
        }
        Ok(())
    }

    pub fn lease_ends_at_us(&self) -> i64 {
        self.lease_renewed_at_us
            .saturating_add(i64::from(self.lease_seconds) * 1_000_000)
    }

    /// Running while it renews on time: every third of the lease, on a one-second tick,
    /// with a second or two of grace for a slow moment.
    pub fn health(status: Option<FirewallStatus>, now: i64) -> Health {
        let Some(status) = status else {
            return Health::NeverRan;
        };
        let due = i64::from(status.lease_seconds) * 1_000_000 / 3 + 2_000_000;
        if now - status.lease_renewed_at_us <= due {
            Health::Running(status)
        } else {
            let lease_ends_at_us = status.lease_ends_at_us();
            Health::Unreachable {
                status,
                lease_ends_at_us,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_read_back_as_written() {
        for request in [
            Request::Reconcile,
            Request::Confirm,
            Request::Grant(GrantId(42)),
        ] {
            assert_eq!(Request::parse(&request.line()), Ok(request));
        }
        for bad in [
            "",
            "grant",
            "grant x",
            "grant 1 2",
            "reconcile now",
            "drop table",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?} accepted");
        }
        for answer in [
            Answer::Done("replaced=no added=1".into()),
            Answer::Grant {
                id: GrantId(7),
                state: GrantState::Open { pinholes: 2 },
            },
            Answer::Grant {
                id: GrantId(7),
                state: GrantState::Closed {
                    removed: 2,
                    connections_cut: 1,
                },
            },
            Answer::Failed("nft failed: no such table".into()),
        ] {
            assert_eq!(Answer::parse(&format!("{}\n", answer.line())), answer);
        }
        assert!(matches!(Answer::parse("grant 7 ajar 1"), Answer::Failed(_)));
    }

    #[test]
    fn a_controller_that_missed_its_renewals_is_unreachable_until_it_renews() {
        let status = FirewallStatus {
            started_at_us: 0,
            lease_seconds: 60,
            lease_renewed_at_us: 100_000_000,
            reconciled_at_us: None,
            last_error: None,
        };
        assert_eq!(FirewallStatus::health(None, 0), Health::NeverRan);
        assert!(matches!(
            FirewallStatus::health(Some(status.clone()), 120_000_000),
            Health::Running(_)
        ));
        assert_eq!(
            FirewallStatus::health(Some(status.clone()), 123_000_000),
            Health::Unreachable {
                status,
                lease_ends_at_us: 160_000_000
            }
        );
    }
}
