//! `plantgate-web`: the portal over HTTPS, and a plain-HTTP listener that only redirects.
//!
//! Runs as an unprivileged user with no capabilities (ports below 1024 come from the
//! service manager's socket or a capability-free sysctl on the image).
//! Exit codes: 0 success; 1 failure; 2 bad configuration.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use appliance::config::Config;
use appliance::tls;
use appliance::{Actor, Appliance};
use clap::Parser;
use portal::AppState;

#[derive(Debug, Parser)]
#[command(
    name = "plantgate-web",
    version,
    about = "Plantgate's portal over HTTPS"
)]
struct Cli {
    #[arg(long, env = "PLANTGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config =
        match Config::load(cli.config.as_deref()).and_then(|c| c.prepare_data_dir().map(|()| c)) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("plantgate-web: {err}");
                return ExitCode::from(2);
            }
        };
    // Every file it needs, read with its own rights before serving anyone: a permission
    // mistake stops the start with one line, not a user's request later.
    if let Err(line) = appliance::keyring::self_check(&config, appliance::keyring::Service::Web) {
        appliance::telemetry::refuse_to_start(&config.data_dir, "plantgate-web", &line);
        return ExitCode::from(3);
    }
    appliance::telemetry::init(&config.log, &config.data_dir, "plantgate-web");
    let runtime = actix_web::rt::System::new();
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plantgate-web: {err}");
            ExitCode::from(1)
        }
    }
}

/// The certificate's SANs: the configured name plus the listening address when it is a
/// specific one.
fn certificate_addresses(listen: &SocketAddr) -> Vec<IpAddr> {
    let mut addresses = vec![IpAddr::from([127, 0, 0, 1])];
    if !listen.ip().is_unspecified() && !addresses.contains(&listen.ip()) {
        addresses.push(listen.ip());
    }
    addresses
}

/// A listening socket as actix makes one (address reuse, so a restart is not refused while
/// old connections linger; a backlog of 1024), but bound here, so that the port is known
/// before anything is built on it.
fn listen(address: SocketAddr) -> Result<TcpListener, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .and_then(|socket| {
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(1024)?;
        Ok(socket)
    })
    .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    Ok(socket.into())
}

/// Parses and binds one `web.*_listen` address; returns the listener and the address it
/// really has (a configured port 0 gets a free one from the kernel, as the tests ask).
fn bind(key: &str, listen_on: &str) -> Result<(TcpListener, SocketAddr), String> {
    let address: SocketAddr = listen_on.parse().map_err(|e| format!("{key}: {e}"))?;
    let listener = listen(address)?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    Ok((listener, bound))
}

async fn serve(mut config: Config) -> Result<(), String> {
    // Bound first, and the configuration then names the addresses really bound: the
    // redirect, the origin check and the links in emails carry the port the portal has.
    let (https_listener, https_listen) = bind("web.https_listen", &config.web.https_listen)?;
    config.web.https_listen = https_listen.to_string();
    let http_listener = match config.web.http_listen.as_deref() {
        Some(http_listen) => Some(bind("web.http_listen", http_listen)?),
        None => None,
    };
    if let Some((_, bound)) = &http_listener {
        config.web.http_listen = Some(bound.to_string());
    }
    let paths = config.portal_certificate();
    let app =
        Appliance::open(config.clone(), &Actor::System("web".into())).map_err(|e| e.to_string())?;
    if tls::ensure_certificate(
        &paths,
        &config.web.host_name,
        &certificate_addresses(&https_listen),
    )
    .map_err(|e| e.to_string())?
    {
        app.audit
            .record(
                appliance::AuditEvent::new(Actor::System("web".into()), "tls.certificate.created")
                    .target("tls:portal")
                    .details(
                        serde_json::json!({ "host": config.web.host_name, "self_signed": true }),
                    ),
            )
            .map_err(|e| e.to_string())?;
    }
    let (acceptor, certificate) = tls::live_acceptor(&paths).map_err(|e| e.to_string())?;
    let clock: portal::Clock = Arc::new(appliance::time::now_us);
    let mut state = AppState::new(app.clone(), clock);
    state.certificate = Some(certificate.clone());
    state.worker = portal::worker::start(app.clone(), Some(certificate))
        .map_err(|e| format!("cannot start the access worker: {e}"))?;
    let state = actix_web::web::Data::new(state);
    // Summaries of refused sign-ins: written as their windows end, and all at shutdown.
    let _refusal_summaries = portal::refusals::summarise_refusals(state.clone());

    let https = HttpServer::new(move || portal::app(state.clone()))
        .listen_openssl(https_listener, acceptor)
        .map_err(|e| format!("cannot listen on {https_listen}: {e}"))?
        .run();

    // The audit log takes time-based checkpoints even when nothing else appends.
    let audit = app.audit.clone();
    actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(Duration::from_secs(60)).await;
            let audit = audit.clone();
            if let Ok(Err(err)) = actix_web::web::block(move || audit.checkpoint_if_due()).await {
                tracing::error!(error = %err, "audit checkpoint failed");
            }
        }
    });

    let Some((http_listener, http_listen)) = http_listener else {
        // Bound, with TLS set up: tell the service manager (or a test) where.
        appliance::sd_notify::ready(&format!("https={https_listen}"));
        return https.await.map_err(|e| e.to_string());
    };
    let target = match https_listen.port() {
        443 => format!("https://{}", config.web.host_name),
        port => format!("https://{}:{port}", config.web.host_name),
    };
    let http = HttpServer::new(move || {
        let target = target.clone();
        App::new()
            .wrap(portal::security_headers())
            .default_service(actix_web::web::to(move |req: HttpRequest| {
                let location = format!(
                    "{target}{}",
                    req.uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                );
                async move {
                    HttpResponse::PermanentRedirect()
                        .insert_header(("Location", location))
                        .finish()
                }
            }))
    })
    .listen(http_listener)
    .map_err(|e| format!("cannot listen on {http_listen}: {e}"))?
    .run();
    appliance::sd_notify::ready(&format!("https={https_listen} http={http_listen}"));
    tokio::try_join!(https, http)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
