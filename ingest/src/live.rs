//! Revocation for connections that are already open. A revoke, a rotated secret or a
//! revoked certificate commits in another process (the `plantgate` CLI, the portal), so the
//! ingest learns of it from the store:
//!
//! - Every open MQTT connection is registered here with the credential it signed in with,
//!   before the store is asked whether that credential is good, and stays so until it closes.
//! - [`watch`] reads [`devices::credentials_generation`] every [`POLL`] (one row). When it
//!   moved, it checks the credentials of every registered connection at once
//!   ([`devices::revoked_among`]) and closes the connections whose credential no longer
//!   authenticates. Every [`SWEEP`] it checks them even if it did not move (a certificate
//!   that expired, a change made around the audit log).
//! - The writer checks the credential again in the transaction that stores a batch
//!   ([`devices::Credential::hold`]), so a publish that arrives between a revoke and the
//!   watcher's next look is refused, not stored.
//!
//! The same registry closes a connection that a newer one of the same device took over by
//! connecting with the same client id ([`Registration::take_client_id`]), as MQTT asks.
//! Client ids are kept per device, so one device can never close another's connection.
//!
//! The order makes it complete: a connection registers before its credential is checked,
//! and the watcher reads the counter before it takes the list of connections. A revoke that
//! commits after a connection's check moves the counter, so the first look after it sees a
//! change and a list that holds that connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use appliance::Store;
use appliance::devices::{self, Credential};
use tokio::sync::oneshot;

/// How often the watcher reads the generation counter.
pub const POLL: Duration = Duration::from_millis(200);
/// How often it checks every connection's credential whether or not the counter moved.
pub const SWEEP: Duration = Duration::from_secs(60);

/// The open connections' credentials.
#[derive(Debug, Default)]
pub struct Live {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    entries: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    credential: Credential,
    /// The device serial and the client id, once the connection signed in.
    client: Option<(String, String)>,
    close: oneshot::Sender<Closed>,
}

/// Why the service closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its credential was revoked.
    Revoked,
    /// A newer connection of the same device took its client id.
    TakenOver,
}

/// A connection's entry; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    live: Arc<Live>,
    id: u64,
    /// Completes when the connection must close, saying why.
    pub closed: oneshot::Receiver<Closed>,
}

impl Registration {
    /// Records that this connection is `client_id` of device `serial`, and closes any
    /// other connection that was (taken over). An empty client id takes nothing over.
    /// Returns how many were closed.
    pub fn take_client_id(&self, serial: &str, client_id: &str) -> usize {
        if client_id.is_empty() {
            return 0;
        }
        let key = (serial.to_owned(), client_id.to_owned());
        let mut state = self.live.lock();
        let ids: Vec<u64> = state
            .entries
            .iter()
            .filter(|(id, entry)| **id != self.id && entry.client.as_ref() == Some(&key))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(entry) = state.entries.remove(id) {
                let _ = entry.close.send(Closed::TakenOver);
            }
        }
        if let Some(entry) = state.entries.get_mut(&self.id) {
            entry.client = Some(key);
        }
        ids.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.lock().entries.remove(&self.id);
    }
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each change is a single insert or remove: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection that signs in with `credential`; call before checking it.
    pub fn register(self: &Arc<Live>, credential: Credential) -> Registration {
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        let (close, closed) = oneshot::channel();
        state.entries.insert(
            id,
            Entry {
                credential,
                client: None,
                close,
            },
        );
        Registration {
            live: self.clone(),
            id,
            closed,
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn credentials(&self) -> Vec<Credential> {
        let mut credentials: Vec<Credential> = self
            .lock()
            .entries
            .values()
            .map(|entry| entry.credential.clone())
            .collect();
        credentials.sort();
        credentials.dedup();
        credentials
    }

    /// Tells every connection of these credentials to close; returns how many.
    fn revoke(&self, revoked: &[Credential]) -> usize {
        let mut state = self.lock();
        let ids: Vec<u64> = state
            .entries
            .iter()
            .filter(|(_, entry)| revoked.contains(&entry.credential))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(entry) = state.entries.remove(id) {
                let _ = entry.close.send(Closed::Revoked);
            }
        }
        ids.len()
    }
}

