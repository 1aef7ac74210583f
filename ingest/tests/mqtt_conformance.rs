//! The MQTT service does what its CONNACK advertises and what MQTT asks of a server, seen
//! through a third-party client (Debian's `mosquitto_pub`) and raw packets over TLS:
//! - MQTT 3.1 and protocol levels that do not exist get CONNACK "unacceptable protocol
//!   version", not a silent close;
//! - CONNACK tells an MQTT 5 client that retain is not available (mosquitto_pub then
//!   drops the flag), and a retained PUBLISH sent anyway is refused with DISCONNECT 0x9A
//!   and not stored;
//! - a will is refused at CONNECT (no will is ever published here): QoS 2 with "QoS not
//!   supported", retain with "retain not supported";
//! - a second connection of a device with the same client id takes the first over
//!   (DISCONNECT 0x8E), and never a connection of another device.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use appliance::devices::DeviceKind;
use common::TestIngest;
use common::client::{Event, Login, MqttClient, Version};
use mqttbytes::QoS;
use openssl::ssl::{SslConnector, SslMethod};
use testkit::store::Backend;

const ANSWER: Duration = Duration::from_secs(30);

fn batch(seq: i64) -> Vec<u8> {
    serde_json::json!({ "readings": [{
        "metric": "cycle_count", "value": seq, "ts": 1_767_225_600_000_i64 + seq, "seq": seq,
    }]})
    .to_string()
    .into_bytes()
}

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// What the service answers `packet` (sent over TLS) with, until it closes.
fn raw_answer(t: &TestIngest, packet: &[u8]) -> Vec<u8> {
    let mut tls = SslConnector::builder(SslMethod::tls_client()).unwrap();
    tls.set_ca_file(t.cert()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", t.mqtt_port)).unwrap();
    tcp.set_read_timeout(Some(ANSWER)).unwrap();
    let mut stream = tls.build().connect("127.0.0.1", tcp).unwrap();
    stream.write_all(packet).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// A CONNECT with protocol `name` and `level`, client id "x", no login.
fn connect_packet(name: &[u8], level: u8) -> Vec<u8> {
    let mut variable = vec![0, u8::try_from(name.len()).unwrap()];
    variable.extend_from_slice(name);
    variable.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'x']);
    let mut packet = vec![0x10, u8::try_from(variable.len()).unwrap()];
    packet.extend(variable);
    packet
}

#[test]
fn unsupported_protocol_levels_get_connack_unacceptable_protocol_version() {
    let mut t = TestIngest::new(Backend::Sqlite);
    let monitor = t.register("MM-1", DeviceKind::Monitor, None);
    t.start();
    for (name, level) in [(&b"MQIsdp"[..], 3), (b"MQTT", 6), (b"MQTT", 3)] {
        assert_eq!(
            raw_answer(&t, &connect_packet(name, level)),
            [0x20, 0x02, 0x00, 0x01],
            "{} level {level}",
            String::from_utf8_lossy(name)
        );
    }
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-V", "mqttv31", "-h", "127.0.0.1", "-p"])
        .arg(t.mqtt_port.to_string())
        .args(["-q", "1", "--cafile"])
        .arg(t.cert())
        .args([
            "-u",
            "MM-1",
            "-P",
            &monitor.secret,
            "-t",
            "plantgate/MM-1/readings",
        ])
        .arg("-m")
        .arg(String::from_utf8(batch(1)).unwrap())
        .output()
        .expect("mosquitto_pub");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unacceptable protocol version"),
        "{}",
        text(&out)
    );
    assert_eq!(t.stored_count(&monitor.device), 0);
}

#[test]
fn mqtt_5_clients_are_told_retain_is_unavailable_and_a_retained_publish_is_refused() {
    let mut t = TestIngest::new(Backend::Sqlite);
    let monitor = t.register("MM-1", DeviceKind::Monitor, None);
    t.start();
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &monitor.secret,
        "plantgate/MM-1/readings",
        &batch(1),
        &["-r", "-d"],
    );
    // A client that reads CONNACK's "retain available: 0" drops the flag itself.
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("sending PUBLISH (d0, q1, r0"),
        "the client was not told retain is unavailable: {}",
        text(&out)
    );
    assert_eq!(t.stored_seqs(&monitor.device), [1]);

    let (mut client, accepted) = MqttClient::connect(
        t.mqtt_port,
        &t.cert(),
        None,
        Version::V5,
        "MM-1",
        Some(&monitor.secret),
    );
    assert!(accepted);
    client
        .publish_with(2, "plantgate/MM-1/readings", &batch(2), true)
        .unwrap();
    let events = client.events_until_closed(ANSWER);
    assert_eq!(
        events,
        [Event::Disconnect { reason: 0x9A }, Event::Closed],
        "retain is not available"
    );
    assert_eq!(t.stored_seqs(&monitor.device), [1]);

    // Without retain the same device is served.
    let out = t.mosquitto_pub_v5(
        "MM-1",
        &monitor.secret,
        "plantgate/MM-1/readings",
        &batch(3),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(t.stored_seqs(&monitor.device), [1, 3]);
}

