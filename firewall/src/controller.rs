//! Reconciling the kernel with the store: the one loop behind start-up, pokes, the timer
//! and drift repair.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use appliance::grants::{Grant, Pinhole};
use appliance::time::now_us;
use appliance::{Actor, Appliance, AuditEvent};
use serde_json::{Value, json};

use crate::management::{ConfirmedFile, ManagementAccess, Pending};
use crate::ruleset::{self, ForwardKey, Policy, PortForward, TimedPinhole};
use crate::{Result, conntrack, nft};

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Why the whole table was replaced, if it was.
    pub replaced: Option<&'static str>,
    pub added: usize,
    pub removed: usize,
    pub opened: usize,
    pub closed: usize,
    pub connections_cut: u32,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replaced={} added={} removed={} opened={} closed={} cut={}",
            self.replaced.unwrap_or("no"),
            self.added,
            self.removed,
            self.opened,
            self.closed,
            self.connections_cut
        )
    }
}

#[derive(Debug)]
pub struct Controller {
    app: Appliance,
    policy: Policy,
    actor: Actor,
    /// The table's shape as the kernel listed it right after our last full apply.
    applied_shape: Option<Value>,
    confirmed: ConfirmedFile,
    /// A change to management access that rolls back unless confirmed.
    pending: Option<Pending>,
    rolled_back: bool,
}

impl Controller {
    /// Checks the configuration against this machine; nothing is applied yet.
    pub fn new(app: Appliance) -> Result<Controller> {
        let policy = Policy::from_config(&app.config)?;
        policy.check_interfaces()?;
        let confirmed = ConfirmedFile::in_dir(&app.config.data_dir);
        let confirm_within = Duration::from_secs(app.config.firewall.confirm_seconds);
        let pending = confirmed
            .check(&ManagementAccess::of(&policy), confirm_within)
            .map_err(crate::FirewallError::ConfirmedSettings)?;
        let actor = Actor::System("firewall".to_owned());
        if let Some(change) = &pending {
            app.audit.record(AuditEvent::new(actor.clone(), "firewall.change.pending").target("nft:inet plantgate").details(
                json!({ "previous": change.previous, "proposed": change.proposed, "confirm_within_seconds": confirm_within.as_secs() }),
            ))?;
            tracing::warn!(
                seconds = confirm_within.as_secs(),
                "management access changed: run `plantgate-firewall confirm` in time, or it is rolled back"
            );
        }
        Ok(Controller {
            app,
            policy,
            actor,
            applied_shape: None,
            confirmed,
            pending,
            rolled_back: false,
        })
    }

