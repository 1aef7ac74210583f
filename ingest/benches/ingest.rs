//! Ingest throughput against the real `plantgate-ingest`, in three runs:
//!
//! 1. HTTPS batches of 100 readings from 16 keep-alive clients, on SQLite;
//! 2. MQTT 3.1.1 QoS 1 messages of one reading each from 16 clients, each keeping up to
//!    64 publishes in flight, on SQLite;
//! 3. the HTTPS run again on PostgreSQL (`TEST_POSTGRES_URL`, default the trust-auth server
//!    on 127.0.0.1:5432; the bench makes its own database and drops it);
//! 4. MQTT 3.1.1 QoS 1 messages of 10 readings from 4 clients with 100 in flight each, into
//!    the ingest on SQLite and then into Mosquitto (started here, TLS and persistence on),
//!    with the same client and messages, and the ratio of the two rates.
//!
//! `cargo bench -p plantgate-ingest --bench ingest [-- https|mqtt|postgres|mosquitto]`
//! prints, for each run, readings (or messages) per second and the p50/p99 acknowledgement
//! latency; an ack (HTTP 200, PUBACK) from the ingest means the data is durable (Mosquitto
//! acknowledges before it writes). The load generators build their bodies
//! before the clock starts, so the figures are the service's, not the generator's JSON
//! encoding. Under `cargo test` the same code runs on a few batches, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "peers/mosquitto.rs"]
mod mosquitto;

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appliance::devices::DeviceKind;
use bytes::BytesMut;
use common::{Backend, TestIngest};
use mqttbytes::QoS;
use mqttbytes::v4;
use openssl::ssl::{SslConnector, SslMethod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BATCH: i64 = 100;
const CLIENTS: usize = 16;

/// The load one MQTT run puts on a broker.
#[derive(Debug, Clone, Copy)]
struct MqttLoad {
    clients: usize,
    /// Publishes each client keeps unacknowledged.
    window: usize,
    readings_per_message: i64,
    messages_per_client: i64,
}

struct Figures {
    units: f64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn print(mut self, what: &str, unit: &str) {
        self.latencies.sort();
        let l = &self.latencies;
        let pct = |p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
        println!(
            "{what}: {:.0} {unit} in {:.2} s = {:.0} {unit}/s; ack latency p50 {:.1} ms, p99 {:.1} ms",
            self.units,
            self.elapsed.as_secs_f64(),
            self.units / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
        );
    }
}

/// A running service with `CLIENTS` registered monitors.
fn service(backend: Backend) -> (TestIngest, Vec<(String, String)>) {
    let mut t = TestIngest::new(backend);
    let devices = (0..CLIENTS)
        .map(|i| {
            let serial = format!("BENCH-{i}");
            let d = t.register(&serial, DeviceKind::Monitor, None);
            (serial, d.secret)
        })
        .collect();
    t.start();
    (t, devices)
}

/// Every acknowledged reading is in the store, once.
fn check_stored(t: &TestIngest, readings: f64) {
    let mut conn = t.app.store.conn().expect("conn");
    let stored: i64 = (0..CLIENTS)
        .map(|i| {
            let device =
                appliance::devices::Device::find_by_serial(&mut conn, &format!("BENCH-{i}"))
                    .expect("lookup")
                    .expect("device");
            appliance::readings::count_for(&mut conn, device.id).expect("count")
        })
        .sum();
    assert_eq!(
        stored as f64, readings,
        "acknowledged readings missing from the store"
    );
}

fn https(t: &TestIngest, devices: Vec<(String, String)>, batches_per_client: i64) -> Figures {
    let port = t.https_port;
    let cert = t.cert();
    // Every body, built before the clock starts.
    let bodies: Vec<(String, Vec<String>)> = devices
        .into_iter()
        .map(|(_, secret)| {
            let bodies = (0..batches_per_client)
                .map(|b| {
                    let readings: Vec<_> = (b * BATCH..(b + 1) * BATCH)
                        .map(|seq| serde_json::json!({"metric": "cycle_time_ms", "value": 4100 + seq % 50, "ts": 1_767_225_600_000_i64 + seq, "seq": seq}))
                        .collect();
                    serde_json::json!({ "readings": readings }).to_string()
                })
                .collect();
            (secret, bodies)
        })
        .collect();
    let (latencies, elapsed) = actix_web::rt::System::new().block_on(async move {
        let mut tls = SslConnector::builder(SslMethod::tls()).expect("tls");
        tls.set_ca_file(&cert).expect("ca");
        let client = awc::Client::builder()
            .connector(awc::Connector::new().openssl(tls.build()).limit(CLIENTS))
            .timeout(Duration::from_secs(60))
            .finish();
        let started = Instant::now();
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|(secret, bodies)| {
                let client = client.clone();
                actix_web::rt::spawn(async move {
                    let mut latencies = Vec::new();
                    for body in bodies {
                        let sent = Instant::now();
                        let mut response = client
                            .post(format!("https://localhost:{port}/v1/readings"))
                            .bearer_auth(&secret)
                            .content_type("application/json")
                            .send_body(body)
                            .await
                            .expect("post");
                        assert!(response.status().is_success(), "{}", response.status());
                        // Reading the answer to its end lets the connection be reused; an
                        // unread answer makes awc close it, and every batch would pay a TLS
                        // handshake.
                        response.body().await.expect("answer");
                        latencies.push(sent.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        (all, started.elapsed())
    });
    Figures {
        units: latencies.len() as f64 * BATCH as f64,
        elapsed,
        latencies,
    }
}

/// One MQTT client: CONNECT, then a QoS 1 publish of each payload, with up to `window`
/// unacknowledged; returns each publish's time to its PUBACK.
async fn mqtt_client(
    port: u16,
    cert: std::path::PathBuf,
    (serial, secret): (String, String),
    window: usize,
    payloads: Vec<Vec<u8>>,
) -> Vec<Duration> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut tls = SslConnector::builder(SslMethod::tls()).expect("tls");
    tls.set_ca_file(&cert).expect("ca");
    let ssl = tls
        .build()
        .configure()
        .expect("ssl")
        .into_ssl("localhost")
        .expect("ssl");
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    Pin::new(&mut stream).connect().await.expect("handshake");
    let mut out = BytesMut::new();
    let mut connect = v4::Connect::new(serial.clone());
    connect.keep_alive = 60;
    connect.login = Some(v4::Login::new(serial.clone(), secret));
    connect.write(&mut out).expect("encode");
    stream.write_all(&out).await.expect("send CONNECT");
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        match v4::read(&mut buf, 1 << 20) {
            Ok(v4::Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, v4::ConnectReturnCode::Success);
                break;
            }
            Ok(other) => panic!("expected CONNACK, got {other:?}"),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                assert!(stream.read_buf(&mut buf).await.expect("read") > 0);
            }
            Err(err) => panic!("{err:?}"),
        }
    }
    let topic = format!("plantgate/{serial}/readings");
    let total = payloads.len();
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; 65536]));
    let window = Arc::new(tokio::sync::Semaphore::new(window));
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = {
        let sent_at = sent_at.clone();
        let window = window.clone();
        async move {
            let mut out = BytesMut::new();
            for (i, payload) in payloads.into_iter().enumerate() {
                window.acquire().await.expect("window").forget();
                let pkid = (i % 65535) as u16 + 1;
                let mut publish = v4::Publish::new(&topic, QoS::AtLeastOnce, payload);
                publish.pkid = pkid;
                publish.write(&mut out).expect("encode");
                sent_at.lock().unwrap()[pkid as usize] = Some(Instant::now());
                wr.write_all(&out).await.expect("publish");
                out.clear();
            }
            wr
        }
    };
    let reader = async move {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            match v4::read(&mut buf, 1 << 20) {
                Ok(v4::Packet::PubAck(ack)) => {
                    let sent = sent_at.lock().unwrap()[ack.pkid as usize]
                        .take()
                        .expect("a PUBACK for a publish in flight");
                    latencies.push(sent.elapsed());
                    window.add_permits(1);
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    assert!(
                        rd.read_buf(&mut buf).await.expect("read") > 0,
                        "the service closed the connection"
                    );
                }
                Err(err) => panic!("{err:?}"),
            }
        }
        latencies
    };
    let (_, latencies) = tokio::join!(writer, reader);
    latencies
}

