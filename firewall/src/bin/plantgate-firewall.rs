//! `plantgate-firewall`: the nftables controller daemon.
//!
//! Runs with CAP_NET_ADMIN only. Reads the desired state from the store, applies it, and
//! reconciles when poked over its Unix socket, when another process changes its table
//! (`firewall::monitor`), and on a timer. Under systemd (`Type=notify`) it reports ready
//! once the table is applied and feeds the watchdog while its loop is healthy. Stopping
//! it, even with `kill -9`, opens nothing; its lease on the pinholes lapses within
//! `firewall.lease_seconds` and every pinhole closes then, so a revoke it never saw holds.
//!
//! Exit codes: 0 success; 1 failure; 2 bad configuration (including a missing interface).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use appliance::config::Config;
use appliance::grants::Grant;
use appliance::grants::control::{self, Answer};
use appliance::ids::GrantId;
use appliance::{Actor, Appliance};
use clap::{Parser, Subcommand};
use firewall::controller::Controller;
use firewall::ruleset::{self, Policy};
use firewall::{FirewallError, text};

#[derive(Debug, Parser)]
#[command(
    name = "plantgate-firewall",
    version,
    about = "Plantgate's nftables controller"
)]
struct Cli {
    #[arg(long, global = true, env = "PLANTGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the store's state, then serve pokes on the Unix socket and reconcile on a timer.
    Run,
    /// Reconcile once and exit.
    Reconcile,
    /// Keep a change to management access (uplink interface, portal ports, SSH) that the
    /// running controller would otherwise roll back.
    Confirm,
    /// Show whether the table is in place, how many pinholes it holds, and the drop counters.
    Status,
    /// Print the ruleset that would be applied, without touching the kernel or needing root.
    DryRun {
        /// Print nftables JSON instead of nft syntax.
        #[arg(long)]
        json: bool,
    },
}

enum Request {
    Poke(mpsc::Sender<String>),
    Confirm(mpsc::Sender<String>),
    /// One grant changed: apply only its elements, and say what the kernel now holds.
    Grant(GrantId, mpsc::Sender<String>),
    Tick,
    /// Someone else changed the table: repair it now.
    Changed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("plantgate-firewall: {err}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Run)
        && let Err(line) =
            appliance::keyring::self_check(&config, appliance::keyring::Service::Firewall)
    {
        appliance::telemetry::refuse_to_start(&config.data_dir, "plantgate-firewall", &line);
        return ExitCode::from(3);
    }
    appliance::telemetry::init(&config.log, &config.data_dir, "plantgate-firewall");
    let result = match cli.command {
        Command::Run => run(config),
        Command::Reconcile => reconcile_once(config),
        Command::Confirm => confirm(&config),
        Command::Status => status(),
        Command::DryRun { json } => dry_run(&config, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plantgate-firewall: {err}");
            let config_error = matches!(
                err,
                FirewallError::NoSuchInterface { .. }
                    | FirewallError::Appliance(appliance::Error::Config(_))
            );
            ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

fn controller(config: Config) -> Result<Controller, FirewallError> {
    // Check the interfaces before opening anything, so a bad config changes nothing.
    Policy::from_config(&config)?.check_interfaces()?;
    let app = Appliance::open(config, &Actor::System("firewall".to_owned()))?;
    Controller::new(app)
}

fn reconcile_once(config: Config) -> Result<(), FirewallError> {
    let summary = controller(config)?.reconcile()?;
    tracing::info!(%summary, "reconciled");
    Ok(())
}

fn run(config: Config) -> Result<(), FirewallError> {
    let socket = config.firewall_socket();
    let interval = Duration::from_secs(config.firewall.reconcile_seconds);
    let mut controller = controller(config)?;
    // Watch for changes by others from before the first apply, so none slips in between.
    let (requests, inbox) = mpsc::channel();
    let changes = requests.clone();
    let watch = firewall::monitor::Watch::start(move || changes.send(Request::Changed).is_ok());
    watch.reconciling();
    let summary = controller.reconcile()?;
    tracing::info!(%summary, "firewall applied at start");

    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| FirewallError::Socket {
        path: socket.clone(),
        source,
    })?;
    // The web portal and the CLI poke; nobody else on the box needs to.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).map_err(
        |source| FirewallError::Socket {
            path: socket.clone(),
            source,
        },
    )?;

    appliance::sd_notify::ready(&format!("applied: {summary}"));
    let mut liveness = Liveness::default();
    // Ticks come every second; a reconcile runs every `interval`, or at once when an
    // unconfirmed change must be rolled back.
    let ticks = requests.clone();
    std::thread::spawn(move || {
        while ticks.send(Request::Tick).is_ok() {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let mut last_reconcile = std::time::Instant::now();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let requests = requests.clone();
            std::thread::spawn(move || serve(stream, &requests));
        }
    });
    // One reconcile at a time, whoever asked.
    for request in inbox {
        if matches!(request, Request::Tick) {
            liveness.tick();
        }
        // The lease is renewed every third of it, and only while the store can be read.
        if matches!(request, Request::Tick)
            && let Err(err) = controller.keep_lease()
        {
            tracing::error!(error = %err, "cannot renew the lease: every pinhole closes when it lapses");
        }
        let reply = match request {
            Request::Grant(id, reply) => {
                let answer = match controller.apply_grant(id) {
                    Ok(state) => Answer::Grant { id, state },
                    Err(err) => Answer::Failed(err.to_string()),
                };
                let _ = reply.send(answer.line());
                continue;
            }
            Request::Tick if last_reconcile.elapsed() < interval && !controller.rollback_due() => {
                continue;
            }
            Request::Confirm(reply) => {
                let answer = match controller.confirm() {
                    Ok(words) => format!("ok {words}"),
                    Err(err) => format!("error {err}"),
                };
                let _ = reply.send(answer);
                continue;
            }
            Request::Tick | Request::Changed => None,
            Request::Poke(reply) => Some(reply),
        };
        last_reconcile = std::time::Instant::now();
        watch.reconciling();
        let result = controller.reconcile();
        liveness.record(result.is_ok());
        match &result {
            Ok(summary) if summary != &Default::default() => tracing::info!(%summary, "reconciled"),
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "reconcile failed"),
        }
        if let Some(reply) = reply {
            let _ = reply.send(match result {
                Ok(summary) => format!("ok {summary}"),
                Err(err) => format!("error {err}"),
            });
        }
    }
    Ok(())
}

/// How long reconciles may keep failing before the watchdog is starved and systemd restarts
/// the controller.
const FAILING_GRACE: Duration = Duration::from_secs(60);

/// The systemd watchdog (`WatchdogSec=` in the unit): fed every second while the loop turns
/// and its reconciles succeed, so a hung loop or one failing for good gets restarted.
#[derive(Debug, Default)]
struct Liveness {
    failing_since: Option<std::time::Instant>,
    said_starving: bool,
    said_unreachable: bool,
}

impl Liveness {
    fn record(&mut self, ok: bool) {
        if ok {
            self.failing_since = None;
        } else {
            self.failing_since
                .get_or_insert_with(std::time::Instant::now);
        }
    }