    /// True when an unconfirmed change has run out of time and must be rolled back now.
    pub fn rollback_due(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|change| Instant::now() >= change.deadline)
    }

    /// Keeps a pending change to management access; answers in words for the socket.
    pub fn confirm(&mut self) -> Result<&'static str> {
        let Some(change) = self.pending.take() else {
            return Ok("nothing to confirm");
        };
        self.confirmed
            .write(&change.proposed)
            .map_err(crate::FirewallError::ConfirmedSettings)?;
        self.app.audit.record(
            AuditEvent::new(self.actor.clone(), "firewall.change.confirmed")
                .target("nft:inet plantgate")
                .details(json!({ "confirmed": change.proposed })),
        )?;
        Ok("confirmed")
    }

    /// Brings the kernel to what the store says, and records what it changed.
    pub fn reconcile(&mut self) -> Result<Summary> {
        if self.rollback_due()
            && let Some(change) = self.pending.take()
        {
            self.policy = change.previous.applied_to(&self.policy);
            self.applied_shape = None;
            self.rolled_back = true;
            self.app.audit.record(
                AuditEvent::new(self.actor.clone(), "firewall.change.rolled_back")
                    .target("nft:inet plantgate")
                    .outcome(appliance::Outcome::Failure)
                    .details(
                        json!({ "restored": change.previous, "unconfirmed": change.proposed }),
                    ),
            )?;
            tracing::error!(
                "management access change was not confirmed in time and was rolled back"
            );
        }
        let now = now_us();
        let live = Grant::live(&mut *self.app.store.conn()?, now)?;
        let wanted = desired(&live, now)?;
        let listing = nft::list_table()?;
        let mut summary = Summary::default();

        let shape_matches = matches!((&listing, &self.applied_shape), (Some(l), Some(applied)) if nft::shape(l) == *applied);
        if shape_matches {
            self.sync_elements(listing.as_ref(), &wanted, &live, &mut summary)?;
        } else {
            let why = match (&listing, &self.applied_shape) {
                _ if std::mem::take(&mut self.rolled_back) => "unconfirmed change rolled back",
                (None, None) => "created",
                (Some(_), None) => "adopted",
                (None, Some(_)) => "table deleted by hand",
                (Some(_), Some(_)) => "rules changed by hand",
            };
            let pinholes: Vec<TimedPinhole> = wanted.pinholes.values().copied().collect();
            let forwards: Vec<PortForward> = wanted.forwards.values().copied().collect();
            nft::apply(&ruleset::replace_table(&self.policy, &pinholes, &forwards))?;
            let after = nft::list_table()?.ok_or_else(|| {
                crate::FirewallError::Nft("the table vanished after apply".into())
            })?;
            self.applied_shape = Some(nft::shape(&after));
            summary.replaced = Some(why);
            summary.added = pinholes.len() + forwards.len();
            let action = if why.contains("by hand") {
                "firewall.drift.repaired"
            } else {
                "firewall.ruleset.applied"
            };
            self.app.audit.record(
                AuditEvent::new(self.actor.clone(), action)
                    .target("nft:inet plantgate")
                    .details(json!({
                        "why": why,
                        "grants": live.len(),
                        "pinholes": pinholes.len(),
                        "forwards": forwards.len(),
                    })),
            )?;
        }
        self.bookkeep(&live, &mut summary)?;
        Ok(summary)
    }

    /// Adds missing elements and deletes extra ones in one transaction. Extra elements no
    /// grant accounts for were added by hand: that is drift, repaired and audited.
    fn sync_elements(
        &self,
        listing: Option<&Value>,
        wanted: &Desired,
        live: &[Grant],
        summary: &mut Summary,
    ) -> Result<()> {
        let (in_kernel, forwards_in_kernel) = listing.map(nft::elements).unwrap_or_default();
        // An element whose timeout runs out well before its grant does belongs to a grant
        // that was extended: it is deleted and added again, in the same transaction.
        let extended = |key: &Pinhole, timed: &TimedPinhole| matches!(in_kernel.get(key), Some(Some(left)) if left + EXTENDED_SLACK_SECONDS < u64::from(timed.timeout_seconds));
        let add: Vec<TimedPinhole> = wanted
            .pinholes
            .iter()
            .filter(|(key, timed)| !in_kernel.contains_key(*key) || extended(key, timed))
            .map(|(_, timed)| *timed)
            .collect();
        let delete: Vec<Pinhole> = in_kernel
            .keys()
            .filter(|key| {
                wanted
                    .pinholes
                    .get(*key)
                    .is_none_or(|timed| extended(key, timed))
            })
            .copied()
            .collect();
        let add_forwards: Vec<PortForward> = wanted
            .forwards
            .iter()
            .filter(|(key, _)| !forwards_in_kernel.contains(*key))
            .map(|(_, f)| *f)
            .collect();
        let delete_forwards: Vec<ForwardKey> = forwards_in_kernel
            .iter()
            .filter(|key| !wanted.forwards.contains_key(*key))
            .copied()
            .collect();
        if add.is_empty()
            && delete.is_empty()
            && add_forwards.is_empty()
            && delete_forwards.is_empty()
        {
            return Ok(());
        }
        nft::apply(&ruleset::change_elements(
            &add,
            &delete,
            &add_forwards,
            &delete_forwards,
        ))?;
        summary.added += add.len() + add_forwards.len();
        summary.removed += delete.len() + delete_forwards.len();

        // Elements that belong to no grant the store knows of were put there by hand.
        let unclosed = Grant::unclosed(&mut *self.app.store.conn()?)?;
        let mut known = BTreeSet::new();
        let mut known_forwards = BTreeSet::new();
        for grant in unclosed.iter().chain(live) {
            let pinholes = grant.pinholes()?;
            if let (Some(port), Some(first)) = (
                grant.dnat_port.and_then(|p| u16::try_from(p).ok()),
                pinholes.first(),
            ) {
                known_forwards.insert((first.requester, first.protocol, port));
            }
            known.extend(pinholes);
        }
        let foreign: Vec<&Pinhole> = delete.iter().filter(|p| !known.contains(*p)).collect();
        let foreign_forwards: Vec<&ForwardKey> = delete_forwards
            .iter()
            .filter(|k| !known_forwards.contains(*k))
            .collect();
        if !foreign.is_empty() || !foreign_forwards.is_empty() {
            let mut cut = 0;
            for pinhole in &foreign {
                cut += conntrack::cut(pinhole)?;
            }
            summary.connections_cut += cut;
            let described: Vec<String> = foreign.iter().map(|p| describe(p)).collect();
            let forwards: Vec<String> = foreign_forwards
                .iter()
                .map(|(r, p, port)| format!("{r} {}/{port}", p.as_str()))
                .collect();
            self.app.audit.record(
                AuditEvent::new(self.actor.clone(), "firewall.drift.repaired")
                    .target("nft:inet plantgate")
                    .details(json!({
                        "why": "grant elements added by hand",
                        "removed": described,
                        "forwards_removed": forwards,
                        "connections_cut": cut,
                    })),
            )?;
        }
        Ok(())
    }

    /// Marks newly applied grants opened, and closes grants that ended: their conntrack
    /// entries are removed, so nothing of theirs stays established.
    fn bookkeep(&self, live: &[Grant], summary: &mut Summary) -> Result<()> {
        for grant in live.iter().filter(|g| g.applied_at_us.is_none()) {
            Grant::mark_applied(&self.app.audit, &self.actor, grant.id)?;
            summary.opened += 1;
        }
        let live_ids: BTreeSet<i64> = live.iter().map(|g| g.id).collect();
        // A pinhole another live grant also opens keeps its connections.
        let mut still_open = BTreeSet::new();
        for grant in live {
            still_open.extend(grant.pinholes()?);
        }
        let ended = Grant::unclosed(&mut *self.app.store.conn()?)?
            .into_iter()
            .filter(|g| !live_ids.contains(&g.id));
        for grant in ended {
            // Not live and not closed: revoked, or past its expiry.
            let (action, why) = if grant.revoked_at_us.is_some() {
                ("cut", "revoked")
            } else {
                ("expired", "expired")
            };
            let mut cut = 0;
            for pinhole in grant
                .pinholes()?
                .iter()
                .filter(|p| !still_open.contains(*p))
            {
                cut += conntrack::cut(pinhole)?;
            }
            summary.connections_cut += cut;
            summary.closed += 1;
            let details = json!({
                "why": why,
                "connections_cut": cut,
                "requester": grant.requester_addr,
                "device": grant.device_addr,
                "ports": grant.ports,
            });
            Grant::mark_closed(&self.app.audit, &self.actor, grant.id, action, details)?;
        }
        Ok(())
    }
}

