//! MQTT packets, as this service reads and answers them: the CONNECT in either protocol
//! version, then the packets of the version it chose, reduced to what the service acts on
//! ([`Incoming`]); the answers ([`Encoder`]), among them MQTT 5's reason codes for a refusal
//! ([`Reason`]); and the readings topic, `plantgate/{serial}/readings`. Decoding and
//! encoding are the `mqttbytes` crate's; nothing here touches a socket but
//! [`Encoder::flush`].

use bytes::BytesMut;
use mqttbytes::{QoS, v4, v5};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::decode;
use crate::error::IngestError;
use crate::live::Closed;

/// The reason string of the DISCONNECT sent when the credential was revoked.
pub(super) const REVOKED: &str = "the device's credential was revoked";
/// The reason string of the DISCONNECT sent when a new connection took the client id.
pub(super) const TAKEN_OVER: &str =
    "a new connection of this device with the same client id took over";

/// The topic a device publishes its readings to.
pub fn readings_topic(serial: &str) -> String {
    format!("plantgate/{serial}/readings")
}

/// The device serial a readings topic names, if it is one.
pub(super) fn topic_device(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("plantgate/")?
        .strip_suffix("/readings")
        .filter(|serial| !serial.is_empty() && !serial.contains('/'))
}

/// The protocol a connection speaks, chosen by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V311,
    V5,
}

/// What a CONNECT said, in either version.
pub(super) struct Hello {
    pub(super) version: Version,
    pub(super) keep_alive: u16,
    pub(super) login: Option<(String, String)>,
    /// A second connection of the same device with the same client id takes over.
    pub(super) client_id: String,
    /// The will's QoS and retain flag, if the CONNECT carried one: wills are not served.
    pub(super) will: Option<(QoS, bool)>,
}

/// The head of a connection: a CONNECT this service speaks, or one of a protocol level it
/// does not (MQTT 3.1, or a level that does not exist yet), which is answered with CONNACK
/// "unacceptable protocol version" as MQTT 3.1.1 asks.
pub(super) enum Greeting {
    Hello(Hello),
    UnsupportedProtocol(String),
}

/// Why a CONNECT was refused, in either version's CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnectRefusal {
    BadCredentials,
    /// The CONNECT carried a will (`(qos, retain)`): no will is ever published here, so
    /// none is accepted.
    Will(QoS, bool),
}

impl ConnectRefusal {
    pub(super) fn reason(self) -> &'static str {
        match self {
            ConnectRefusal::BadCredentials => "bad username or secret",
            ConnectRefusal::Will(..) => {
                "will messages are not served: connect without a will (the appliance raises \
                 a silence alert when a device stops reporting)"
            }
        }
    }
}

/// CONNACK "unacceptable protocol version" (return code 1) in MQTT 3.1 and 3.1.1's form,
/// which any client that sent a CONNECT can read.
pub(super) const CONNACK_UNACCEPTABLE_PROTOCOL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// A packet from the client, in either version, reduced to what the service acts on.
pub(super) enum Incoming {
    Publish(Publication),
    PingReq,
    Subscribe { pkid: u16, filters: usize },
    Disconnect,
    Unexpected(String),
}

/// One PUBLISH.
pub(super) struct Publication {
    pub(super) qos: QoS,
    pub(super) pkid: u16,
    pub(super) topic: String,
    pub(super) payload: bytes::Bytes,
    /// MQTT 5's content-type property.
    pub(super) content_type: Option<String>,
    pub(super) retain: bool,
}

/// Why a publish was refused, for MQTT 5's reason codes.
#[derive(Debug)]
pub(super) struct Refusal {
    /// The QoS 1 packet id of the refused publish, if it had one.
    pub(super) pkid: Option<u16>,
    pub(super) reason: Reason,
    pub(super) message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
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
    /// An MQTT 5 PUBLISH with RETAIN set, where CONNACK said retain is not available.
    RetainNotSupported,
}

impl Reason {
    pub(super) fn of(err: &IngestError) -> Reason {
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
            Reason::QoSNotSupported
            | Reason::ProtocolError
            | Reason::Unavailable
            | Reason::RetainNotSupported => v5::PubAckReason::ImplementationSpecificError,
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
            Reason::RetainNotSupported => v5::DisconnectReasonCode::RetainNotSupported,
        }
    }
}