#[test]
fn a_will_is_refused_at_connect_with_the_reason() {
    let mut t = TestIngest::new(Backend::Sqlite);
    let monitor = t.register("MM-1", DeviceKind::Monitor, None);
    t.start();
    let connect = |version, will| {
        let login = Login {
            username: "MM-1",
            password: Some(&monitor.secret),
            client_id: "press-1",
            will: Some(will),
        };
        let (mut client, accepted) =
            MqttClient::connect_as(t.mqtt_port, &t.cert(), None, version, &login);
        assert!(!accepted, "a will was accepted: {will:?}");
        client.next_event(ANSWER)
    };
    // The CONNACK was read by connect_as; the connection then closes.
    for (version, will) in [
        (Version::V5, (QoS::ExactlyOnce, false)),
        (Version::V5, (QoS::AtLeastOnce, true)),
        (Version::V5, (QoS::AtMostOnce, false)),
        (Version::V311, (QoS::AtLeastOnce, false)),
    ] {
        assert_eq!(
            connect(version, will),
            Event::Closed,
            "{version:?} {will:?}"
        );
    }
    // The codes, as a third-party client reports them.
    for (will_args, expect) in [
        (&["--will-qos", "2"][..], "QoS not supported"),
        (&["--will-retain"][..], "Retain not supported"),
    ] {
        let mut args = vec!["--will-topic", "status/MM-1", "--will-payload", "offline"];
        args.extend_from_slice(will_args);
        let out = t.mosquitto_pub_v5(
            "MM-1",
            &monitor.secret,
            "plantgate/MM-1/readings",
            &batch(1),
            &args,
        );
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).to_lowercase().contains(&expect.to_lowercase()),
            "{expect}: {}",
            text(&out)
        );
    }
    assert_eq!(t.stored_count(&monitor.device), 0);
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_over_within_its_device_only() {
    let mut t = TestIngest::new(Backend::Sqlite);
    let press = t.register("MM-1", DeviceKind::Monitor, None);
    let oven = t.register("MM-2", DeviceKind::Monitor, None);
    t.start();
    let connect = |username: &str, secret: &str, version| {
        let login = Login {
            username,
            password: Some(secret),
            client_id: "line-1",
            will: None,
        };
        let (client, accepted) =
            MqttClient::connect_as(t.mqtt_port, &t.cert(), None, version, &login);
        assert!(accepted);
        client
    };
    let mut first = connect("MM-1", &press.secret, Version::V5);
    first
        .publish(1, "plantgate/MM-1/readings", &batch(1))
        .unwrap();
    assert_eq!(
        first.next_event(ANSWER),
        Event::PubAck { pkid: 1, reason: 0 }
    );
    // Another device with the same client id takes nothing over.
    let mut oven_client = connect("MM-2", &oven.secret, Version::V5);
    assert_eq!(first.next_event(Duration::from_millis(500)), Event::Quiet);

    let mut second = connect("MM-1", &press.secret, Version::V311);
    assert_eq!(
        first.events_until_closed(ANSWER),
        [Event::Disconnect { reason: 0x8E }, Event::Closed],
        "the first connection was not taken over"
    );
    second
        .publish(2, "plantgate/MM-1/readings", &batch(2))
        .unwrap();
    assert_eq!(
        second.next_event(ANSWER),
        Event::PubAck { pkid: 2, reason: 0 }
    );
    oven_client
        .publish(1, "plantgate/MM-2/readings", &batch(1))
        .unwrap();
    assert_eq!(
        oven_client.next_event(ANSWER),
        Event::PubAck { pkid: 1, reason: 0 }
    );
    assert_eq!(t.stored_seqs(&press.device), [1, 2]);
    assert_eq!(t.stored_seqs(&oven.device), [1]);
}