fn describe(p: &Pinhole) -> String {
    format!(
        "{} -> {} {}/{}",
        p.requester,
        p.device,
        p.protocol.as_str(),
        p.port
    )
}

/// What the live grants call for: pinholes and port forwards, with their remaining seconds.
#[derive(Debug, Default)]
pub struct Desired {
    pub pinholes: BTreeMap<Pinhole, TimedPinhole>,
    pub forwards: BTreeMap<ForwardKey, PortForward>,
}

/// How much later than the kernel's timeout a grant may end before its element is renewed.
const EXTENDED_SLACK_SECONDS: u64 = 5;

pub fn desired(live: &[Grant], now: i64) -> Result<Desired> {
    let mut wanted = Desired::default();
    for grant in live {
        let left = (grant.expires_at_us - now).max(0);
        let timeout_seconds = u32::try_from((left + 999_999) / 1_000_000)
            .unwrap_or(u32::MAX)
            .max(1);
        for pinhole in grant.pinholes()? {
            wanted.pinholes.insert(
                pinhole,
                TimedPinhole {
                    pinhole,
                    timeout_seconds,
                },
            );
            if let Some(uplink_port) = grant.dnat_port.and_then(|p| u16::try_from(p).ok()) {
                let forward = PortForward {
                    requester: pinhole.requester,
                    protocol: pinhole.protocol,
                    uplink_port,
                    device: pinhole.device,
                    device_port: pinhole.port,
                    timeout_seconds,
                };
                wanted.forwards.insert(forward.key(), forward);
            }
        }
    }
    Ok(wanted)
}
