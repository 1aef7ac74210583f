//! `plantgate-web`: the portal over HTTPS, and a plain-HTTP listener that only redirects.
//!
//! Runs as an unprivileged user with no capabilities (ports below 1024 come from the
//! service manager's socket or a capability-free sysctl on the image).
//! Exit codes: 0 success; 1 failure; 2 bad configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, middleware};
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

async fn serve(config: Config) -> Result<(), String> {
    let https_listen: SocketAddr = config
        .web
        .https_listen
        .parse()
        .map_err(|e| format!("web.https_listen: {e}"))?;
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
    let body_limit = config.web.max_body_bytes;

    let https = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(actix_web::web::FormConfig::default().limit(body_limit))
            .app_data(actix_web::web::PayloadConfig::new(body_limit))
            .wrap(middleware::from_fn(portal::utf8_forms_only))
            .wrap(middleware::from_fn(portal::same_origin_only))
            .wrap(portal::security_headers())
            .configure(portal::config)
    })
    .bind_openssl(https_listen, acceptor)
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

    match &config.web.http_listen {
        None => https.await.map_err(|e| e.to_string()),
        Some(http_listen) => {
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
            .bind(http_listen.as_str())
            .map_err(|e| format!("cannot listen on {http_listen}: {e}"))?
            .run();
            tokio::try_join!(https, http)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}