    fn tick(&mut self) {
        if self
            .failing_since
            .is_some_and(|since| since.elapsed() >= FAILING_GRACE)
        {
            if !std::mem::replace(&mut self.said_starving, true) {
                tracing::error!("reconciles keep failing: no longer feeding the watchdog");
            }
            return;
        }
        self.said_starving = false;
        match appliance::sd_notify::notify("WATCHDOG=1\n") {
            Ok(_) => self.said_unreachable = false,
            Err(err) if !std::mem::replace(&mut self.said_unreachable, true) => {
                tracing::warn!(error = %err, "cannot feed the watchdog at $NOTIFY_SOCKET");
            }
            Err(_) => {}
        }
    }
}

fn serve(stream: UnixStream, requests: &mpsc::Sender<Request>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    let (reply, answer) = mpsc::channel();
    // The protocol is parsed where its clients build it (`appliance::grants::control`).
    let request = match control::Request::parse(&line) {
        Ok(control::Request::Reconcile) => Request::Poke(reply),
        Ok(control::Request::Confirm) => Request::Confirm(reply),
        Ok(control::Request::Grant(id)) => Request::Grant(id, reply),
        Err(why) => {
            let _ = (&stream).write_all(format!("{}\n", Answer::Failed(why).line()).as_bytes());
            return;
        }
    };
    if requests.send(request).is_err() {
        return;
    }
    let answer = answer
        .recv()
        .unwrap_or_else(|_| "error controller stopped".to_owned());
    let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
}

#[allow(clippy::print_stdout)]
fn confirm(config: &Config) -> Result<(), FirewallError> {
    let path = config.firewall_socket();
    let socket_error = |source| FirewallError::Socket {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(&path).map_err(socket_error)?;
    (&stream).write_all(b"confirm\n").map_err(socket_error)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(socket_error)?;
    match answer.trim().strip_prefix("ok ") {
        Some(words) => {
            appliance::outln!("{words}");
            Ok(())
        }
        None => Err(FirewallError::Nft(answer.trim().to_owned())),
    }
}

#[allow(clippy::print_stdout)]
fn status() -> Result<(), FirewallError> {
    let Some(listing) = firewall::nft::list_table()? else {
        appliance::outln!("table inet plantgate: absent (the controller has not run here)");
        return Ok(());
    };
    let (pinholes, forwards) = firewall::nft::elements(&listing);
    appliance::outln!(
        "table inet plantgate: present, {} pinholes, {} port forwards",
        pinholes.len(),
        forwards.len()
    );
    for (counter, packets) in firewall::nft::drop_counters(&listing) {
        appliance::outln!("{counter:<20} {packets} packets dropped");
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn dry_run(config: &Config, json: bool) -> Result<(), FirewallError> {
    let policy = Policy::from_config(config)?;
    // Grants are shown when the store can be read; the dry run works without it.
    let now = appliance::time::now_us();
    let live = appliance::audit::continuity::open_store(config)
        .and_then(|store| Grant::live(&mut *store.conn()?, now))
        .unwrap_or_default();
    let wanted = firewall::controller::desired(&live, now)?;
    let pinholes: Vec<_> = wanted.pinholes.into_values().collect();
    let forwards: Vec<_> = wanted.forwards.into_values().collect();
    let batch = ruleset::replace_table(&policy, &pinholes, &forwards);
    if json {
        appliance::outln!(
            "{}",
            serde_json::to_string_pretty(&batch)
                .map_err(|err| FirewallError::Nft(err.to_string()))?
        );
    } else {
        appliance::out!("{}", text::render(&batch));
    }
    Ok(())
}
