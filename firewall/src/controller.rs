//! Reconciling the kernel with the store: the one loop behind start-up, pokes, the timer
//! and drift repair.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use appliance::grants::control::{FirewallStatus, GrantState};
use appliance::grants::{Grant, Pinhole};
use appliance::ids::GrantId;
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
    /// When the kernel's lease was last renewed by us; `None` before the first apply.
    lease_renewed: Option<Instant>,
    /// What the portal reads about us; written at every renewal.
    status: FirewallStatus,
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
        let status = FirewallStatus {
            started_at_us: now_us(),
            lease_seconds: i32::try_from(policy.lease_seconds).unwrap_or(i32::MAX),
            lease_renewed_at_us: 0,
            reconciled_at_us: None,
            last_error: None,
        };
        Ok(Controller {
            app,
            policy,
            actor,
            applied_shape: None,
            confirmed,
            pending,
            rolled_back: false,
            lease_renewed: None,
            status,
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

    /// Brings the kernel to what the store says, and records what it changed. A success
    /// proves the store readable and the kernel in line with it, so the lease is renewed.
    pub fn reconcile(&mut self) -> Result<Summary> {
        let result = self.reconcile_inner();
        match &result {
            Ok(_) => {
                self.status.reconciled_at_us = Some(now_us());
                self.status.last_error = None;
                if self.renewal_due() {
                    self.renew_lease()?;
                } else {
                    self.record_status();
                }
            }
            Err(err) => {
                self.status.last_error = Some(err.to_string());
                self.record_status();
            }
        }
        result
    }

    fn reconcile_inner(&mut self) -> Result<Summary> {
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
            // A lease element deleted by hand closed everything; put it back with the rest.
            if !listing.as_ref().is_some_and(lease_present) {
                self.lease_renewed = None;
            }
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
            // The new table holds a fresh lease.
            self.lease_renewed = Some(Instant::now());
            self.status.lease_renewed_at_us = now_us();
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
        self.bookkeep(&live, now, &mut summary)?;
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
    ///
    /// `live` was read at `now`; a grant approved since is in the store but not in `live`.
    /// Only grants that had ended by `now` are closed, so such a grant waits for the next
    /// reconcile instead of being closed as expired before it ever opened.
    fn bookkeep(&self, live: &[Grant], now: i64, summary: &mut Summary) -> Result<()> {
        for grant in live.iter().filter(|g| g.applied_at_us.is_none()) {
            Grant::mark_applied(&self.app.audit, &self.actor, grant.id, now_us())?;
            summary.opened += 1;
        }
        let live_ids: BTreeSet<GrantId> = live.iter().map(|g| g.id).collect();
        // A pinhole another live grant also opens keeps its connections.
        let mut still_open = BTreeSet::new();
        for grant in live {
            still_open.extend(grant.pinholes()?);
        }
        let ended = Grant::ended_unclosed(&mut *self.app.store.conn()?, now)?
            .into_iter()
            .filter(|g| !live_ids.contains(&g.id));
        for grant in ended {
            let pinholes: Vec<Pinhole> = grant
                .pinholes()?
                .into_iter()
                .filter(|p| !still_open.contains(p))
                .collect();
            summary.connections_cut += self.close(&grant, &pinholes)?;
            summary.closed += 1;
        }
        Ok(())
    }

    /// Not live and not closed: revoked, or past its expiry. Cuts the conntrack entries of
    /// `pinholes` (those no other live grant opens) and records the grant closed, audited
    /// with how long a revoke waited for the kernel.
    fn close(&self, grant: &Grant, pinholes: &[Pinhole]) -> Result<u32> {
        let (action, why) = if grant.revoked_at_us.is_some() {
            ("cut", "revoked")
        } else {
            ("expired", "expired")
        };
        let mut cut = 0;
        for pinhole in pinholes {
            cut += conntrack::cut(pinhole)?;
        }
        let mut details = json!({
            "why": why,
            "connections_cut": cut,
            "requester": grant.requester_addr,
            "device": grant.device_addr,
            "ports": grant.ports,
        });
        if let Some(revoked) = grant.revoked_at_us {
            // Milliseconds from the revoke to the kernel's confirmation: large after the
            // controller was down, when the lease had closed the pinhole meanwhile.
            details["confirmed_after_ms"] = json!((now_us() - revoked).max(0) / 1000);
        }
        Grant::mark_closed(
            &self.app.audit,
            &self.actor,
            grant.id,
            action,
            details,
            now_us(),
        )?;
        Ok(cut)
    }

    /// Applies one grant's change and touches nothing else: reads that grant and the live
    /// grants between the same two addresses (they may share its pinholes), then adds or
    /// removes only its elements in one transaction. When that transaction fails (the table
    /// is missing or was changed by hand), a full reconcile does it instead.
    pub fn apply_grant(&mut self, id: GrantId) -> Result<GrantState> {
        let now = now_us();
        let (grant, between) = {
            let mut conn = self.app.store.conn()?;
            let grant = Grant::find(&mut conn, id)?;
            let between =
                Grant::live_between(&mut conn, &grant.requester_addr, &grant.device_addr, now)?;
            (grant, between)
        };
        let live = between.iter().any(|g| g.id == id);
        let wanted = desired(&between, now)?;
        let own = desired(std::slice::from_ref(&grant), now)?;
        let (mut put, mut remove) = (Vec::new(), Vec::new());
        for (key, timed) in &own.pinholes {
            match wanted.pinholes.get(key) {
                Some(kept) => put.push(*kept),
                None => remove.push(timed.pinhole),
            }
        }
        let (mut put_forwards, mut remove_forwards) = (Vec::new(), Vec::new());
        for (key, forward) in &own.forwards {
            match wanted.forwards.get(key) {
                Some(kept) => put_forwards.push(*kept),
                None => remove_forwards.push(*forward),
            }
        }
        let batch = ruleset::grant_change(&put, &remove, &put_forwards, &remove_forwards);
        if let Err(err) = nft::apply(&batch) {
            tracing::warn!(error = %err, grant = id.0, "changing one grant failed; reconciling the whole table");
            let summary = self.reconcile()?;
            return Ok(if live {
                GrantState::Open {
                    pinholes: put.len(),
                }
            } else {
                GrantState::Closed {
                    removed: remove.len(),
                    connections_cut: summary.connections_cut,
                }
            });
        }
        if live {
            if grant.applied_at_us.is_none() {
                Grant::mark_applied(&self.app.audit, &self.actor, id, now_us())?;
            }
            return Ok(GrantState::Open {
                pinholes: put.len(),
            });
        }
        let connections_cut = if grant.closed_at_us.is_none() {
            self.close(&grant, &remove)?
        } else {
            0
        };
        Ok(GrantState::Closed {
            removed: remove.len(),
            connections_cut,
        })
    }

    fn renewal_due(&self) -> bool {
        let third = Duration::from_secs(u64::from(self.policy.lease_seconds) / 3)
            .max(Duration::from_millis(500));
        self.lease_renewed.is_none_or(|at| at.elapsed() >= third)
    }

    /// Called every second. When a third of the lease has passed, closes every grant that
    /// ended without being closed (a revoke whose poke never arrived), and only then renews
    /// the lease. A store that cannot be read, or a grant that cannot be closed, leaves the
    /// lease to lapse: every pinhole then closes within it. Returns whether it renewed.
    pub fn keep_lease(&mut self) -> Result<bool> {
        if !self.renewal_due() {
            return Ok(false);
        }
        let ended = Grant::ended_unclosed(&mut *self.app.store.conn()?, now_us())?;
        for grant in ended {
            self.apply_grant(grant.id)?;
        }
        self.renew_lease()?;
        Ok(true)
    }

    fn renew_lease(&mut self) -> Result<()> {
        nft::apply(&ruleset::renew_lease(&self.policy))?;
        self.lease_renewed = Some(Instant::now());
        self.status.lease_renewed_at_us = now_us();
        self.record_status();
        Ok(())
    }

    /// For the portal's overview; a store that cannot take it is logged, not fatal: the
    /// lease, not this row, is what keeps a revoke holding.
    fn record_status(&self) {
        let written = self
            .app
            .store
            .conn()
            .map_err(crate::FirewallError::from)
            .and_then(|mut conn| Ok(self.status.record(&mut conn)?));
        if let Err(err) = written {
            tracing::warn!(error = %err, "cannot record the controller's status in the store");
        }
    }
}

/// Whether the listing holds the lease element (it lapses, or was deleted by hand).
fn lease_present(listing: &Value) -> bool {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|object| object.get("set"))
        .filter(|set| set.get("name") == Some(&Value::from(ruleset::LEASE)))
        .any(|set| {
            set.get("elem")
                .and_then(Value::as_array)
                .is_some_and(|elems| !elems.is_empty())
        })
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
            // Two grants may open the same pinhole: it lasts as long as the longer one.
            wanted
                .pinholes
                .entry(pinhole)
                .and_modify(|t| t.timeout_seconds = t.timeout_seconds.max(timeout_seconds))
                .or_insert(TimedPinhole {
                    pinhole,
                    timeout_seconds,
                });
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
