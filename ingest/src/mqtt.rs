//! MQTT 3.1.1 over TLS, with packets decoded and encoded by the `mqttbytes` crate.
//!
//! Only what a telemetry device needs: CONNECT with the device serial as username and its
//! secret as password (or a client certificate from the device CA), PUBLISH at QoS 0 or 1 to `plantgate/{serial}/readings` (the payload
//! is the same JSON batch as over HTTPS), PINGREQ and DISCONNECT. Complete PUBLISH packets
//! that arrive together are stored in one batch, and their PUBACKs are written only after
//! the writer reported the batch durable. A publish to a topic the device may not use, a
//! payload that is not a valid batch, QoS 2 or a malformed packet closes the connection
//! without a PUBACK: MQTT 3.1.1 has no negative acknowledgement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use appliance::device_ca;
use appliance::devices::Device;
use appliance::time::now_us;
use bytes::BytesMut;
use mqttbytes::v4::{self, ConnAck, ConnectReturnCode, Packet, PingResp, PubAck, SubAck};
use mqttbytes::{QoS, v4::SubscribeReasonCode};
use openssl::ssl::{Ssl, SslAcceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_openssl::SslStream;

use crate::decode::{self, Accepted};
use crate::error::IngestError;
use crate::http::Shared;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may stay quiet when it asked for no keep-alive.
const IDLE_LIMIT: Duration = Duration::from_secs(600);

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
    let acceptor = Arc::new(acceptor);
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(reason) = connection(tcp, peer, &acceptor, &shared).await {
                        tracing::info!(%peer, %reason, "MQTT connection closed");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

type Stream = SslStream<tokio::net::TcpStream>;

/// Reads the next packet, waiting at most `limit` for it to arrive.
async fn next_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
    limit: Duration,
) -> Result<Packet, String> {
    loop {
        match v4::read(buf, max) {
            Ok(packet) => return Ok(packet),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(err) => return Err(format!("protocol violation: {err:?}")),
        }
        let read = tokio::time::timeout(limit, stream.read_buf(buf))
            .await
            .map_err(|_| "keep-alive expired".to_owned())?
            .map_err(|err| format!("read failed: {err}"))?;
        if read == 0 {
            return Err("client closed the connection".into());
        }
    }
}

/// A packet already complete in the buffer, without reading more.
fn buffered_packet(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, String> {
    match v4::read(buf, max) {
        Ok(packet) => Ok(Some(packet)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(err) => Err(format!("protocol violation: {err:?}")),
    }
}

async fn send(stream: &mut Stream, out: &mut BytesMut) -> Result<(), String> {
    stream
        .write_all(out)
        .await
        .map_err(|err| format!("write failed: {err}"))?;
    out.clear();
    Ok(())
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: &SslAcceptor,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    let ssl = Ssl::new(acceptor.context()).map_err(|err| err.to_string())?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|err| err.to_string())?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, std::pin::Pin::new(&mut stream).accept())
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|err| format!("TLS handshake failed: {err}"))?;
    let max = shared.limits.max_body_bytes;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::with_capacity(1024);

    let connect = match next_packet(&mut stream, &mut buf, max, HANDSHAKE_TIMEOUT).await? {
        Packet::Connect(connect) => connect,
        other => return Err(format!("expected CONNECT, got {other:?}")),
    };
    if connect.protocol != mqttbytes::Protocol::V4 {
        let _ = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false).write(&mut out);
        let _ = send(&mut stream, &mut out).await;
        return Err("only MQTT 3.1.1 is served".into());
    }
    let certificate = stream
        .ssl()
        .peer_certificate()
        .and_then(|c| c.to_der().ok());
    let sender = match (certificate, connect.login) {
        // A client certificate from the device CA names the device; a username, if sent,
        // must agree with it.
        (Some(der), login) => {
            let worker = shared.clone();
            let username = login.map(|l| l.username);
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
        (None, Some(login)) => {
            let worker = shared.clone();
            let username = login.username.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = worker.app.store.conn().ok()?;
                Device::authenticate(&mut conn, &login.password)
                    .ok()
                    .flatten()
                    .filter(|device| device.serial == login.username)
            })
            .await
            .ok()
            .flatten()
            .ok_or(Some(username))
        }
        (None, None) => Err(None),
    };
    let sender = match sender {
        Ok(sender) => sender,
        Err(username) => {
            let worker = shared.clone();
            let source = peer.ip().to_string();
            let _ = tokio::task::spawn_blocking(move || {
                worker
                    .auth_failures
                    .record(&worker.app, &source, "mqtt", username.as_deref())
            })
            .await;
            let _ = ConnAck::new(ConnectReturnCode::BadUserNamePassword, false).write(&mut out);
            let _ = send(&mut stream, &mut out).await;
            return Err("bad username or secret".into());
        }
    };
    let _ = ConnAck::new(ConnectReturnCode::Success, false).write(&mut out);
    send(&mut stream, &mut out).await?;
    let idle = if connect.keep_alive == 0 {
        IDLE_LIMIT
    } else {
        Duration::from_millis(u64::from(connect.keep_alive) * 1500)
    };
    let sender = Arc::new(sender);

    loop {
        let first = next_packet(&mut stream, &mut buf, max, idle).await?;
        let mut packets = vec![first];
        while let Some(packet) = buffered_packet(&mut buf, max)? {
            packets.push(packet);
            if packets.len() >= 1000 {
                break;
            }
        }
        let mut pending: Vec<(Option<u16>, v4::Publish)> = Vec::new();
        let mut closing: Option<String> = None;
        let mut replies: Vec<Packet> = Vec::new();
        for packet in packets {
            match packet {
                Packet::Publish(publish) => match publish.qos {
                    QoS::AtMostOnce => pending.push((None, publish)),
                    QoS::AtLeastOnce => pending.push((Some(publish.pkid), publish)),
                    QoS::ExactlyOnce => {
                        closing = Some("QoS 2 is not served; publish at QoS 1".into());
                        break;
                    }
                },
                Packet::PingReq => replies.push(Packet::PingResp),
                Packet::Subscribe(subscribe) => replies.push(Packet::SubAck(SubAck::new(
                    subscribe.pkid,
                    vec![SubscribeReasonCode::Failure; subscribe.filters.len()],
                ))),
                Packet::Disconnect => {
                    closing = Some("client disconnected".into());
                    break;
                }
                other => {
                    closing = Some(format!("unexpected packet {other:?}"));
                    break;
                }
            }
        }
        let (acks, refusal) = store_publishes(shared, &sender, peer, pending).await;
        for pkid in acks {
            let _ = PubAck::new(pkid).write(&mut out);
        }
        for reply in replies {
            let _ = match reply {
                Packet::PingResp => PingResp.write(&mut out),
                Packet::SubAck(suback) => suback.write(&mut out),
                _ => Ok(0),
            };
        }
        send(&mut stream, &mut out).await?;
        if let Some(reason) = refusal.or(closing) {
            let _ = stream.shutdown().await;
            return Err(reason);
        }
    }
}

