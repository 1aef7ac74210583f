//! One client's connection, from its TLS handshake to its close: the sign-in (handshake,
//! CONNECT, and the credential checked against the store, all within one deadline), then
//! the loop that reads what arrived, stores its publishes in one batch and answers them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use appliance::device_ca;
use appliance::devices::{Credential, Device};
use appliance::time::now_us;
use bytes::BytesMut;
use futures_util::FutureExt;
use mqttbytes::QoS;
use openssl::ssl::{Ssl, SslAcceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_openssl::SslStream;

use super::codec::{
    CONNACK_UNACCEPTABLE_PROTOCOL, ConnectRefusal, Encoder, Greeting, Incoming, Publication,
    REVOKED, Reason, Refusal, TAKEN_OVER, Version, buffered_packet, read_connect, topic_device,
};
use crate::decode::{self, Accepted};
use crate::error::{IngestError, Refused};
use crate::gate::Pending;
use crate::live::{self, Closed, Live};
use crate::shared::Shared;

/// The largest CONNECT read. A device's is a few hundred bytes (wills are refused); a client
/// announcing more is closed at once instead of being waited for.
const MAX_CONNECT_BYTES: usize = 16 * 1024;
/// How long a client may stay quiet when it asked for no keep-alive.
const IDLE_LIMIT: Duration = Duration::from_secs(600);
/// The most packets of one connection handled (and their publishes stored) together.
const MAX_PACKETS_PER_BATCH: usize = 1000;

type Stream = SslStream<tokio::net::TcpStream>;

/// Reads until a packet is complete, waiting at most `limit` for more bytes.
async fn next_packet(
    version: Version,
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
    limit: Duration,
) -> Result<Incoming, String> {
    loop {
        if let Some(packet) = buffered_packet(version, buf, max)? {
            return Ok(packet);
        }
        read_more(stream, buf, limit).await?;
    }
}

async fn read_more(stream: &mut Stream, buf: &mut BytesMut, limit: Duration) -> Result<(), String> {
    tokio::time::timeout(limit, read_some(stream, buf))
        .await
        .map_err(|_| "keep-alive expired".to_owned())?
}

/// Reads what arrives, without a limit of its own (the caller's deadline bounds it).
async fn read_some(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), String> {
    let read = stream
        .read_buf(buf)
        .await
        .map_err(|err| format!("read failed: {err}"))?;
    if read == 0 {
        return Err("client closed the connection".into());
    }
    Ok(())
}

/// A connection that signed in: its stream, what is left of the bytes read with the
/// CONNECT, and who it is.
struct SignedIn {
    stream: Stream,
    buf: BytesMut,
    out: Encoder,
    keep_alive: u16,
    sender: Device,
    credential: Credential,
    registration: live::Registration,
}

/// Serves one accepted TCP connection until it closes; the error says why it did.
pub(super) async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut pending: Pending,
    acceptor: &SslAcceptor,
    shared: &Arc<Shared>,
    live: &Arc<Live>,
) -> Result<(), String> {
    let deadline = Duration::from_secs(shared.app.config.ingest.handshake_timeout_seconds);
    // One deadline for the TLS handshake, the CONNECT and its check, however the bytes
    // trickle in; and the slot may be taken back for a newer connection meanwhile.
    let signed_in = tokio::select! {
        // A connection that signed in as its slot was taken keeps going.
        biased;
        signed_in = tokio::time::timeout(deadline, sign_in(tcp, peer, acceptor, shared, live)) => {
            signed_in.map_err(|_| "no accepted CONNECT within the deadline".to_owned())??
        }
        _ = &mut pending.evicted => {
            return Err("closed to make room: too many connections have not signed in".into());
        }
    };
    drop(pending);
    let SignedIn {
        mut stream,
        mut buf,
        mut out,
        keep_alive,
        sender,
        credential,
        mut registration,
    } = signed_in;
    let version = out.version;
    let max = shared.limits.max_body_bytes;
    let idle = if keep_alive == 0 {
        IDLE_LIMIT
    } else {
        Duration::from_millis(u64::from(keep_alive) * 1500)
    };
    let sender = Arc::new(sender);

    loop {
        let first = tokio::select! {
            packet = next_packet(version, &mut stream, &mut buf, max, idle) => packet?,
            closed = &mut registration.closed => {
                let why = closed.unwrap_or(Closed::Revoked);
                out.closed_by_server(why);
                let _ = out.flush(&mut stream).await;
                let _ = stream.shutdown().await;
                return Err(match why {
                    Closed::Revoked => REVOKED.into(),
                    Closed::TakenOver => TAKEN_OVER.into(),
                });
            }
        };

        let mut packets = vec![first];
        // Everything that has already arrived goes into the same batch. TLS hands over one
        // record per read, and a client sends each PUBLISH as its own record, so read on
        // for as long as a read completes at once.
        while packets.len() < MAX_PACKETS_PER_BATCH {
            if let Some(packet) = buffered_packet(version, &mut buf, max)? {
                packets.push(packet);
                continue;
            }
            if buf.len() >= max {
                break;
            }
            match stream.read_buf(&mut buf).now_or_never() {
                None => break,
                Some(Ok(0)) => break, // closed: the next read says so
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(format!("read failed: {err}")),
            }
        }
        let mut pending: Vec<Publication> = Vec::new();
        let mut closing: Option<Refusal> = None;
        let mut client_left = false;
        let mut replies: Vec<Incoming> = Vec::new();
        for packet in packets {
            match packet {
                Incoming::Publish(publish) if publish.qos == QoS::ExactlyOnce => {
                    closing = Some(Refusal {
                        pkid: None,
                        reason: Reason::QoSNotSupported,
                        message: "QoS 2 is not served; publish at QoS 1".into(),
                    });
                    break;
                }
                // CONNACK said "retain available: 0" (MQTT 5), so a retained publish is a
                // protocol error (MQTT 5, 3.3.1.3), not something to store.
                Incoming::Publish(publish) if publish.retain && version == Version::V5 => {
                    closing = Some(Refusal {
                        pkid: None,
                        reason: Reason::RetainNotSupported,
                        message: "retained messages are not served; publish without retain".into(),
                    });
                    break;
                }
                Incoming::Publish(publish) => pending.push(publish),
                reply @ (Incoming::PingReq | Incoming::Subscribe { .. }) => replies.push(reply),
                Incoming::Disconnect => {
                    client_left = true;
                    break;
                }
                Incoming::Unexpected(what) => {
                    closing = Some(Refusal {
                        pkid: None,
                        reason: Reason::ProtocolError,
                        message: format!("unexpected packet {what}"),
                    });
                    break;
                }
            }
        }
        let (acks, refusal) = store_publishes(shared, &sender, &credential, peer, pending).await;
        for pkid in acks {
            out.puback(pkid);
        }
        for reply in replies {
            match reply {
                Incoming::PingReq => out.pingresp(),
                Incoming::Subscribe { pkid, filters } => out.suback_refused(pkid, filters),
                _ => {}
            }
        }
        let refusal = refusal.or(closing);
        if let Some(refusal) = &refusal {
            out.refusal(refusal);
        }
        out.flush(&mut stream).await?;
        if let Some(refusal) = refusal {
            let _ = stream.shutdown().await;
            return Err(refusal.message);
        }
        if client_left {
            return Err("client disconnected".into());
        }
    }
}

