//! `plantgate-ingest`: the device-side telemetry service. Run it as an unprivileged user;
//! the firewall lets the device network, and only it, reach its ports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, web};
use appliance::config::Config;
use appliance::device_ca::DeviceCa;
use appliance::tls::{acceptor, ensure_certificate};
use appliance::{Actor, Appliance};
use clap::Parser;
use ingest::decode::Limits;
use ingest::gate::Gate;
use ingest::https;
use ingest::shared::{AuthFailureLog, Shared};
use ingest::writer::Writer;

#[derive(Debug, Parser)]
#[command(
    name = "plantgate-ingest",
    version,
    about = "Plantgate's device telemetry ingest (HTTPS and MQTT over TLS)"
)]
struct Cli {
    #[arg(long, env = "PLANTGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Audited authentication failures per minute; the rest are counted.
const AUTH_FAILURES_PER_MINUTE: u32 = 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("plantgate-ingest: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(problem) = ingest::gate::validate(&config.ingest) {
        eprintln!("plantgate-ingest: config: {problem}");
        return ExitCode::from(2);
    }
    if let Err(line) = appliance::keyring::self_check(&config, appliance::keyring::Service::Ingest)
    {
        appliance::telemetry::refuse_to_start(&config.data_dir, "plantgate-ingest", &line);
        return ExitCode::from(3);
    }
    appliance::telemetry::init(&config.log, &config.data_dir, "plantgate-ingest");
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plantgate-ingest: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), String> {
    let app =
        Appliance::open(config, &Actor::System("ingest".into())).map_err(|e| e.to_string())?;
    let ingest = app.config.ingest.clone();
    let paths = app.config.ingest_certificate();
    let https_addr: std::net::SocketAddr =
        ingest.https_listen.parse().map_err(|e| format!("{e}"))?;
    let addresses = [https_addr.ip()];
    if ensure_certificate(&paths, "localhost", &addresses).map_err(|e| e.to_string())? {
        tracing::info!(cert = %paths.cert.display(), "made a self-signed ingest certificate");
    }
    let device_ca = DeviceCa::load(&app.config.keys_dir()).map_err(|e| e.to_string())?;
    ingest::deliver::start(app.clone()).map_err(|e| e.to_string())?;
    let writer = Writer::start(app.clone()).map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        app: app.clone(),
        writer,
        limits: Limits {
            max_body_bytes: ingest.max_body_bytes,
            max_decoded_bytes: ingest.max_decoded_bytes,
            max_batch_readings: ingest.max_batch_readings,
            max_future_skew_us: ingest.max_future_skew_seconds.saturating_mul(1_000_000),
            earliest_us: ingest.earliest_timestamp_us().map_err(|e| e.to_string())?,
        },
        auth_failures: AuthFailureLog::new(AUTH_FAILURES_PER_MINUTE),
        device_ca,
        gate: Arc::new(Gate::new(
            ingest.max_unauthenticated,
            ingest.max_unauthenticated_per_address,
        )),
    });

    let mut mqtt_addr = None;
    if let Some(mqtt_listen) = &ingest.mqtt_listen {
        let mut mqtt_tls = acceptor(&paths).map_err(|e| e.to_string())?;
        request_device_certificates(&mut mqtt_tls, &shared.device_ca, &app.store)
            .map_err(|e| e.to_string())?;
        let mqtt_tls = mqtt_tls.build();
        let std_listener =
            std::net::TcpListener::bind(mqtt_listen).map_err(|e| format!("{mqtt_listen}: {e}"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        mqtt_addr = Some(std_listener.local_addr().map_err(|e| e.to_string())?);
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("ingest-mqtt".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(error = %err, "MQTT runtime failed");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(listener) => ingest::mqtt::serve(listener, mqtt_tls, shared).await,
                        Err(err) => tracing::error!(error = %err, "MQTT listener failed"),
                    }
                });
            })
            .map_err(|e| e.to_string())?;
    }

    let mut https_tls = acceptor(&paths).map_err(|e| e.to_string())?;
    request_device_certificates(&mut https_tls, &shared.device_ca, &app.store)
        .map_err(|e| e.to_string())?;
    let gate = shared.gate.clone();
    let data = web::Data::from(shared);
    // Clients that have not authenticated: see `ingest::https` and `ingest::auth`. The TLS
    // handshake and the first request's head are timed separately: half the deadline each,
    // so that together they take no longer than an MQTT client's handshake and CONNECT may.
    // Connections are shared out between the workers.
    let listener = https::bind(https_addr).map_err(|e| format!("{https_addr}: {e}"))?;
    let https_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let settings = https::Listener {
        workers: ingest.http_workers,
        max_connections_per_worker: ingest.https_max_connections.div_ceil(ingest.http_workers),
        half_deadline: Duration::from_secs(ingest.handshake_timeout_seconds) / 2,
    };
    let https_tls = https_tls.build();
    let listening = format!(
        "https={https_addr}{}",
        mqtt_addr.map_or_else(String::new, |addr| format!(" mqtt={addr}")),
    );
    tracing::info!(%listening, "plantgate-ingest listening");
    actix_web::rt::System::new()
        .block_on(async move {
            let server = https::server(listener, &settings, https_tls, gate, move || {
                App::new()
                    .app_data(data.clone())
                    .wrap(actix_web::middleware::from_fn(ingest::auth::guard))
                    .configure(ingest::http::config)
            })?;
            // Both listeners are bound and their TLS set up: tell systemd (or a test), with
            // the addresses really bound (a configured port 0 gets one from the kernel).
            appliance::sd_notify::ready(&listening);
            server.await
        })
        .map_err(|e| e.to_string())
}

/// Asks clients for a certificate from the device CA, optionally: a client without one
/// authenticates by bearer secret, one with a certificate from any other issuer is refused
/// in the handshake, and so is one the store no longer accepts (revoked, its device revoked,
/// or unknown). That check takes an idle store connection only if one is free at once, so a
/// handshake never waits on the pool; without one it lets the handshake finish, and the
/// request (or MQTT CONNECT) is checked against the store as always.
fn request_device_certificates(
    tls: &mut openssl::ssl::SslAcceptorBuilder,
    ca: &DeviceCa,
    store: &appliance::Store,
) -> Result<(), openssl::error::ErrorStack> {
    tls.set_ca_file(ca.cert_path())?;
    let ca_cert = openssl::x509::X509::from_pem(
        &ca.cert_pem()
            .map_err(|_| openssl::error::ErrorStack::get())?,
    )?;
    let mut names = openssl::stack::Stack::new()?;
    names.push(ca_cert.subject_name().to_owned()?)?;
    tls.set_client_ca_list(names);
    let store = store.clone();
    tls.set_verify_callback(openssl::ssl::SslVerifyMode::PEER, move |verified, ctx| {
        // The chain to the device CA must hold; then the store decides about the leaf.
        if !verified || ctx.error_depth() != 0 {
            return verified;
        }
        let Some(der) = ctx.current_cert().and_then(|cert| cert.to_der().ok()) else {
            return false;
        };
        match store.try_conn() {
            Some(mut conn) => match appliance::device_ca::authenticate(
                &mut conn,
                &der,
                appliance::time::now_us(),
            ) {
                Ok(device) => device.is_some(),
                Err(err) => {
                    tracing::warn!(error = %err, "certificate check in the handshake failed; the request will be checked");
                    true
                }
            },
            None => true,
        }
    });
    tls.set_session_id_context(b"plantgate-ingest")?;
    Ok(())
}
