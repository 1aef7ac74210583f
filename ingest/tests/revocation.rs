//! Revocation reaches connections that are already open: a device revoked, its secret
//! rotated, or its certificates revoked (here through the library, as the `plantgate` CLI
//! does, from another process than the service) is disconnected at once, with MQTT 5's
//! DISCONNECT 0x98 "administrative action", and nothing it sends after the revoke is stored.
//! The client is a raw MQTT client (`common::client`) that keeps its connection open and
//! reports every packet the service sends.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use appliance::device_ca::{self, DeviceCa};
use appliance::devices::{Credential, Device, DeviceKind};
use appliance::readings::NewReading;
use appliance::time::now_us;
use common::client::{Event, MqttClient, Version};
use common::{Backend, TestIngest, actor};
use ingest::decode::Accepted;
use ingest::error::Refused;
use ingest::mqtt::readings_topic;
use ingest::writer::Writer;
use testkit::on_both_backends;

/// How long a revoked connection may stay open: the behaviour asked for is "within 1 s"
/// (the service looks every 200 ms); 3 s still proves "at once" on a loaded machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(3);
/// Waiting for an answer that must come.
const ANSWER: Duration = Duration::from_secs(30);
/// MQTT 5's DISCONNECT reason "administrative action".
const ADMINISTRATIVE_ACTION: u8 = 0x98;

fn reading(seq: i64) -> Vec<u8> {
    serde_json::json!({ "readings": [{ "metric": "cycle_count", "value": seq, "ts": 1_767_225_600_000_i64 + seq, "seq": seq }] })
        .to_string()
        .into_bytes()
}

fn acked(pkid: u16) -> Event {
    Event::PubAck { pkid, reason: 0 }
}

/// Enrols a client certificate for `serial` (key and CSR made here, token and enrolment as
/// the device would get them); returns the certificate and key files.
fn certificate(t: &TestIngest, serial: &str) -> (PathBuf, PathBuf) {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509NameBuilder, X509ReqBuilder};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, serial).unwrap();
    let mut csr = X509ReqBuilder::new().unwrap();
    csr.set_subject_name(&name.build()).unwrap();
    csr.set_pubkey(&key).unwrap();
    csr.sign(&key, MessageDigest::sha256()).unwrap();
    let csr = csr.build().to_pem().unwrap();
    let token = device_ca::issue_enrolment_token(&t.app.audit, &actor(), serial, now_us()).unwrap();
    let ca = DeviceCa::load(&t.app.config.keys_dir()).unwrap();
    let (_, cert) =
        device_ca::enrol(&t.app.audit, &ca, serial, token.reveal(), &csr, now_us()).unwrap();
    let cert_path = t.dir.path().join(format!("{serial}.crt"));
    let key_path = t.dir.path().join(format!("{serial}.key"));
    std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert_path, key_path)
}

fn a_revoked_device_is_disconnected_at_once_and_what_it_sends_after_is_not_stored(
    backend: Backend,
) {
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-REV", DeviceKind::Monitor, None);
    let other = t.register("MM-STAYS", DeviceKind::Monitor, None);
    t.start();
    let topic = readings_topic("MM-REV");
    let connect = |serial: &str, secret: &str| {
        MqttClient::connect(
            t.mqtt_port,
            &t.cert(),
            None,
            Version::V5,
            serial,
            Some(secret),
        )
    };
    let (mut client, accepted) = connect("MM-REV", &monitor.secret);
    assert!(accepted);
    let (mut bystander, accepted) = connect("MM-STAYS", &other.secret);
    assert!(accepted);
    client.publish(1, &topic, &reading(1)).unwrap();
    assert_eq!(client.next_event(ANSWER), acked(1));

    Device::revoke(&t.app.audit, &actor(), "MM-REV", now_us()).unwrap();
    assert_eq!(
        client.events_until_closed(CLOSED_WITHIN),
        [
            Event::Disconnect {
                reason: ADMINISTRATIVE_ACTION
            },
            Event::Closed
        ],
        "the revoked device's connection was not closed at once"
    );
    // What it sends now is not acknowledged (the connection is gone) nor stored.
    let _ = client.publish(2, &topic, &reading(2));
    let after = client.events_until_closed(CLOSED_WITHIN);
    assert!(
        !after.iter().any(|e| matches!(e, Event::PubAck { .. })),
        "{after:?}"
    );
    assert_eq!(t.stored_seqs(&monitor.device), [1]);
    let (_, accepted) = connect("MM-REV", &monitor.secret);
    assert!(!accepted, "the revoked secret signed in again");

    // Another device's connection stays open and served.
    bystander
        .publish(1, &readings_topic("MM-STAYS"), &reading(1))
        .unwrap();
    assert_eq!(bystander.next_event(ANSWER), acked(1));
    assert_eq!(t.stored_seqs(&other.device), [1]);
}