/// The TLS handshake, the CONNECT and its check against the store; a refused CONNECT is
/// answered (CONNACK with a failure code) and audited. The caller bounds it in time.
async fn sign_in(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: &SslAcceptor,
    shared: &Arc<Shared>,
    live: &Arc<Live>,
) -> Result<SignedIn, String> {
    let ssl = Ssl::new(acceptor.context()).map_err(|err| err.to_string())?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|err| err.to_string())?;
    std::pin::Pin::new(&mut stream)
        .accept()
        .await
        .map_err(|err| format!("TLS handshake failed: {err}"))?;
    let max = shared.limits.max_body_bytes;
    let mut buf = BytesMut::with_capacity(1024);
    let hello = loop {
        match read_connect(&mut buf, MAX_CONNECT_BYTES.min(max))? {
            Some(Greeting::Hello(hello)) => break hello,
            Some(Greeting::UnsupportedProtocol(what)) => {
                let _ = stream.write_all(&CONNACK_UNACCEPTABLE_PROTOCOL).await;
                let _ = stream.shutdown().await;
                return Err(format!("refused {what}"));
            }
            None => read_some(&mut stream, &mut buf).await?,
        }
    };
    let mut out = Encoder::new(hello.version);
    if let Some((qos, retain)) = hello.will {
        let refusal = ConnectRefusal::Will(qos, retain);
        out.connack(Err(refusal), max);
        let _ = out.flush(&mut stream).await;
        let _ = stream.shutdown().await;
        return Err(refusal.reason().into());
    }
    let certificate = stream
        .ssl()
        .peer_certificate()
        .and_then(|c| c.to_der().ok());
    // Registered before the store is asked, so that a revoke committing after the check
    // finds the connection registered (see `live`).
    let credential = match (&certificate, &hello.login) {
        (Some(der), _) => Credential::of_certificate(der).ok(),
        (None, Some((_, password))) => Some(Credential::of_secret(password)),
        (None, None) => None,
    };
    let registration = credential.clone().map(|c| live.register(c));
    let sender = match (certificate, hello.login) {
        // A client certificate from the device CA names the device; a username, if sent,
        // must agree with it.
        (Some(der), login) => {
            let worker = shared.clone();
            let username = login.map(|l| l.0);
            let claimed = username.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = worker.app.store.conn().ok()?;
                device_ca::authenticate(&mut conn, &der, now_us())
                    .ok()
                    .flatten()
                    .filter(|device| claimed.as_ref().is_none_or(|u| *u == device.serial))
            })
            .await
            .ok()
            .flatten()
            .ok_or(username)
        }
        (None, Some((username, password))) => {
            let worker = shared.clone();
            let claimed = username.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = worker.app.store.conn().ok()?;
                Device::authenticate(&mut conn, &password)
                    .ok()
                    .flatten()
                    .filter(|device| device.serial == claimed)
            })
            .await
            .ok()
            .flatten()
            .ok_or(Some(username))
        }
        (None, None) => Err(None),
    };
    let (sender, credential, registration) = match (sender, credential, registration) {
        (Ok(sender), Some(credential), Some(registration)) => (sender, credential, registration),
        (Ok(sender), _, _) => return Err(format!("no credential kept for {}", sender.serial)),
        (Err(username), _, _) => {
            let worker = shared.clone();
            let source = peer.ip().to_string();
            let _ = tokio::task::spawn_blocking(move || {
                worker
                    .auth_failures
                    .record(&worker.app, &source, "mqtt", username.as_deref())
            })
            .await;
            out.connack(Err(ConnectRefusal::BadCredentials), max);
            let _ = out.flush(&mut stream).await;
            return Err(ConnectRefusal::BadCredentials.reason().into());
        }
    };
    let taken_over = registration.take_client_id(&sender.serial, &hello.client_id);
    if taken_over > 0 {
        tracing::info!(device = %sender.serial, client_id = %hello.client_id, "a new connection took over the client id");
    }
    out.connack(Ok(()), max);
    out.flush(&mut stream).await?;
    Ok(SignedIn {
        stream,
        buf,
        out,
        keep_alive: hello.keep_alive,
        sender,
        credential,
        registration,
    })
}

