//! Reconciling the kernel with the store: the one loop behind start-up, pokes, the timer
//! and drift repair.

use appliance::grants::{Grant, Pinhole};
use appliance::time::now_us;
use appliance::{Actor, Appliance, AuditEvent};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use crate::ruleset::{self, Policy, TimedPinhole};
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
}

impl Controller {
    /// Checks the configuration against this machine; nothing is applied yet.
    pub fn new(app: Appliance) -> Result<Controller> {
        let policy = Policy::from_config(&app.config)?;
        policy.check_interfaces()?;
        Ok(Controller {
            app,
            policy,
            actor: Actor::System("firewall".to_owned()),
            applied_shape: None,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Brings the kernel to what the store says, and records what it changed.
    pub fn reconcile(&mut self) -> Result<Summary> {
        let now = now_us();
        let live = Grant::live(&mut *self.app.store.conn()?, now)?;
        let pinholes = desired(&live, now)?;
        let listing = nft::list_table()?;
        let mut summary = Summary::default();

        let shape_matches = matches!((&listing, &self.applied_shape), (Some(l), Some(applied)) if nft::shape(l) == *applied);
        if shape_matches {
            self.sync_elements(listing.as_ref(), &pinholes, &live, &mut summary)?;
        } else {
            let why = match (&listing, &self.applied_shape) {
                (None, None) => "created",
                (Some(_), None) => "adopted",
                (None, Some(_)) => "table deleted by hand",
                (Some(_), Some(_)) => "rules changed by hand",
            };
            let pinhole_list: Vec<TimedPinhole> = pinholes.values().copied().collect();
            let batch = ruleset::replace_table(&self.policy, &pinhole_list);
            nft::apply(&batch)?;
            let after = nft::list_table()?.ok_or_else(|| {
                crate::FirewallError::Nft("the table vanished after apply".into())
            })?;
            self.applied_shape = Some(nft::shape(&after));
            summary.replaced = Some(why);
            summary.added = pinhole_list.len();
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
                        "pinholes": pinhole_list.len(),
                    })),
            )?;
        }
        self.bookkeep(&live, now, &mut summary)?;
        Ok(summary)
    }

    /// Adds missing grant elements and deletes extra ones in one transaction. Extra
    /// elements no grant accounts for were added by hand: that is drift, repaired and audited.
    fn sync_elements(
        &self,
        listing: Option<&Value>,
        pinholes: &BTreeMap<Pinhole, TimedPinhole>,
        live: &[Grant],
        summary: &mut Summary,
    ) -> Result<()> {
        let in_kernel = listing.map(nft::elements).unwrap_or_default();
        let add: Vec<TimedPinhole> = pinholes
            .iter()
            .filter(|(key, _)| !in_kernel.contains(*key))
            .map(|(_, timed)| *timed)
            .collect();
        let delete: Vec<Pinhole> = in_kernel
            .iter()
            .filter(|key| !pinholes.contains_key(*key))
            .copied()
            .collect();
        if add.is_empty() && delete.is_empty() {
            return Ok(());
        }
        nft::apply(&ruleset::change_elements(&add, &delete))?;
        summary.added += add.len();
        summary.removed += delete.len();

        // Elements that belong to no grant the store knows of were put there by hand.
        let unclosed = Grant::unclosed(&mut *self.app.store.conn()?)?;
        let mut known = BTreeSet::new();
        for grant in unclosed.iter().chain(live) {
            known.extend(grant.pinholes()?);
        }
        let foreign: Vec<&Pinhole> = delete.iter().filter(|p| !known.contains(*p)).collect();
        if !foreign.is_empty() {
            let mut cut = 0;
            for pinhole in &foreign {
                cut += conntrack::cut(pinhole)?;
            }
            summary.connections_cut += cut;
            let described: Vec<String> = foreign.iter().map(|p| describe(p)).collect();
            self.app.audit.record(
                AuditEvent::new(self.actor.clone(), "firewall.drift.repaired")
                    .target("nft:inet plantgate")
                    .details(json!({
                        "why": "grant elements added by hand",
                        "removed": described,
                        "connections_cut": cut,
                    })),
            )?;
        }
        Ok(())
    }

    /// Marks newly applied grants opened, and closes grants that ended: their conntrack
    /// entries are removed, so nothing of theirs stays established.
    fn bookkeep(&self, live: &[Grant], now: i64, summary: &mut Summary) -> Result<()> {
        for grant in live.iter().filter(|g| g.applied_at_us.is_none()) {
            Grant::mark_applied(&self.app.audit, &self.actor, grant.id)?;
            summary.opened += 1;
        }
        let live_ids: BTreeSet<i64> = live.iter().map(|g| g.id).collect();
        let ended = Grant::unclosed(&mut *self.app.store.conn()?)?
            .into_iter()
            .filter(|g| !live_ids.contains(&g.id));
        for grant in ended {
            let why = if grant.revoked_at_us.is_some() {
                "revoked"
            } else if grant.expires_at_us <= now {
                "expired"
            } else {
                "removed"
            };
            let mut cut = 0;
            for pinhole in grant.pinholes()? {
                cut += conntrack::cut(&pinhole)?;
            }
            summary.connections_cut += cut;
            summary.closed += 1;
            let action = if why == "revoked" { "cut" } else { why };
            Grant::mark_closed(
                &self.app.audit,
                &self.actor,
                grant.id,
                action,
                json!({ "why": why, "connections_cut": cut, "requester": grant.requester_addr, "device": grant.device_addr, "ports": grant.ports }),
            )?;
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

/// The pinholes the live grants call for, with their remaining seconds.
fn desired(live: &[Grant], now: i64) -> Result<BTreeMap<Pinhole, TimedPinhole>> {
    let mut pinholes = BTreeMap::new();
    for grant in live {
        let left = (grant.expires_at_us - now).max(0);
        let timeout_seconds = u32::try_from((left + 999_999) / 1_000_000)
            .unwrap_or(u32::MAX)
            .max(1);
        for pinhole in grant.pinholes()? {
            pinholes.insert(
                pinhole,
                TimedPinhole {
                    pinhole,
                    timeout_seconds,
                },
            );
        }
    }
    Ok(pinholes)
}