/// Validates and stores the publishes, in order, up to the first bad one. Returns the
/// packet ids to acknowledge (all stored) and why the connection must close, if it must.
async fn store_publishes(
    shared: &Arc<Shared>,
    sender: &Arc<Device>,
    peer: SocketAddr,
    publishes: Vec<(Option<u16>, v4::Publish)>,
) -> (Vec<u16>, Option<String>) {
    if publishes.is_empty() {
        return (Vec::new(), None);
    }
    let worker = shared.clone();
    let sender_for_check = sender.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let limits = worker.limits;
        let mut merged = Accepted::default();
        let mut acks = Vec::new();
        let mut conn = match worker.app.store.conn() {
            Ok(conn) => conn,
            Err(_) => return (merged, acks, Some("store unavailable".to_owned())),
        };
        for (pkid, publish) in publishes {
            let result = topic_device(&publish.topic)
                .ok_or_else(|| {
                    IngestError::BadJson(format!(
                        "topic {:?} is not plantgate/{{serial}}/readings",
                        publish.topic
                    ))
                })
                .and_then(|device| {
                    let batch = decode::parse(&publish.payload, &limits)?;
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
                    return (merged, acks, Some(format!("{}: {err}", err.code())));
                }
            }
        }
        (merged, acks, None)
    })
    .await;
    let (merged, acks, refusal) = match checked {
        Ok(checked) => checked,
        Err(_) => return (Vec::new(), Some("internal error".into())),
    };
    if merged.readings.is_empty() && merged.states.is_empty() {
        return (Vec::new(), refusal);
    }
    match shared.writer.store(merged).await {
        Ok(_) => (acks, refusal),
        Err(()) => (
            Vec::new(),
            Some("store unavailable; nothing acknowledged".into()),
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
}