/// Validates and stores the publishes, in order, up to the first bad one. Returns the
/// packet ids to acknowledge (all stored) and why the connection must close, if it must.
async fn store_publishes(
    shared: &Arc<Shared>,
    sender: &Arc<Device>,
    credential: &Credential,
    peer: SocketAddr,
    publishes: Vec<Publication>,
) -> (Vec<u16>, Option<Refusal>) {
    if publishes.is_empty() {
        return (Vec::new(), None);
    }
    let first_pkid = publishes
        .iter()
        .find(|p| p.qos == QoS::AtLeastOnce)
        .map(|p| p.pkid);
    let worker = shared.clone();
    let sender_for_check = sender.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let limits = worker.limits;
        let mut merged = Accepted::default();
        let mut acks = Vec::new();
        let mut conn = match worker.app.store.conn() {
            Ok(conn) => conn,
            Err(_) => {
                let refusal = Refusal {
                    pkid: publishes
                        .first()
                        .and_then(|p| (p.qos == QoS::AtLeastOnce).then_some(p.pkid)),
                    reason: Reason::Unavailable,
                    message: IngestError::Unavailable.to_string(),
                };
                return (merged, acks, Some(refusal));
            }
        };
        for publish in publishes {
            let pkid = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
            let Some(device) = topic_device(&publish.topic) else {
                let refusal = Refusal {
                    pkid,
                    reason: Reason::TopicNameInvalid,
                    message: format!(
                        "topic {:?} is not plantgate/{{serial}}/readings",
                        publish.topic
                    ),
                };
                return (merged, acks, Some(refusal));
            };
            let result = decode::Format::from_content_type(publish.content_type.as_deref())
                .and_then(|format| {
                    let batch = decode::parse(format, &publish.payload, &limits)?;
                    if let Some(other) = batch
                        .readings
                        .iter()
                        .filter_map(|r| r.device.as_deref())
                        .find(|d| *d != device)
                    {
                        return Err(IngestError::ForeignDevice {
                            credential: sender_for_check.serial.clone(),
                            device: other.to_owned(),
                        });
                    }
                    decode::accept(
                        &mut conn,
                        &sender_for_check,
                        device,
                        batch,
                        &limits,
                        now_us(),
                    )
                });
            match result {
                Ok(accepted) => {
                    merged.readings.extend(accepted.readings);
                    merged.states.extend(accepted.states);
                    acks.extend(pkid);
                }
                Err(err) => {
                    if matches!(
                        err,
                        IngestError::ForeignDevice { .. } | IngestError::UnknownDevice(_)
                    ) {
                        let event = appliance::AuditEvent::new(
                            appliance::Actor::Device(sender_for_check.serial.clone()),
                            "device.publish.denied",
                        )
                        .source(peer.ip())
                        .target(&publish.topic)
                        .outcome(appliance::Outcome::Denied)
                        .details(serde_json::json!({ "reason": err.to_string() }));
                        drop(conn);
                        if let Err(audit_err) = worker.app.audit.record(event) {
                            tracing::error!(error = %audit_err, "cannot audit a denied publish");
                        }
                    }
                    let refusal = Refusal {
                        pkid,
                        reason: Reason::of(&err),
                        message: format!("{}: {err}", err.code()),
                    };
                    return (merged, acks, Some(refusal));
                }
            }
        }
        (merged, acks, None)
    })
    .await;
    let (merged, acks, refusal) = match checked {
        Ok(checked) => checked,
        Err(_) => {
            let refusal = Refusal {
                pkid: None,
                reason: Reason::Unavailable,
                message: "internal error".into(),
            };
            return (Vec::new(), Some(refusal));
        }
    };
    if merged.readings.is_empty() && merged.states.is_empty() {
        return (Vec::new(), refusal);
    }
    match shared.writer.store(merged, credential.clone()).await {
        Ok(_) => (acks, refusal),
        Err(Refused::Revoked) => (
            Vec::new(),
            Some(Refusal {
                pkid: first_pkid,
                reason: Reason::Revoked,
                message: format!("{REVOKED}; nothing of this batch was stored"),
            }),
        ),
        Err(Refused::Unavailable) => (
            Vec::new(),
            Some(Refusal {
                pkid: None,
                reason: Reason::Unavailable,
                message: "store unavailable; nothing acknowledged".into(),
            }),
        ),
        // Nothing of the batch is acknowledged: the client keeps its QoS 1 publishes and
        // sends them again after reconnecting, once space is freed.
        Err(Refused::StorageFull) => (
            Vec::new(),
            Some(Refusal {
                pkid: first_pkid,
                reason: Reason::StorageFull,
                message: format!(
                    "{}: {}",
                    IngestError::StorageFull.code(),
                    IngestError::StorageFull
                ),
            }),
        ),
    }
}
