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
//! reason string.
//!
//! Until its CONNECT is accepted a connection holds a slot of the [`Gate`] and must finish
//! the TLS handshake and the CONNECT within one deadline (`ingest.handshake_timeout_seconds`),
//! however slowly its bytes arrive. Once signed in, it is registered in [`Live`] with its
//! credential: when that is revoked (the device revoked, its secret rotated, its
//! certificates revoked), the connection is closed within [`live::POLL`] and a moment, with
//! DISCONNECT 0x98 (administrative action) in MQTT 5; and the writer refuses anything it
//! sent after the revoke committed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use appliance::device_ca;
use appliance::devices::{Credential, Device};
use appliance::time::now_us;
use bytes::BytesMut;
use futures_util::FutureExt;
use mqttbytes::{QoS, v4, v5};
use openssl::ssl::{Ssl, SslAcceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_openssl::SslStream;

use crate::decode::{self, Accepted};
use crate::error::IngestError;
use crate::gate::{Gate, Pending};
use crate::http::Shared;
use crate::live::{self, Live};
use crate::writer::Refused;

/// The largest CONNECT read. A device's is a few hundred bytes (no will messages are
/// served); a client announcing more is closed at once instead of being waited for.
const MAX_CONNECT_BYTES: usize = 16 * 1024;
/// `accept` failed for want of file descriptors: the process's (EMFILE) or the system's (ENFILE).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// How long a client may stay quiet when it asked for no keep-alive.
const IDLE_LIMIT: Duration = Duration::from_secs(600);
/// The most packets of one connection handled (and their publishes stored) together.
const MAX_PACKETS_PER_BATCH: usize = 1000;

/// The reason string of the DISCONNECT sent when the credential was revoked.
const REVOKED: &str = "the device's credential was revoked";

/// The topic a device publishes its readings to.
pub fn readings_topic(serial: &str) -> String {
    format!("plantgate/{serial}/readings")
}

fn topic_device(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("plantgate/")?
        .strip_suffix("/readings")
        .filter(|serial| !serial.is_empty() && !serial.contains('/'))
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, acceptor: SslAcceptor, shared: Arc<Shared>) {
    let ingest = &shared.app.config.ingest;
    let gate = Arc::new(Gate::new(
        ingest.max_unauthenticated,
        ingest.max_unauthenticated_per_address,
    ));
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

type Stream = SslStream<tokio::net::TcpStream>;

/// The protocol a connection speaks, chosen by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V311,
    V5,
}

/// What a CONNECT said, in either version.
struct Hello {
    version: Version,
    keep_alive: u16,
    login: Option<(String, String)>,
}

/// A packet from the client, in either version, reduced to what the service acts on.
enum Incoming {
    Publish(Publication),
    PingReq,
    Subscribe { pkid: u16, filters: usize },
    Disconnect,
    Unexpected(String),
}

/// One PUBLISH.
struct Publication {
    qos: QoS,
    pkid: u16,
    topic: String,
    payload: bytes::Bytes,
    /// MQTT 5's content-type property.
    content_type: Option<String>,
}

/// Why a publish was refused, for MQTT 5's reason codes.
#[derive(Debug)]
struct Refusal {
    /// The QoS 1 packet id of the refused publish, if it had one.
    pkid: Option<u16>,
    reason: Reason,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    NotAuthorized,
    TopicNameInvalid,
    PayloadFormatInvalid,
    QoSNotSupported,
    ProtocolError,
    Unavailable,
    /// The data partition is full: MQTT 5's "quota exceeded", the nearest code it has.
    StorageFull,
    /// The credential was revoked after the connection signed in.
    Revoked,
}

impl Reason {
    fn of(err: &IngestError) -> Reason {
        match err {
            IngestError::ForeignDevice { .. } | IngestError::UnknownDevice(_) => {
                Reason::NotAuthorized
            }
            IngestError::Unavailable => Reason::Unavailable,
            IngestError::StorageFull => Reason::StorageFull,
            _ => Reason::PayloadFormatInvalid,
        }
    }

    fn puback(self) -> v5::PubAckReason {
        match self {
            Reason::NotAuthorized | Reason::Revoked => v5::PubAckReason::NotAuthorized,
            Reason::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
            Reason::PayloadFormatInvalid => v5::PubAckReason::PayloadFormatInvalid,
            Reason::QoSNotSupported | Reason::ProtocolError | Reason::Unavailable => {
                v5::PubAckReason::ImplementationSpecificError
            }
            Reason::StorageFull => v5::PubAckReason::QuotaExceeded,
        }
    }

    fn disconnect(self) -> v5::DisconnectReasonCode {
        match self {
            Reason::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
            Reason::TopicNameInvalid => v5::DisconnectReasonCode::TopicNameInvalid,
            Reason::PayloadFormatInvalid => v5::DisconnectReasonCode::PayloadFormatInvalid,
            Reason::QoSNotSupported => v5::DisconnectReasonCode::QoSNotSupported,
            Reason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
            Reason::Unavailable => v5::DisconnectReasonCode::ImplementationSpecificError,
            Reason::StorageFull => v5::DisconnectReasonCode::QuotaExceeded,
            Reason::Revoked => v5::DisconnectReasonCode::AdministrativeAction,
        }
    }
}

/// The CONNECT at the head of `buf`, decoded by whichever of mqttbytes' codecs accepts its
/// protocol level; `None` until it is complete.
fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Option<Hello>, String> {
    if !framed(buf, max)? {
        return Ok(None);
    }
    let mut probe = buf.clone();
    match v4::read(&mut probe, max) {
        Ok(v4::Packet::Connect(connect)) if connect.protocol == mqttbytes::Protocol::V4 => {
            *buf = probe;
            return Ok(Some(Hello {
                version: Version::V311,
                keep_alive: connect.keep_alive,
                login: connect.login.map(|l| (l.username, l.password)),
            }));
        }
        Ok(v4::Packet::Connect(_)) | Err(_) => {}
        Ok(other) => return Err(format!("expected CONNECT, got {other:?}")),
    }
    let mut probe = buf.clone();
    match v5::read(&mut probe, max) {
        Ok(v5::Packet::Connect(connect)) if connect.protocol == mqttbytes::Protocol::V5 => {
            *buf = probe;
            Ok(Some(Hello {
                version: Version::V5,
                keep_alive: connect.keep_alive,
                login: connect.login.map(|l| (l.username, l.password)),
            }))
        }
        Ok(other) => Err(format!(
            "expected an MQTT 3.1.1 or 5 CONNECT, got {other:?}"
        )),
        Err(err) => Err(format!(
            "protocol violation in CONNECT (MQTT 3.1.1 and 5 are served): {err:?}"
        )),
    }
}

/// Whether a whole packet is in `buf` (mqttbytes reads its fixed header). Once it is, any
/// error decoding it is the client's: nothing more will arrive to complete it.
fn framed(buf: &BytesMut, max: usize) -> Result<bool, String> {
    match mqttbytes::check(buf.iter(), max) {
        Ok(_) => Ok(true),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(false),
        Err(err) => Err(format!("protocol violation: {err:?}")),
    }
}

/// The next packet complete in `buf`, without reading more.
fn buffered_packet(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Incoming>, String> {
    if !framed(buf, max)? {
        return Ok(None);
    }
    let violation = |err: mqttbytes::Error| format!("protocol violation: {err:?}");
    match version {
        Version::V311 => match v4::read(buf, max) {
            Ok(packet) => Ok(Some(match packet {
                v4::Packet::Publish(p) => Incoming::Publish(Publication {
                    qos: p.qos,
                    pkid: p.pkid,
                    topic: p.topic,
                    payload: p.payload,
                    content_type: None,
                }),
                v4::Packet::PingReq => Incoming::PingReq,
                v4::Packet::Subscribe(s) => Incoming::Subscribe {
                    pkid: s.pkid,
                    filters: s.filters.len(),
                },
                v4::Packet::Disconnect => Incoming::Disconnect,
                other => Incoming::Unexpected(format!("{other:?}")),
            })),
            Err(err) => Err(violation(err)),
        },
        Version::V5 => match v5::read(buf, max) {
            Ok(packet) => Ok(Some(match packet {
                v5::Packet::Publish(p) => Incoming::Publish(Publication {
                    qos: p.qos,
                    pkid: p.pkid,
                    topic: p.topic,
                    payload: p.payload,
                    content_type: p.properties.and_then(|props| props.content_type),
                }),
                v5::Packet::PingReq => Incoming::PingReq,
                v5::Packet::Subscribe(s) => Incoming::Subscribe {
                    pkid: s.pkid,
                    filters: s.filters.len(),
                },
                v5::Packet::Disconnect(_) => Incoming::Disconnect,
                other => Incoming::Unexpected(format!("{other:?}")),
            })),
            Err(err) => Err(violation(err)),
        },
    }
}

/// For the fuzz target (`ingest/fuzz`): runs `data` through a connection's decoding without
/// a socket: the CONNECT (either version), then packets of that version up to the first
/// incomplete or malformed one, and for each PUBLISH its topic and content type. Returns how
/// many packets decoded.
#[doc(hidden)]
pub fn decode_for_fuzzing(data: &[u8], max: usize) -> usize {
    let mut buf = BytesMut::from(data);
    let Ok(Some(hello)) = read_connect(&mut buf, max) else {
        return 0;
    };
    let mut decoded = 1;
    while let Ok(Some(packet)) = buffered_packet(hello.version, &mut buf, max) {
        decoded += 1;
        if let Incoming::Publish(publish) = packet {
            let _ = topic_device(&publish.topic);
            let _ = decode::Format::from_content_type(publish.content_type.as_deref());
        }
    }
    decoded
}

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

/// Encodes the service's answers in the connection's version.
struct Encoder {
    version: Version,
    out: BytesMut,
}

impl Encoder {
    fn connack(&mut self, accepted: bool, max_packet: usize) {
        let _ = match self.version {
            Version::V311 => v4::ConnAck::new(
                if accepted {
                    v4::ConnectReturnCode::Success
                } else {
                    v4::ConnectReturnCode::BadUserNamePassword
                },
                false,
            )
            .write(&mut self.out),
            Version::V5 => {
                let mut ack = v5::ConnAck::new(
                    if accepted {
                        v5::ConnectReturnCode::Success
                    } else {
                        v5::ConnectReturnCode::BadUserNamePassword
                    },
                    false,
                );
                // MQTT 5 requires the property block; tell the client what is served.
                let mut props = v5::ConnAckProperties::new();
                props.max_qos = Some(1);
                props.retain_available = Some(0);
                props.wildcard_subscription_available = Some(0);
                props.shared_subscription_available = Some(0);
                props.subscription_identifiers_available = Some(0);
                props.max_packet_size = u32::try_from(max_packet).ok();
                if !accepted {
                    props.reason_string = Some("bad username or secret".into());
                }
                ack.properties = Some(props);
                ack.write(&mut self.out)
            }
        };
    }

    fn puback(&mut self, pkid: u16) {
        let _ = match self.version {
            Version::V311 => v4::PubAck::new(pkid).write(&mut self.out),
            Version::V5 => v5::PubAck::new(pkid).write(&mut self.out),
        };
    }

    fn pingresp(&mut self) {
        let _ = match self.version {
            Version::V311 => v4::PingResp.write(&mut self.out),
            Version::V5 => v5::PingResp.write(&mut self.out),
        };
    }

    /// Subscriptions are not served: every filter is refused.
    fn suback_refused(&mut self, pkid: u16, filters: usize) {
        let _ = match self.version {
            Version::V311 => v4::SubAck::new(pkid, vec![v4::SubscribeReasonCode::Failure; filters])
                .write(&mut self.out),
            Version::V5 => {
                v5::SubAck::new(pkid, vec![v5::SubscribeReasonCode::NotAuthorized; filters])
                    .write(&mut self.out)
            }
        };
    }

    /// MQTT 5 only: DISCONNECT 0x98 (administrative action), the credential was revoked.
    /// MQTT 3.1.1 can only close the connection.
    fn revoked(&mut self) {
        if self.version != Version::V5 {
            return;
        }
        let mut disconnect = v5::Disconnect::new();
        disconnect.reason_code = v5::DisconnectReasonCode::AdministrativeAction;
        let mut props = v5::DisconnectProperties::new();
        props.reason_string = Some(REVOKED.into());
        disconnect.properties = Some(props);
        let _ = disconnect.write(&mut self.out);
    }

    /// MQTT 5 only: a negative PUBACK for the refused publish (at QoS 1), then DISCONNECT,
    /// both with the reason. MQTT 3.1.1 can only close the connection.
    fn refusal(&mut self, refusal: &Refusal) {
        if self.version != Version::V5 {
            return;
        }
        if let Some(pkid) = refusal.pkid {
            let mut ack = v5::PubAck::new(pkid);
            ack.reason = refusal.reason.puback();
            ack.properties = Some(v5::PubAckProperties {
                reason_string: Some(refusal.message.clone()),
                user_properties: Vec::new(),
            });
            let _ = ack.write(&mut self.out);
        }
        let mut disconnect = v5::Disconnect::new();
        disconnect.reason_code = refusal.reason.disconnect();
        let mut props = v5::DisconnectProperties::new();
        props.reason_string = Some(refusal.message.clone());
        disconnect.properties = Some(props);
        let _ = disconnect.write(&mut self.out);
    }

    async fn flush(&mut self, stream: &mut Stream) -> Result<(), String> {
        stream
            .write_all(&self.out)
            .await
            .map_err(|err| format!("write failed: {err}"))?;
        self.out.clear();
        Ok(())
    }
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

async fn connection(
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
            _ = &mut registration.revoked => {
                out.revoked();
                let _ = out.flush(&mut stream).await;
                let _ = stream.shutdown().await;
                return Err(REVOKED.into());
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
        if let Some(hello) = read_connect(&mut buf, MAX_CONNECT_BYTES.min(max))? {
            break hello;
        }
        read_some(&mut stream, &mut buf).await?;
    };
    let mut out = Encoder {
        version: hello.version,
        out: BytesMut::with_capacity(1024),
    };
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
                device_ca::authenticate(&mut conn, &der)
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
            out.connack(false, max);
            let _ = out.flush(&mut stream).await;
            return Err("bad username or secret".into());
        }
    };
    out.connack(true, max);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_readings_topics_name_a_device() {
        assert_eq!(topic_device("plantgate/MM-1/readings"), Some("MM-1"));
        for bad in [
            "plantgate//readings",
            "plantgate/a/b/readings",
            "other/MM-1/readings",
            "plantgate/MM-1",
        ] {
            assert_eq!(topic_device(bad), None, "{bad}");
        }
        assert_eq!(readings_topic("MM-1"), "plantgate/MM-1/readings");
    }

    #[test]
    fn the_fuzz_seeds_decode_in_both_versions_and_garbage_does_not() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/mqtt_stream");
        for seed in ["v311", "v5"] {
            let data = std::fs::read(seeds.join(seed)).expect("seed");
            // CONNECT, PUBLISH, PINGREQ.
            assert_eq!(decode_for_fuzzing(&data, 1 << 16), 3, "{seed}");
            // Cut short, the PUBLISH is incomplete: only the CONNECT decodes.
            assert_eq!(
                decode_for_fuzzing(&data[..data.len() - 10], 1 << 16),
                1,
                "{seed}"
            );
        }
        assert_eq!(decode_for_fuzzing(b"\x10\x0dgarbage-bytes", 1 << 16), 0);
    }
}
