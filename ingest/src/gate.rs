//! Admission of connections that have not authenticated yet, MQTT and HTTPS alike: from
//! `accept` until their CONNECT was accepted (or refused), or a request on them
//! authenticated. Each holds a [`Pending`] slot while it is in that
//! state; there are at most `per_address` slots of one source address and `total` in all.
//!
//! A new connection is never turned away for them. At a limit, a slot is taken back: at the
//! per-address limit, the oldest of the new connection's own address; at the total limit,
//! the oldest of the address that holds the most slots. Its connection closes at once. A
//! device's TLS handshake and CONNECT take milliseconds; a slow or silent client holds its
//! slot until it is evicted or its deadline passes. So clients that never sign in can
//! neither keep a device out nor hold more than `total` file descriptors, and the ones from
//! one address take the slots of that address first.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Context;

use tokio::sync::oneshot;

/// Checks the ingest's settings for connections (`handshake_timeout_seconds`, the caps)
/// before anything starts; the problem as one line.
pub fn validate(ingest: &appliance::config::IngestConfig) -> Result<(), String> {
    let ranges = [
        (
            "ingest.handshake_timeout_seconds",
            usize::try_from(ingest.handshake_timeout_seconds).unwrap_or(usize::MAX),
            1,
            300,
        ),
        (
            "ingest.max_unauthenticated",
            ingest.max_unauthenticated,
            1,
            100_000,
        ),
        (
            "ingest.max_unauthenticated_per_address",
            ingest.max_unauthenticated_per_address,
            1,
            ingest.max_unauthenticated.max(1),
        ),
        (
            "ingest.https_max_connections",
            ingest.https_max_connections,
            ingest.http_workers.max(1),
            1_000_000,
        ),
    ];
    for (key, value, low, high) in ranges {
        if !(low..=high).contains(&value) {
            return Err(format!("{key} = {value}: must be between {low} and {high}"));
        }
    }
    Ok(())
}

/// The slots of connections that have not authenticated.
#[derive(Debug)]
pub struct Gate {
    total: usize,
    per_address: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// By age: slot ids grow.
    slots: BTreeMap<u64, Slot>,
    by_address: HashMap<IpAddr, BTreeSet<u64>>,
    evicted: u64,
}

#[derive(Debug)]
struct Slot {
    address: IpAddr,
    evict: oneshot::Sender<()>,
}