/// The CONNECT at the head of `buf`, decoded by whichever of mqttbytes' codecs accepts its
/// protocol level; `None` until it is complete.
pub(super) fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Option<Greeting>, String> {
    if !framed(buf, max)? {
        return Ok(None);
    }
    let mut probe = buf.clone();
    match v4::read(&mut probe, max) {
        Ok(v4::Packet::Connect(connect)) if connect.protocol == mqttbytes::Protocol::V4 => {
            *buf = probe;
            return Ok(Some(Greeting::Hello(Hello {
                version: Version::V311,
                keep_alive: connect.keep_alive,
                login: connect.login.map(|l| (l.username, l.password)),
                client_id: connect.client_id,
                will: connect.last_will.map(|will| (will.qos, will.retain)),
            })));
        }
        // mqttbytes reads the protocol name and level first: MQTT 3.1 says "MQIsdp".
        Err(mqttbytes::Error::InvalidProtocol) => {
            return Ok(Some(Greeting::UnsupportedProtocol(
                "a protocol name other than MQTT (MQTT 3.1.1 and 5 are served)".into(),
            )));
        }
        Err(mqttbytes::Error::InvalidProtocolLevel(level)) => {
            return Ok(Some(Greeting::UnsupportedProtocol(format!(
                "protocol level {level} (MQTT 3.1.1 and 5 are served)"
            ))));
        }
        Ok(v4::Packet::Connect(_)) | Err(_) => {}
        Ok(other) => return Err(format!("expected CONNECT, got {other:?}")),
    }
    let mut probe = buf.clone();
    match v5::read(&mut probe, max) {
        Ok(v5::Packet::Connect(connect)) if connect.protocol == mqttbytes::Protocol::V5 => {
            *buf = probe;
            Ok(Some(Greeting::Hello(Hello {
                version: Version::V5,
                keep_alive: connect.keep_alive,
                login: connect.login.map(|l| (l.username, l.password)),
                client_id: connect.client_id,
                will: connect.last_will.map(|will| (will.qos, will.retain)),
            })))
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
pub(super) fn buffered_packet(
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
                    retain: p.retain,
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
                    retain: p.retain,
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
    let Ok(Some(Greeting::Hello(hello))) = read_connect(&mut buf, max) else {
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

/// Encodes the service's answers in the connection's version.
pub(super) struct Encoder {
    pub(super) version: Version,
    out: BytesMut,
}

impl Encoder {
    pub(super) fn new(version: Version) -> Encoder {
        Encoder {
            version,
            out: BytesMut::with_capacity(1024),
        }
    }

    /// CONNACK: accepted (`Ok`), or refused and why.
    pub(super) fn connack(&mut self, outcome: Result<(), ConnectRefusal>, max_packet: usize) {
        let _ = match self.version {
            Version::V311 => v4::ConnAck::new(
                match outcome {
                    Ok(()) => v4::ConnectReturnCode::Success,
                    Err(ConnectRefusal::BadCredentials) => {
                        v4::ConnectReturnCode::BadUserNamePassword
                    }
                    // MQTT 3.1.1 has no code for a will; "not authorized" is the nearest.
                    Err(ConnectRefusal::Will(..)) => v4::ConnectReturnCode::NotAuthorized,
                },
                false,
            )
            .write(&mut self.out),
            Version::V5 => {
                let mut ack = v5::ConnAck::new(
                    match outcome {
                        Ok(()) => v5::ConnectReturnCode::Success,
                        Err(ConnectRefusal::BadCredentials) => {
                            v5::ConnectReturnCode::BadUserNamePassword
                        }
                        Err(ConnectRefusal::Will(QoS::ExactlyOnce, _)) => {
                            v5::ConnectReturnCode::QoSNotSupported
                        }
                        Err(ConnectRefusal::Will(_, true)) => {
                            v5::ConnectReturnCode::RetainNotSupported
                        }
                        Err(ConnectRefusal::Will(..)) => {
                            v5::ConnectReturnCode::ImplementationSpecificError
                        }
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
                if let Err(refusal) = outcome {
                    props.reason_string = Some(refusal.reason().into());
                }
                ack.properties = Some(props);
                ack.write(&mut self.out)
            }
        };
    }

    pub(super) fn puback(&mut self, pkid: u16) {
        let _ = match self.version {
            Version::V311 => v4::PubAck::new(pkid).write(&mut self.out),
            Version::V5 => v5::PubAck::new(pkid).write(&mut self.out),
        };
    }

    pub(super) fn pingresp(&mut self) {
        let _ = match self.version {
            Version::V311 => v4::PingResp.write(&mut self.out),
            Version::V5 => v5::PingResp.write(&mut self.out),
        };
    }

    /// Subscriptions are not served: every filter is refused.
    pub(super) fn suback_refused(&mut self, pkid: u16, filters: usize) {
        let _ = match self.version {
            Version::V311 => v4::SubAck::new(pkid, vec![v4::SubscribeReasonCode::Failure; filters])
                .write(&mut self.out),
            Version::V5 => {
                v5::SubAck::new(pkid, vec![v5::SubscribeReasonCode::NotAuthorized; filters])
                    .write(&mut self.out)
            }
        };
    }

    /// MQTT 5 only: DISCONNECT 0x98 (administrative action) when the credential was
    /// revoked, 0x8E (session taken over) when a new connection of the device took its
    /// client id. MQTT 3.1.1 can only close the connection.
    pub(super) fn closed_by_server(&mut self, why: Closed) {
        if self.version != Version::V5 {
            return;
        }
        let mut disconnect = v5::Disconnect::new();
        let mut props = v5::DisconnectProperties::new();
        (disconnect.reason_code, props.reason_string) = match why {
            Closed::Revoked => (
                v5::DisconnectReasonCode::AdministrativeAction,
                Some(REVOKED.into()),
            ),
            Closed::TakenOver => (
                v5::DisconnectReasonCode::SessionTakenOver,
                Some(TAKEN_OVER.into()),
            ),
        };
        disconnect.properties = Some(props);
        let _ = disconnect.write(&mut self.out);
    }

    /// MQTT 5 only: a negative PUBACK for the refused publish (at QoS 1), then DISCONNECT,
    /// both with the reason. MQTT 3.1.1 can only close the connection.
    pub(super) fn refusal(&mut self, refusal: &Refusal) {
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

    /// Writes what was encoded to `stream`.
    pub(super) async fn flush(
        &mut self,
        stream: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), String> {
        stream
            .write_all(&self.out)
            .await
            .map_err(|err| format!("write failed: {err}"))?;
        self.out.clear();
        Ok(())
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
