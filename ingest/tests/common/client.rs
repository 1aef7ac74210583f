//! A raw MQTT client over TLS, for tests that hold a connection open and must see exactly
//! what the service sends on it (mosquitto_pub connects, publishes and leaves): openssl for
//! TLS, mqttbytes for the packets, blocking reads with a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqttbytes::{QoS, v4, v5};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// What the service did next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `code` is the CONNACK's return code (MQTT 3.1.1) or reason code (MQTT 5).
    ConnAck {
        accepted: bool,
        code: u8,
    },
    /// `reason` is MQTT 5's reason code (0 for MQTT 3.1.1, which has none).
    PubAck {
        pkid: u16,
        reason: u8,
    },
    /// MQTT 5's DISCONNECT and its reason code.
    Disconnect {
        reason: u8,
    },
    Other(String),
    /// The connection was closed (end of stream, reset, or TLS closed).
    Closed,
    /// Nothing arrived within the wait.
    Quiet,
}

/// What a client signs in with.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub username: &'a str,
    pub password: Option<&'a str>,
    pub client_id: &'a str,
    /// A will's QoS and retain flag (topic and payload are the client id's own).
    pub will: Option<(QoS, bool)>,
}

pub struct MqttClient {
    stream: SslStream<TcpStream>,
    version: Version,
    buf: BytesMut,
}

const MAX_PACKET: usize = 1 << 20;

impl MqttClient {
    /// Connects over TLS (trusting `ca`, with a client certificate if `identity` is
    /// `(cert, key)`) and sends CONNECT with a client id of its own (`username-N`), so that
    /// no two connections take each other over; returns the client and whether CONNACK
    /// accepted it.
    pub fn connect(
        port: u16,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        version: Version,
        username: &str,
        password: Option<&str>,
    ) -> (MqttClient, bool) {
        static CLIENTS: AtomicU32 = AtomicU32::new(0);
        let client_id = format!("{username}-{}", CLIENTS.fetch_add(1, Ordering::Relaxed));
        let login = Login {
            username,
            password,
            client_id: &client_id,
            will: None,
        };
        MqttClient::connect_as(port, ca, identity, version, &login)
    }

    /// [`MqttClient::connect`] with the client id `login.client_id`.
    pub fn connect_as(
        port: u16,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        version: Version,
        login: &Login<'_>,
    ) -> (MqttClient, bool) {
        let Login {
            username,
            password,
            client_id,
            will,
        } = *login;
        let mut tls = SslConnector::builder(SslMethod::tls_client()).expect("TLS client");
        tls.set_ca_file(ca).expect("CA file");
        if let Some((cert, key)) = identity {
            tls.set_certificate_file(cert, SslFiletype::PEM)
                .expect("client certificate");
            tls.set_private_key_file(key, SslFiletype::PEM)
                .expect("client key");
        }
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("TCP connect");
        tcp.set_nodelay(true).expect("nodelay");
        let stream = tls
            .build()
            .connect("127.0.0.1", tcp)
            .expect("TLS handshake");
        let mut client = MqttClient {
            stream,
            version,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        match version {
            Version::V311 => {
                let mut connect = v4::Connect::new(client_id);
                connect.keep_alive = 60;
                match password {
                    Some(password) => {
                        connect.set_login(username, password);
                    }
                    None => {
                        connect.login = Some(v4::Login::new(username, ""));
                    }
                }
                connect.last_will = will.map(|(qos, retain)| {
                    v4::LastWill::new(format!("status/{client_id}"), "offline", qos, retain)
                });
                connect.write(&mut out).expect("encode CONNECT");
            }
            Version::V5 => {
                let mut connect = v5::Connect::new(client_id);
                connect.keep_alive = 60;
                match password {
                    Some(password) => {
                        connect.set_login(username, password);
                    }
                    None => {
                        connect.login = Some(v5::Login::new(username, ""));
                    }
                }
                connect.last_will = will.map(|(qos, retain)| {
                    v5::LastWill::new(format!("status/{client_id}"), "offline", qos, retain)
                });
                connect.write(&mut out).expect("encode CONNECT");
            }
        }
        client.stream.write_all(&out).expect("send CONNECT");
        let accepted = match client.next_event(Duration::from_secs(60)) {
            Event::ConnAck { accepted, .. } => accepted,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (client, accepted)
    }

    /// Sends a PUBLISH at QoS 1; an error means the connection is gone.
    pub fn publish(&mut self, pkid: u16, topic: &str, payload: &[u8]) -> std::io::Result<()> {
        self.publish_with(pkid, topic, payload, false)
    }

    /// [`MqttClient::publish`], with the RETAIN flag as `retain` says.
    pub fn publish_with(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &[u8],
        retain: bool,
    ) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        match self.version {
            Version::V311 => {
                let mut publish = v4::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
                publish.pkid = pkid;
                publish.retain = retain;
                publish.write(&mut out).expect("encode PUBLISH");
            }
            Version::V5 => {
                let mut publish = v5::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
                publish.pkid = pkid;
                publish.retain = retain;
                publish.write(&mut out).expect("encode PUBLISH");
            }
        }
        self.stream.write_all(&out)?;
        self.stream.flush()
    }

    fn decoded(&mut self) -> Option<Event> {
        match mqttbytes::check(self.buf.iter(), MAX_PACKET) {
            Ok(_) => {}
            Err(mqttbytes::Error::InsufficientBytes(_)) => return None,
            Err(err) => return Some(Event::Other(format!("undecodable: {err:?}"))),
        }
        Some(match self.version {
            Version::V311 => match v4::read(&mut self.buf, MAX_PACKET) {
                Ok(v4::Packet::ConnAck(ack)) => Event::ConnAck {
                    accepted: ack.code == v4::ConnectReturnCode::Success,
                    code: ack.code as u8,
                },
                Ok(v4::Packet::PubAck(ack)) => Event::PubAck {
                    pkid: ack.pkid,
                    reason: 0,
                },
                Ok(other) => Event::Other(format!("{other:?}")),
                Err(err) => Event::Other(format!("undecodable: {err:?}")),
            },
            Version::V5 => match v5::read(&mut self.buf, MAX_PACKET) {
                Ok(v5::Packet::ConnAck(ack)) => Event::ConnAck {
                    accepted: ack.code == v5::ConnectReturnCode::Success,
                    code: ack.code as u8,
                },
                Ok(v5::Packet::PubAck(ack)) => Event::PubAck {
                    pkid: ack.pkid,
                    reason: ack.reason as u8,
                },
                Ok(v5::Packet::Disconnect(disconnect)) => Event::Disconnect {
                    reason: disconnect.reason_code as u8,
                },
                Ok(other) => Event::Other(format!("{other:?}")),
                Err(err) => Event::Other(format!("undecodable: {err:?}")),
            },
        })
    }

    /// The next thing the service does, waiting at most `wait`.
    pub fn next_event(&mut self, wait: Duration) -> Event {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(event) = self.decoded() {
                return event;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Event::Quiet;
            }
            self.stream
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Event::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Event::Closed,
            }
        }
    }

    /// Every event until the connection closes or `wait` passes (then the last is `Quiet`).
    pub fn events_until_closed(&mut self, wait: Duration) -> Vec<Event> {
        let deadline = Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let event = self.next_event(deadline.saturating_duration_since(Instant::now()));
            let last = matches!(event, Event::Closed | Event::Quiet);
            events.push(event);
            if last {
                return events;
            }
        }
    }
}