fn a_rotated_secret_closes_every_connection_with_the_old_one_and_a_racing_publish_is_not_stored(
    backend: Backend,
) {
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-ROT", DeviceKind::Monitor, None);
    t.start();
    let topic = readings_topic("MM-ROT");
    let connect = |secret: &str| {
        MqttClient::connect(
            t.mqtt_port,
            &t.cert(),
            None,
            Version::V311,
            "MM-ROT",
            Some(secret),
        )
    };
    let (mut first, accepted) = connect(&monitor.secret);
    assert!(accepted);
    let (mut second, accepted) = connect(&monitor.secret);
    assert!(accepted);
    first.publish(1, &topic, &reading(1)).unwrap();
    assert_eq!(first.next_event(ANSWER), acked(1));

    let new_secret = Device::rotate_secret(&t.app.audit, &actor(), "MM-ROT").unwrap();
    // Sent right after the rotation committed, before the service can have looked: the
    // writer's own check refuses it. MQTT 3.1.1 has no negative PUBACK: it closes.
    first.publish(2, &topic, &reading(2)).unwrap();
    for (name, client) in [("first", &mut first), ("second", &mut second)] {
        let events = client.events_until_closed(CLOSED_WITHIN);
        assert_eq!(
            events.last(),
            Some(&Event::Closed),
            "the {name} connection with the old secret is still open: {events:?}"
        );
        assert!(
            !events.iter().any(|e| matches!(e, Event::PubAck { .. })),
            "{name}: {events:?}"
        );
    }
    assert_eq!(t.stored_seqs(&monitor.device), [1]);

    let (mut renewed, accepted) = connect(new_secret.reveal());
    assert!(accepted);
    renewed.publish(3, &topic, &reading(3)).unwrap();
    assert_eq!(renewed.next_event(ANSWER), acked(3));
    assert_eq!(t.stored_seqs(&monitor.device), [1, 3]);
}

fn revoking_its_certificates_closes_a_connection_signed_in_with_one(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-CRT", DeviceKind::Monitor, None);
    let (cert, key) = certificate(&t, "MM-CRT");
    t.start();
    let topic = readings_topic("MM-CRT");
    let (mut with_cert, accepted) = MqttClient::connect(
        t.mqtt_port,
        &t.cert(),
        Some((&cert, &key)),
        Version::V5,
        "MM-CRT",
        None,
    );
    assert!(accepted);
    let (mut with_secret, accepted) = MqttClient::connect(
        t.mqtt_port,
        &t.cert(),
        None,
        Version::V5,
        "MM-CRT",
        Some(&monitor.secret),
    );
    assert!(accepted);
    with_cert.publish(1, &topic, &reading(1)).unwrap();
    assert_eq!(with_cert.next_event(ANSWER), acked(1));

    let revoked =
        device_ca::revoke_certificates(&t.app.audit, &actor(), "MM-CRT", now_us()).unwrap();
    assert_eq!(revoked, 1);
    assert_eq!(
        with_cert.events_until_closed(CLOSED_WITHIN),
        [
            Event::Disconnect {
                reason: ADMINISTRATIVE_ACTION
            },
            Event::Closed
        ]
    );
    // The secret was not revoked: its connection goes on.
    with_secret.publish(2, &topic, &reading(2)).unwrap();
    assert_eq!(with_secret.next_event(ANSWER), acked(2));
    assert_eq!(t.stored_seqs(&monitor.device), [1, 2]);
}

/// The writer's check, without the watcher: a batch whose sender authenticated before the
/// revoke and reaches the writer after it is refused whole.
fn the_writer_refuses_a_batch_whose_credential_was_revoked_after_it_authenticated(
    backend: Backend,
) {
    let t = TestIngest::new(backend);
    let monitor = t.register("MM-W", DeviceKind::Monitor, None);
    let (cert, _) = certificate(&t, "MM-W");
    let writer = Writer::start(t.app.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = |seq: i64, credential: &Credential| {
        let now = now_us();
        let batch = Accepted {
            readings: vec![NewReading {
                device_id: monitor.device.id,
                seq,
                metric: "cycle_count".into(),
                value: seq as f64,
                measured_at_us: now,
                received_at_us: now,
            }],
            states: BTreeMap::new(),
        };
        runtime
            .block_on(writer.store(batch, credential.clone()))
            .map(|stored| stored.stored)
    };
    let secret = Credential::of_secret(&monitor.secret);
    let der = openssl::x509::X509::from_pem(&std::fs::read(&cert).unwrap())
        .unwrap()
        .to_der()
        .unwrap();
    let certificate = Credential::of_certificate(&der).unwrap();
    assert_eq!(store(1, &secret), Ok(1));
    assert_eq!(store(2, &certificate), Ok(1));

    let rotated = Device::rotate_secret(&t.app.audit, &actor(), "MM-W").unwrap();
    assert_eq!(store(3, &secret), Err(Refused::Revoked));
    let secret = Credential::of_secret(rotated.reveal());
    assert_eq!(store(4, &secret), Ok(1));

    device_ca::revoke_certificates(&t.app.audit, &actor(), "MM-W", now_us()).unwrap();
    assert_eq!(store(5, &certificate), Err(Refused::Revoked));
    assert_eq!(store(6, &secret), Ok(1));

    Device::revoke(&t.app.audit, &actor(), "MM-W", now_us()).unwrap();
    assert_eq!(store(7, &secret), Err(Refused::Revoked));
    assert_eq!(t.stored_seqs(&monitor.device), [1, 2, 4, 6]);
}

on_both_backends!(
    a_revoked_device_is_disconnected_at_once_and_what_it_sends_after_is_not_stored,
    a_rotated_secret_closes_every_connection_with_the_old_one_and_a_racing_publish_is_not_stored,
    revoking_its_certificates_closes_a_connection_signed_in_with_one,
    the_writer_refuses_a_batch_whose_credential_was_revoked_after_it_authenticated,
);
