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
    revoke: oneshot::Sender<()>,
}

/// A connection's entry; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    live: Arc<Live>,
    id: u64,
    /// Completes when the credential was found revoked: close the connection.
    pub revoked: oneshot::Receiver<()>,
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
        let (revoke, revoked) = oneshot::channel();
        state.entries.insert(id, Entry { credential, revoke });
        Registration {
            live: self.clone(),
            id,
            revoked,
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
                let _ = entry.revoke.send(());
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
        assert!(first.revoked.try_recv().is_ok());
        assert!(second.revoked.try_recv().is_ok());
        assert!(other.revoked.try_recv().is_err());
        assert_eq!(live.len(), 1);
        drop(other);
        assert!(live.is_empty());
        drop((first, second));
        assert!(live.is_empty());
    }
}
