//! No idle client can starve the ingest. 1,000 connections from 40 other addresses trickle
//! a request one byte at a time, reconnecting whenever they are closed: half an MQTT
//! CONNECT to the MQTT port, half an HTTP request head to the HTTPS port, after the TLS
//! handshake. Meanwhile a real device posts with curl and publishes with mosquitto_pub;
//! the service runs with the file-descriptor limit of its shipped systemd unit
//! (`LimitNOFILE=`, through `prlimit`). The device is served every time, every trickler is
//! closed (by the deadline, or to make room for a newer connection) without ever being
//! served, and the service never holds more descriptors than the one cap on connections
//! that have not authenticated allows, both ports together. From one address, the cap per
//! address holds. Over HTTPS, a client that has not authenticated
//! cannot hold its connection either: not with a slow head, a slow body, or keep-alive.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use appliance::devices::DeviceKind;
use common::{Backend, TestIngest, batch};
use ingest::mqtt::readings_topic;
use openssl::ssl::{SslConnector, SslMethod, SslStream};
use testkit::on_both_backends;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRICKLERS: usize = 1000;
/// They come from 127.0.0.2 ..= 127.0.0.41, 25 each: under the per-address cap, so that
/// the total cap is what holds them; the device comes from 127.0.0.1.
const SOURCES: usize = 40;
/// The handshake deadline for these tests (the default is 10 s).
const DEADLINE_SECONDS: u64 = 2;
/// A trickler sends the next byte of its CONNECT after this long without an answer.
const TRICKLE_EVERY: Duration = Duration::from_millis(300);
/// And reconnects this long after it was closed.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Device rounds (one HTTPS post and one MQTT publish each) while the flood goes on.
const ROUNDS: i64 = 6;
/// Hang guard: a client the service never closes fails the test after this long, far past
/// any deadline; no assertion here is about how fast anything was.
const GUARD: Duration = Duration::from_secs(90);