/// Runs `load` against the MQTT broker on `port` (whose certificate is `cert`), signing in
/// as `devices`; the figures count messages.
fn mqtt(port: u16, cert: &Path, devices: &[(String, String)], load: MqttLoad) -> Figures {
    let cert = cert.to_owned();
    let window = load.window;
    let per_message = load.readings_per_message;
    // Every payload, built before the clock starts.
    let clients: Vec<_> = devices
        .iter()
        .take(load.clients)
        .map(|device| {
            let payloads: Vec<Vec<u8>> = (0..load.messages_per_client)
                .map(|message| {
                    let readings: Vec<_> = (message * per_message..(message + 1) * per_message)
                        .map(|seq| serde_json::json!({"metric": "cycle_count", "value": seq, "ts": 1_767_225_600_000_i64 + seq, "seq": seq}))
                        .collect();
                    serde_json::json!({ "readings": readings }).to_string().into_bytes()
                })
                .collect();
            (device.clone(), payloads)
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (latencies, elapsed) = runtime.block_on(async move {
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|(device, payloads)| {
                tokio::spawn(mqtt_client(port, cert.clone(), device, window, payloads))
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client"));
        }
        (all, started.elapsed())
    });
    Figures {
        units: latencies.len() as f64,
        elapsed,
        latencies,
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("https") {
        let (t, devices) = service(Backend::Sqlite);
        let batches = if full { 250 } else { 3 };
        let figures = https(&t, devices, batches);
        check_stored(&t, figures.units);
        figures.print(
            &format!("HTTPS batches of {BATCH} from {CLIENTS} clients on SQLite"),
            "readings",
        );
    }
    if wanted("mqtt") {
        let (t, devices) = service(Backend::Sqlite);
        let load = MqttLoad {
            clients: CLIENTS,
            window: 64,
            readings_per_message: 1,
            messages_per_client: if full { 12_500 } else { 50 },
        };
        let figures = mqtt(t.mqtt_port, &t.cert(), &devices, load);
        check_stored(&t, figures.units);
        figures.print(
            &format!(
                "MQTT 3.1.1 QoS 1, one reading a message, {CLIENTS} clients x {} in flight, on SQLite",
                load.window
            ),
            "messages",
        );
    }
    if wanted("postgres") {
        let (t, devices) = service(Backend::Postgres);
        let batches = if full { 150 } else { 3 };
        let figures = https(&t, devices, batches);
        check_stored(&t, figures.units);
        figures.print(
            &format!("HTTPS batches of {BATCH} from {CLIENTS} clients on PostgreSQL"),
            "readings",
        );
    }
    if wanted("mosquitto") {
        beside_mosquitto(full);
    }
}

/// The ingest and Mosquitto under the same MQTT load, one after the other in this run.
fn beside_mosquitto(full: bool) {
    let load = MqttLoad {
        clients: 4,
        window: 100,
        readings_per_message: 10,
        messages_per_client: if full { 25_000 } else { 30 },
    };
    let what = format!(
        "MQTT 3.1.1 QoS 1, {} readings a message, {} clients x {} in flight",
        load.readings_per_message, load.clients, load.window
    );
    let (t, devices) = service(Backend::Sqlite);
    let ingest = mqtt(t.mqtt_port, &t.cert(), &devices, load);
    check_stored(&t, ingest.units * load.readings_per_message as f64);
    let ingest_rate = ingest.units / ingest.elapsed.as_secs_f64();
    ingest.print(&format!("{what}, Plantgate ingest on SQLite"), "messages");
    let key = t.app.config.ingest_certificate().key;
    let broker = mosquitto::Mosquitto::start(&t.cert(), &key);
    let peer = mqtt(broker.port, &t.cert(), &devices, load);
    let peer_rate = peer.units / peer.elapsed.as_secs_f64();
    peer.print(
        &format!("{what}, Mosquitto (TLS, persistence on)"),
        "messages",
    );
    println!(
        "Plantgate / Mosquitto: {:.2} ({ingest_rate:.0} / {peer_rate:.0} messages/s)",
        ingest_rate / peer_rate
    );
}
