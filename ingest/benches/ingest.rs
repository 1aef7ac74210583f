//! Ingest throughput over HTTPS on the embedded SQLite store.
//!
//! `cargo bench -p plantgate-ingest --bench ingest` starts the real `plantgate-ingest`,
//! posts batches of 100 readings from 16 concurrent keep-alive HTTPS clients, and prints
//! readings/s and the p50/p99 acknowledgement latency (an ack means the batch is durable).
//! Under `cargo test` the same code runs on a few batches, so it cannot rot.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::config::Config;
use appliance::devices::{Device, DeviceKind, DeviceRequest};
use appliance::keys::SigningKey;
use appliance::models::{Organisation, Site};
use appliance::{Actor, Appliance};
use openssl::ssl::{SslConnector, SslMethod};

const BATCH: i64 = 100;
const CLIENTS: i64 = 16;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[allow(clippy::print_stdout)]
fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let batches_per_client: i64 = if full { 250 } else { 3 };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config_path = dir.path().join("plantgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {:?}\n[log]\nlevel = \"warn\"\n[ingest]\nhttps_listen = \"127.0.0.1:{port}\"\n",
            dir.path().join("data").display().to_string()
        ) + "mqtt_listen = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let config = Config::load(Some(&config_path)).expect("config");
    config.prepare_data_dir().expect("data dir");
    SigningKey::generate(&config.keys_dir()).expect("key");
    let actor = Actor::System("bench".into());
    let app = Appliance::open(config, &actor).expect("open");
    let org = Organisation::create(&app.audit, &actor, "Bench").expect("org");
    let site = Site::create(&app.audit, &actor, org.id, "Hall", "").expect("site");
    let secrets: Vec<String> = (0..CLIENTS)
        .map(|i| {
            let request = DeviceRequest {
                serial: format!("BENCH-{i}"),
                kind: DeviceKind::Monitor,
                site: site.id,
                gateway: None,
                model: None,
            };
            Device::register(&app.audit, &actor, &request)
                .expect("device")
                .1
                .reveal()
                .to_owned()
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_plantgate-ingest"))
        .env("PLANTGATE_CONFIG", &config_path)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn plantgate-ingest");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "plantgate-ingest did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cert = app.config.ingest_certificate().cert;

    let (latencies, elapsed) = actix_web::rt::System::new().block_on(async move {
        let mut tls = SslConnector::builder(SslMethod::tls()).expect("tls");
        tls.set_ca_file(&cert).expect("ca");
        let client = awc::Client::builder()
            .connector(awc::Connector::new().openssl(tls.build()).limit(CLIENTS as usize))
            .timeout(Duration::from_secs(60))
            .finish();
        let started = Instant::now();
        let tasks: Vec<_> = secrets
            .into_iter()
            .map(|secret| {
                let client = client.clone();
                actix_web::rt::spawn(async move {
                    let mut latencies = Vec::new();
                    for b in 0..batches_per_client {
                        let readings: Vec<_> = (b * BATCH..(b + 1) * BATCH)
                            .map(|seq| serde_json::json!({"metric": "cycle_time_ms", "value": 4100 + seq % 50, "ts": 1_767_225_600_000_i64 + seq, "seq": seq}))
                            .collect();
                        let body = serde_json::json!({ "readings": readings }).to_string();
                        let sent = Instant::now();
                        let response = client
                            .post(format!("https://localhost:{port}/v1/readings"))
                            .bearer_auth(&secret)
                            .content_type("application/json")
                            .send_body(body)
                            .await
                            .expect("post");
                        assert!(response.status().is_success(), "{}", response.status());
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
    let _ = child.kill();
    let _ = child.wait();

    let mut latencies = latencies;
    latencies.sort();
    let readings = latencies.len() as f64 * BATCH as f64;
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "HTTPS batches of {BATCH} from {CLIENTS} clients on SQLite: {readings:.0} readings in {:.2} s = {:.0} readings/s; ack latency p50 {:.1} ms, p99 {:.1} ms",
        elapsed.as_secs_f64(),
        readings / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
    );
}
