//! MQTT 3.1.1 and MQTT 5 over TLS, with packets decoded and encoded by the `mqttbytes` crate.
//!
//! Only what a telemetry device needs: CONNECT with the device serial as username and its
//! secret as password (or a client certificate from the device CA), PUBLISH at QoS 0 or 1 to
//! `plantgate/{serial}/readings` (the payload is the same batch as over HTTPS: JSON, or CBOR
//! when an MQTT 5 publish says `content-type: application/cbor`), PINGREQ and DISCONNECT.
//! The protocol level of the CONNECT picks the codec for the whole connection. Complete
//! PUBLISH packets that arrive together are stored in one batch, and their PUBACKs are
//! written only after the writer reported the batch durable. A publish to a topic the device
//! may not use, a payload that is not a valid batch, QoS 2 or a malformed packet closes the
//! connection. MQTT 3.1.1 has no negative acknowledgement, so it closes without a PUBACK;
//! MQTT 5 first sends a PUBACK (at QoS 1) and a DISCONNECT carrying a reason code and a
//! reason string. What CONNACK advertises holds: no retain (an MQTT 5 retained PUBLISH is
//! refused), no wills (a CONNECT with one is refused), QoS 1 at most. MQTT 3.1 and unknown
//! levels get CONNACK "unacceptable protocol version". A new connection of a device with the
//! client id of an open one takes it over (see [`crate::live`]).
//!
//! Until its CONNECT is accepted a connection holds a slot of the [`crate::gate::Gate`] that
//! the HTTPS listener shares, and must finish the TLS handshake and the CONNECT within one
//! deadline (`ingest.handshake_timeout_seconds`), however slowly its bytes arrive. Once signed in, it is registered in [`Live`] with its
//! credential: when that is revoked (the device revoked, its secret rotated, its
//! certificates revoked), the connection is closed within [`live::POLL`] and a moment, with
//! DISCONNECT 0x98 (administrative action) in MQTT 5; and the writer refuses anything it
//! sent after the revoke committed.
//!
//! Here is the listener ([`serve`]); one connection's session is in `session`, the packets
//! it reads and writes in `codec`.

mod codec;
mod session;

use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::SslAcceptor;
use tokio::net::TcpListener;

#[doc(hidden)]
pub use codec::decode_for_fuzzing;
pub use codec::readings_topic;

use crate::live::{self, Live};
use crate::shared::Shared;
use session::connection;

/// `accept` failed for want of file descriptors: the process's (EMFILE) or the system's (ENFILE).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, acceptor: SslAcceptor, shared: Arc<Shared>) {
    let gate = shared.gate.clone();
    let live = Arc::new(Live::default());
    tokio::spawn(live::watch(live.clone(), shared.app.store.clone()));
    let acceptor = Arc::new(acceptor);
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // PUBACKs are small writes that a client waits for: without TCP_NODELAY,
                // Nagle's algorithm holds one back until the client's delayed ACK of the
                // previous one, up to 40 ms on Linux.
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %err, "cannot set TCP_NODELAY");
                }
                let pending = gate.admit(peer.ip());
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                let live = live.clone();
                tokio::spawn(async move {
                    if let Err(reason) =
                        connection(tcp, peer, pending, &acceptor, &shared, &live).await
                    {
                        tracing::info!(%peer, %reason, "MQTT connection closed");
                    }
                });
            }
            Err(err) if matches!(err.raw_os_error(), Some(EMFILE | ENFILE)) => {
                // Out of file descriptors: a connection that has not signed in gives its
                // own up, so that the next one (perhaps a device) can be accepted.
                let shed = gate.shed_one();
                tracing::warn!(error = %err, shed, "MQTT accept failed: no file descriptor left");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