/// What one look found.
enum Look {
    Unchanged,
    Checked {
        generation: i64,
        revoked: Vec<Credential>,
    },
}

/// Watches the store for revoked credentials and closes their connections; runs for as long
/// as the process.
pub async fn watch(live: Arc<Live>, store: Store) {
    let mut seen: Option<i64> = None;
    let mut last_sweep = Instant::now();
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let sweep = last_sweep.elapsed() >= SWEEP;
        let (look_live, look_store) = (live.clone(), store.clone());
        let look = tokio::task::spawn_blocking(move || {
            let mut conn = look_store.conn()?;
            let generation = devices::credentials_generation(&mut conn)?;
            if seen == Some(generation) && !sweep {
                return Ok(Look::Unchanged);
            }
            // Only now, after the counter was read: see the module's comment.
            let credentials = look_live.credentials();
            let revoked = if credentials.is_empty() {
                Vec::new()
            } else {
                devices::revoked_among(&mut conn, &credentials, appliance::time::now_us())?
            };
            Ok::<_, appliance::Error>(Look::Checked {
                generation,
                revoked,
            })
        })
        .await;
        match look {
            Ok(Ok(Look::Unchanged)) => {}
            Ok(Ok(Look::Checked {
                generation,
                revoked,
            })) => {
                seen = Some(generation);
                if sweep {
                    last_sweep = Instant::now();
                }
                if !revoked.is_empty() {
                    let closed = live.revoke(&revoked);
                    tracing::info!(
                        credentials = revoked.len(),
                        connections = closed,
                        "closing MQTT connections whose credential was revoked"
                    );
                }
            }
            // Tried again at the next tick; the writer still refuses what a revoked
            // credential sends meanwhile.
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot check open connections' credentials")
            }
            Err(err) => tracing::warn!(error = %err, "the credential check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_tells_every_connection_of_the_credential_and_only_them() {
        let live = Arc::new(Live::default());
        let a = Credential::Secret(vec![1; 32]);
        let b = Credential::Certificate(vec![2; 32]);
        let mut first = live.register(a.clone());
        let mut second = live.register(a.clone());
        let mut other = live.register(b);
        assert_eq!(live.credentials().len(), 2);
        assert_eq!(live.revoke(std::slice::from_ref(&a)), 2);
        assert_eq!(first.closed.try_recv(), Ok(Closed::Revoked));
        assert_eq!(second.closed.try_recv(), Ok(Closed::Revoked));
        assert!(other.closed.try_recv().is_err());
        assert_eq!(live.len(), 1);
        drop(other);
        assert!(live.is_empty());
        drop((first, second));
        assert!(live.is_empty());
    }

    #[test]
    fn a_client_id_is_taken_over_within_one_device_only() {
        let live = Arc::new(Live::default());
        let secret = || Credential::Secret(vec![1; 32]);
        let mut old = live.register(secret());
        let mut other_device = live.register(Credential::Secret(vec![2; 32]));
        let mut anonymous = live.register(secret());
        assert_eq!(old.take_client_id("MM-1", "press-1"), 0);
        assert_eq!(other_device.take_client_id("MM-2", "press-1"), 0);
        assert_eq!(anonymous.take_client_id("MM-1", ""), 0);
        let mut new = live.register(secret());
        assert_eq!(new.take_client_id("MM-1", "press-1"), 1);
        assert_eq!(old.closed.try_recv(), Ok(Closed::TakenOver));
        assert!(other_device.closed.try_recv().is_err());
        assert!(anonymous.closed.try_recv().is_err());
        assert!(new.closed.try_recv().is_err());
        assert_eq!(live.len(), 3);
    }
}