/// `LimitNOFILE=` of the shipped unit: the limit the service really runs with.
fn unit_nofile() -> u64 {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../image/meta-plantgate/recipes-plantgate/plantgate/files/plantgate-ingest.service");
    let text = std::fs::read_to_string(&unit).expect("the ingest's unit");
    text.lines()
        .find_map(|line| line.trim().strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE=")
        .trim()
        .parse()
        .expect("LimitNOFILE= is a number")
}

/// Raises this test process's own soft limit on open files to `needed` (its tricklers hold
/// a socket each), with util-linux's `prlimit`.
fn raise_own_nofile(needed: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard): (u64, u64) = (fields[3].parse().unwrap(), fields[4].parse().unwrap());
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={needed}:"))
        .status()
        .expect("prlimit");
    assert!(status.success(), "prlimit could not raise the soft limit");
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[derive(Default)]
struct Flood {
    /// TCP connections made.
    connections: AtomicUsize,
    /// Connections past the TLS handshake and trickling, now.
    trickling: AtomicUsize,
    /// Connections the service closed without a word (in the TLS handshake or after it).
    closed: AtomicUsize,
    /// Connections on which the service sent anything at all (a CONNACK, say).
    answered: AtomicUsize,
    /// The longest a connection stayed open, in milliseconds: printed, as a figure (the
    /// deadline is what closes a trickler that is not evicted first).
    longest_ms: AtomicU64,
}

/// Which port a trickler trickles to, and what.
#[derive(Clone, Copy, Debug)]
enum Target {
    Mqtt,
    Https,
}

impl Target {
    /// A request sent a byte at a time and never finished: a CONNECT that announces 1,000
    /// bytes, or an HTTP request head that never ends.
    fn slow_request(self) -> Vec<u8> {
        let mut request = match self {
            Target::Mqtt => {
                let mut packet = vec![0x10, 0xE8, 0x07]; // CONNECT, remaining length 1000
                packet.extend_from_slice(b"\x00\x04MQTT\x04\xC2\x00\x3C\x00\x08trickler");
                packet
            }
            Target::Https => b"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_vec(),
        };
        request.resize(1003, b'x');
        request
    }

    /// Whether what the service sent only refuses: an HTTPS client whose head is too slow
    /// gets "408 Request Timeout" on its way out. Anything else would serve the trickler.
    fn refuses(self, answer: &[u8]) -> bool {
        match self {
            Target::Mqtt => false,
            Target::Https => answer.starts_with(b"HTTP/1.1 408"),
        }
    }
}

enum Outcome {
    Closed,
    Answered,
}

async fn trickle_once(
    target: Target,
    tcp: tokio::net::TcpStream,
    tls: &SslConnector,
    flood: &Flood,
) -> Outcome {
    let ssl = tls.configure().unwrap().into_ssl("127.0.0.1").unwrap();
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    if Pin::new(&mut stream).connect().await.is_err() {
        return Outcome::Closed;
    }
    flood.trickling.fetch_add(1, Ordering::SeqCst);
    let outcome = trickle(target, &mut stream).await;
    flood.trickling.fetch_sub(1, Ordering::SeqCst);
    outcome
}

async fn trickle(
    target: Target,
    stream: &mut tokio_openssl::SslStream<tokio::net::TcpStream>,
) -> Outcome {
    for byte in target.slow_request() {
        if stream.write_all(&[byte]).await.is_err() {
            return Outcome::Closed;
        }
        let mut answer = [0u8; 64];
        match tokio::time::timeout(TRICKLE_EVERY, stream.read(&mut answer)).await {
            Err(_quiet) => {}
            Ok(Ok(0) | Err(_)) => return Outcome::Closed,
            Ok(Ok(n)) if target.refuses(&answer[..n]) => return Outcome::Closed,
            Ok(Ok(_)) => return Outcome::Answered,
        }
    }
    Outcome::Answered // the whole request went through: it was waited for
}

async fn trickler(
    target: Target,
    source: Ipv4Addr,
    port: u16,
    tls: Arc<SslConnector>,
    stop: Arc<AtomicBool>,
    flood: Arc<Flood>,
) {
    let service = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while !stop.load(Ordering::SeqCst) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        let Ok(tcp) = socket.connect(service).await else {
            tokio::time::sleep(RECONNECT_AFTER).await;
            continue;
        };
        flood.connections.fetch_add(1, Ordering::SeqCst);
        let opened = Instant::now();
        let outcome = trickle_once(target, tcp, &tls, &flood).await;
        let held = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        flood.longest_ms.fetch_max(held, Ordering::SeqCst);
        match outcome {
            Outcome::Closed => flood.closed.fetch_add(1, Ordering::SeqCst),
            Outcome::Answered => flood.answered.fetch_add(1, Ordering::SeqCst),
        };
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// A flood of tricklers on their own runtime: [`Tricklers::start`] connects them,
/// [`Tricklers::stop`] lets each end once its last connection is closed.
struct Tricklers {
    runtime: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    flood: Arc<Flood>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Tricklers {
    /// `n` tricklers; `aim(i)` says where the `i`th trickles from and to. Returns once every
    /// one has connected at least once.
    fn start(t: &TestIngest, n: usize, aim: impl Fn(usize) -> (Target, Ipv4Addr, u16)) -> Self {
        let mut tls = SslConnector::builder(SslMethod::tls_client()).unwrap();
        tls.set_ca_file(t.cert()).unwrap();
        let tls = Arc::new(tls.build());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flood = Arc::new(Flood::default());
        let handles = (0..n)
            .map(|i| {
                let (target, source, port) = aim(i);
                runtime.spawn(trickler(
                    target,
                    source,
                    port,
                    tls.clone(),
                    stop.clone(),
                    flood.clone(),
                ))
            })
            .collect();
        wait_for("the tricklers did not all connect", || {
            flood.connections.load(Ordering::SeqCst) >= n
        });
        Tricklers {
            runtime,
            stop,
            flood,
            handles,
        }
    }

    /// Stops reconnecting and waits for every trickler's last connection to be closed by
    /// the service (by the deadline, or evicted); returns the counts.
    fn stop(self) -> Arc<Flood> {
        self.stop.store(true, Ordering::SeqCst);
        self.runtime.block_on(async {
            for trickler in self.handles {
                tokio::time::timeout(GUARD, trickler)
                    .await
                    .expect("a trickler was never closed: no deadline")
                    .unwrap();
            }
        });
        self.flood
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + GUARD;
    while !done() {
        assert!(Instant::now() < until, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One flood at a time: the SQLite and PostgreSQL cases would otherwise run together.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tricklers_cannot_keep_a_device_out(backend: Backend) {
    let _alone = ONE_FLOOD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    raise_own_nofile(TRICKLERS as u64 + 1024);
    let mut t = TestIngest::new(backend);
    t.ingest_settings(&format!("handshake_timeout_seconds = {DEADLINE_SECONDS}"));
    let nofile = unit_nofile();
    t.limit_files(nofile);
    let monitor = t.register("MM-UNDER-FIRE", DeviceKind::Monitor, None);
    t.start();
    let pid = t.pid().unwrap();
    let before = open_files(pid);

    let tricklers = Tricklers::start(&t, TRICKLERS, |i| {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
        if i % 2 == 0 {
            (Target::Mqtt, source, t.mqtt_port)
        } else {
            (Target::Https, source, t.https_port)
        }
    });
    let flood = tricklers.flood.clone();

    // The device, while the flood goes on: every post and every publish is served.
    let topic = readings_topic("MM-UNDER-FIRE");
    let mut most_files = 0;
    let mut least_trickling = usize::MAX;
    for round in 0..ROUNDS {
        least_trickling = least_trickling.min(flood.trickling.load(Ordering::SeqCst));
        let (status, reply) = t.curl(
            &monitor.secret,
            batch(None, "cycle_count", 2 * round + 1, 1, 1.0).as_bytes(),
            &[],
        );
        assert_eq!(status, 200, "HTTPS post {round} under the flood: {reply}");
        let published = t.mosquitto_pub(
            "MM-UNDER-FIRE",
            &monitor.secret,
            &topic,
            &batch(None, "cycle_count", 2 * round + 2, 1, 1.0),
        );
        assert!(
            published.status.success(),
            "MQTT publish {round} under the flood: {}",
            String::from_utf8_lossy(&published.stderr)
        );
        most_files = most_files.max(open_files(pid));
    }
    // Every trickler ends: its last connection is closed by the deadline (or evicted).
    let flood = tricklers.stop();
    let connections = flood.connections.load(Ordering::SeqCst);
    let closed = flood.closed.load(Ordering::SeqCst);
    let answered = flood.answered.load(Ordering::SeqCst);
    eprintln!(
        "{connections} trickling connections (at least {least_trickling} open at each round), \
         {closed} closed unanswered, {answered} answered, the longest open for {} ms \
         (deadline {DEADLINE_SECONDS} s); the service held at most {most_files} files \
         (limit {nofile}; {before} before the flood)",
        flood.longest_ms.load(Ordering::SeqCst)
    );
    assert_eq!(answered, 0, "a trickler was answered");
    assert_eq!(
        closed, connections,
        "every trickler was closed by the service"
    );
    assert!(
        least_trickling > 0,
        "the flood was not on while the device was served"
    );
    // The cap, both ports together, with room for connections accepted and not yet closed
    // after an eviction: well under one descriptor per trickler.
    let cap = appliance::config::IngestConfig::default().max_unauthenticated;
    assert!(
        most_files <= before + cap + 200,
        "the service held {most_files} descriptors: more than the cap of {cap} allows"
    );
    let expected: Vec<i64> = (1..=2 * ROUNDS).collect();
    assert_eq!(t.stored_seqs(&monitor.device), expected);
}

/// Tricklers from one address, all to the HTTPS port.
const ONE_ADDRESS_TRICKLERS: usize = 200;

fn one_address_holds_no_more_than_its_cap(backend: Backend) {
    let _alone = ONE_FLOOD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    raise_own_nofile(ONE_ADDRESS_TRICKLERS as u64 + 1024);
    let mut t = TestIngest::new(backend);
    // The default deadline (10 s): without a cap per address, nearly every trickler would
    // hold its connection at any moment.
    t.limit_files(unit_nofile());
    let monitor = t.register("MM-NEXT-DOOR", DeviceKind::Monitor, None);
    t.start();
    let pid = t.pid().unwrap();
    let before = open_files(pid);
    let per_address = appliance::config::IngestConfig::default().max_unauthenticated_per_address;

    let tricklers = Tricklers::start(&t, ONE_ADDRESS_TRICKLERS, |_| {
        (Target::Https, Ipv4Addr::new(127, 0, 0, 2), t.https_port)
    });
    let mut most_files = 0;
    for round in 0..ROUNDS {
        let (status, reply) = t.curl(
            &monitor.secret,
            batch(None, "cycle_count", round + 1, 1, 1.0).as_bytes(),
            &[],
        );
        assert_eq!(status, 200, "HTTPS post {round} beside the flood: {reply}");
        most_files = most_files.max(open_files(pid));
    }
    let flood = tricklers.stop();
    let connections = flood.connections.load(Ordering::SeqCst);
    eprintln!(
        "{connections} connections from one address; the service held at most {most_files} \
         files ({before} before; cap per address {per_address})"
    );
    assert_eq!(
        flood.answered.load(Ordering::SeqCst),
        0,
        "a trickler was served"
    );
    // Room for connections accepted and not yet closed after an eviction, and for the
    // device's own connection; far below one descriptor per trickler.
    assert!(
        most_files <= before + per_address + 64,
        "the service held {most_files} descriptors for one address (cap {per_address})"
    );
    assert_eq!(
        t.stored_seqs(&monitor.device),
        (1..=ROUNDS).collect::<Vec<_>>()
    );
}

/// A blocking TLS connection to the HTTPS port, for requests written by hand.
fn https(t: &TestIngest) -> SslStream<TcpStream> {
    let mut tls = SslConnector::builder(SslMethod::tls_client()).unwrap();
    tls.set_ca_file(t.cert()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", t.https_port)).unwrap();
    tls.build().connect("127.0.0.1", tcp).unwrap()
}

/// Reads until the service closes the connection (or `GUARD` passes); returns what came.
fn read_to_close(stream: &mut SslStream<TcpStream>) -> String {
    stream.get_ref().set_read_timeout(Some(GUARD)).unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "the service kept the connection open: {}",
                    String::from_utf8_lossy(&received)
                )
            }
            Err(_) => break, // reset or TLS closed: closed all the same
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// One response on a connection that stays open: its head and body, by Content-Length.
fn read_response(stream: &mut SslStream<TcpStream>) -> String {
    stream
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = stream.read(&mut chunk).expect("a response");
        assert!(n > 0, "closed before the response was complete: {text}");
        received.extend_from_slice(&chunk[..n]);
    }
}

fn a_client_that_has_not_authenticated_cannot_hold_an_https_connection(backend: Backend) {
    let mut t = TestIngest::new(backend);
    t.ingest_settings(&format!("handshake_timeout_seconds = {DEADLINE_SECONDS}"));
    let monitor = t.register("MM-HTTPS", DeviceKind::Monitor, None);
    t.start();

    // A request head sent a byte at a time: 408 and closed, whatever it still sends.
    let mut slow_head = https(&t);
    let head = b"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_vec();
    let mut sent = 0;
    slow_head
        .get_ref()
        .set_read_timeout(Some(TRICKLE_EVERY))
        .unwrap();
    let until = Instant::now() + GUARD;
    let mut answer = Vec::new();
    loop {
        assert!(Instant::now() < until, "a slow head kept its connection");
        let byte = head.get(sent).copied().unwrap_or(b'x');
        sent += 1;
        if slow_head.write_all(&[byte]).is_err() {
            break;
        }
        let mut chunk = [0u8; 1024];
        match slow_head.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A body that never arrives, for a route that reads it before authenticating.
    let mut slow_body = https(&t);
    slow_body
        .write_all(b"POST /v1/enrol HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    let answer = read_to_close(&mut slow_body);
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");

    // A bad secret is refused before the body is read, and the connection closed.
    let mut no_body = https(&t);
    no_body
        .write_all(b"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer pgd_wrong\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    let answer = read_to_close(&mut no_body);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Keep-alive after an anonymous request would let the next head trickle untimed: the
    // connection is closed after the answer.
    let mut anonymous = https(&t);
    anonymous
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let answer = read_to_close(&mut anonymous);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // An authenticated device keeps its connection for the next request.
    let mut device = https(&t);
    for seq in 1..=2 {
        let body = batch(None, "cycle_count", seq, 1, 1.0);
        let request = format!(
            "POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            monitor.secret,
            body.len()
        );
        device.write_all(request.as_bytes()).unwrap();
        let answer = read_response(&mut device);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    assert_eq!(t.stored_seqs(&monitor.device), [1, 2]);
}

on_both_backends!(
    tricklers_cannot_keep_a_device_out,
    one_address_holds_no_more_than_its_cap,
    a_client_that_has_not_authenticated_cannot_hold_an_https_connection,
);