/// A connection's slot while it has not authenticated; dropping it frees the slot.
#[derive(Debug)]
pub struct Pending {
    gate: Arc<Gate>,
    id: u64,
    /// Completes when the slot was taken back for a newer connection: close at once.
    pub evicted: oneshot::Receiver<()>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.remove(self.id);
    }
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if let Some(ids) = self.by_address.get_mut(&slot.address) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_address.remove(&slot.address);
            }
        }
        Some(slot)
    }

    /// Takes back the oldest slot of `address`.
    fn evict_oldest_of(&mut self, address: IpAddr) -> bool {
        let oldest = self
            .by_address
            .get(&address)
            .and_then(|ids| ids.first().copied());
        match oldest.and_then(|id| self.remove(id)) {
            Some(slot) => {
                // The connection may be gone already: then there is nobody to tell.
                let _ = slot.evict.send(());
                self.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Takes back the oldest slot of the address that holds the most (of two with as many,
    /// the one whose oldest slot is older).
    fn evict_from_the_largest(&mut self) -> bool {
        let largest = self
            .by_address
            .iter()
            .filter_map(|(address, ids)| ids.first().map(|oldest| (ids.len(), *oldest, *address)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, _, address)| address);
        largest.is_some_and(|address| self.evict_oldest_of(address))
    }
}

impl Gate {
    /// `total` and `per_address` are at least 1.
    pub fn new(total: usize, per_address: usize) -> Gate {
        Gate {
            total: total.max(1),
            per_address: per_address.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (each change is one call), so a
        // poisoned lock is still good to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `address`, evicting older ones at the limits.
    pub fn admit(self: &Arc<Gate>, address: IpAddr) -> Pending {
        let mut state = self.lock();
        while state.by_address.get(&address).map_or(0, BTreeSet::len) >= self.per_address {
            if !state.evict_oldest_of(address) {
                break;
            }
        }
        while state.slots.len() >= self.total {
            if !state.evict_from_the_largest() {
                break;
            }
        }
        let id = state.next;
        state.next += 1;
        let (evict, evicted) = oneshot::channel();
        state.slots.insert(id, Slot { address, evict });
        state.by_address.entry(address).or_default().insert(id);
        Pending {
            gate: self.clone(),
            id,
            evicted,
        }
    }

    /// Takes back one slot (as [`Gate::admit`] would at the total limit), to free a file
    /// descriptor when the process has none left. Returns whether there was one.
    pub fn shed_one(&self) -> bool {
        self.lock().evict_from_the_largest()
    }

    /// Connections that have not authenticated, now.
    pub fn pending(&self) -> usize {
        self.lock().slots.len()
    }

    /// Slots taken back so far.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

/// An HTTPS connection's slot, shared by its stream and (through the connection's data) its
/// requests, which give it back once one authenticated. Not `Send`: a connection stays on
/// its worker.
#[derive(Clone, Debug)]
pub struct GateSlot(Rc<RefCell<Option<Pending>>>);

impl GateSlot {
    pub fn new(pending: Pending) -> GateSlot {
        GateSlot(Rc::new(RefCell::new(Some(pending))))
    }

    /// Gives the slot back: the connection belongs to a device now.
    pub fn release(&self) {
        self.0.borrow_mut().take();
    }

    /// Whether the gate took the slot back for a newer connection (waking `cx` when it does).
    pub fn evicted(&self, cx: &mut Context<'_>) -> bool {
        match self.0.borrow_mut().as_mut() {
            // The sender is dropped only after it sent, or with the slot: either way it is gone.
            Some(pending) => Pin::new(&mut pending.evicted).poll(cx).is_ready(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_per_address_limit_evicts_that_addresses_oldest() {
        let gate = Arc::new(Gate::new(100, 2));
        let mut a1 = gate.admit(ip(1));
        let mut a2 = gate.admit(ip(1));
        let mut b1 = gate.admit(ip(2));
        let mut a3 = gate.admit(ip(1));
        assert!(a1.evicted.try_recv().is_ok(), "the oldest of 10.0.0.1 goes");
        assert!(a2.evicted.try_recv().is_err());
        assert!(
            b1.evicted.try_recv().is_err(),
            "another address is not touched"
        );
        assert!(a3.evicted.try_recv().is_err());
        assert_eq!(gate.pending(), 3);
        drop(a1);
        assert_eq!(gate.pending(), 3, "an evicted slot was already freed");
        drop((a2, a3));
        assert_eq!(gate.pending(), 1);
    }

    #[test]
    fn the_total_limit_evicts_from_the_address_that_holds_the_most() {
        let gate = Arc::new(Gate::new(4, 10));
        let mut device = gate.admit(ip(9));
        let mut flood: Vec<Pending> = (0..3).map(|_| gate.admit(ip(1))).collect();
        // Full: a new connection from anywhere takes the flood's oldest, not the device's
        // older slot.
        let mut newcomer = gate.admit(ip(2));
        assert!(device.evicted.try_recv().is_err());
        assert!(newcomer.evicted.try_recv().is_err());
        assert!(flood[0].evicted.try_recv().is_ok());
        assert!(flood[1].evicted.try_recv().is_err());
        assert_eq!(gate.pending(), 4);
        assert_eq!(gate.evicted(), 1);
        assert!(gate.shed_one());
        assert!(flood[1].evicted.try_recv().is_ok());
        assert_eq!(gate.pending(), 3);
    }

    #[test]
    fn the_defaults_are_valid_and_nonsense_is_refused_in_one_line() {
        let defaults = appliance::config::IngestConfig::default();
        assert_eq!(validate(&defaults), Ok(()));
        let zero_deadline = appliance::config::IngestConfig {
            handshake_timeout_seconds: 0,
            ..defaults.clone()
        };
        assert_eq!(
            validate(&zero_deadline),
            Err("ingest.handshake_timeout_seconds = 0: must be between 1 and 300".into())
        );
        let per_address_above_total = appliance::config::IngestConfig {
            max_unauthenticated_per_address: defaults.max_unauthenticated + 1,
            ..defaults.clone()
        };
        assert!(validate(&per_address_above_total).is_err());
        let fewer_connections_than_workers = appliance::config::IngestConfig {
            https_max_connections: 1,
            http_workers: 2,
            ..defaults
        };
        assert!(validate(&fewer_connections_than_workers).is_err());
    }

    #[test]
    fn a_freed_slot_is_not_evicted_later() {
        let gate = Arc::new(Gate::new(1, 1));
        drop(gate.admit(ip(1)));
        let mut second = gate.admit(ip(1));
        assert!(second.evicted.try_recv().is_err());
        assert_eq!(gate.evicted(), 0);
    }
}
