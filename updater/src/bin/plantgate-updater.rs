//! `plantgate-updater`: the vendor's signing tool and the box's installer.
//!
//! Exit codes: 0 success, 1 refused or failed (a rejected bundle, a failed health check),
//! 2 bad configuration or usage.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use appliance::config::Config;
use appliance::firmware::{
    DeviceStatus, Firmware, FirmwareId, Rollout, RolloutId, RolloutRequest, Selection,
};
use appliance::time::format_us;
use appliance::{Actor, Appliance};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use updater::bundle::{self, BundleSpec};
use updater::config::{SYSTEM_UPDATER_CONFIG, UpdaterConfig};
use updater::firmware;
use updater::manifest::{APPLIANCE_TARGET, parse_time};
use updater::pki::{self, signer_from_args};
use updater::progress::Progress;
use updater::trust::{self, TrustSet};
use updater::{Updater, UpdaterError};

#[derive(Debug, Parser)]
#[command(
    name = "plantgate-updater",
    version,
    about = "Plantgate's signed OTA updates"
)]
struct Cli {
    /// The appliance configuration (store, data dir); default as for `plantgate`.
    #[arg(long, global = true, env = "PLANTGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The updater's settings: hardware, slots, boot environment, trust anchors. (Not a
    /// `PLANTGATE_*` variable: those are the appliance's own settings.)
    #[arg(long, global = true, env = "PLANTGATE_UPDATER_CONFIG", default_value = SYSTEM_UPDATER_CONFIG)]
    updater_config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Vendor: make anchor and signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Vendor: make and sign anchor sets. Box: accept a rotation.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Vendor: make, sign and inspect bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Box: check a bundle against the trust anchors and this box, writing nothing.
    Verify { bundle: PathBuf },
    /// Box: verify, then write the bundle to the inactive slot and arm it for trial boots.
    Install { bundle: PathBuf },
    /// Box, at boot: run the health checks, mark a slot on trial good, record a rollback.
    Health,
    /// Box: slots, boot environment, versions, floor and trust.
    Status,
    /// Box: firmware for field devices, and its staged rollouts.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
}

#[derive(Debug, Subcommand)]
enum FirmwareCommand {
    /// Verify a firmware bundle for a device model (target `device:MODEL`) and store it.
    Upload {
        bundle: PathBuf,
        #[arg(long)]
        model: String,
    },
    /// Stored firmware.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Staged rollouts: create, list, pause, resume.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Offer a stored firmware to a share of its model's devices, or to listed serials.
    Create {
        #[arg(long)]
        firmware: i64,
        /// This share (1-100) of the model's active devices.
        #[arg(long, conflicts_with = "serials", required_unless_present = "serials")]
        percent: Option<u8>,
        /// Exactly this device; repeat for a group.
        #[arg(long = "serial")]
        serials: Vec<String>,
        /// Stop the rollout once more than this share (0-100) of its devices failed.
        #[arg(long, default_value_t = 20)]
        failure_threshold_pct: u8,
    },
    /// Rollouts with each device's status.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop offering the firmware for now.
    Pause { id: i64 },
    /// Offer it again after a pause.
    Resume { id: i64 },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// A long-lived, self-signed anchor for one key holder (keep its key offline).
    Anchor {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 25)]
        years: i64,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// A short-lived signing certificate issued by an anchor.
    Signing {
        #[arg(long)]
        anchor_cert: PathBuf,
        #[arg(long)]
        anchor_key: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 90)]
        days: i64,
        #[arg(long)]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Writes an (unsigned) anchor set: the image ships version 1; later versions are rotations.
    Create {
        #[arg(long = "anchor", required = true)]
        anchors: Vec<PathBuf>,
        #[arg(long)]
        threshold: usize,
        #[arg(long)]
        version: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Adds a signature (by a key of the current anchor set) to an anchor set.
    Sign {
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Box: accepts a new anchor set signed by the current threshold.
    Rotate { file: PathBuf },
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// The signing certificate, followed by any intermediates (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The private key file (PEM). A `pkcs11:` URI is refused until a token signer exists.
    #[arg(long)]
    key: String,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Writes an unsigned bundle from payload files.
    Create {
        #[arg(long, default_value = "plantgate")]
        product: String,
        /// `appliance`, or `device:MODEL` for field-device firmware.
        #[arg(long, default_value = APPLIANCE_TARGET)]
        target: String,
        #[arg(long)]
        version: semver::Version,
        /// A hardware identifier this bundle installs on; repeat for several.
        #[arg(long = "hardware", required = true)]
        hardware: Vec<String>,
        #[arg(long, default_value = "0.0.0")]
        min_installed_version: semver::Version,
        #[arg(long)]
        security_version: u64,
        /// RFC 3339; default now.
        #[arg(long)]
        created_at: Option<String>,
        #[arg(long, default_value_t = 90)]
        expires_in_days: i64,
        /// NAME=FILE, e.g. rootfs=rootfs.ext4; repeat for several.
        #[arg(long = "payload", required = true)]
        payloads: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Adds a signature to a bundle, in place.
    Sign {
        bundle: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Prints a bundle's manifest and signature count (trusting nothing).
    Show { bundle: PathBuf },
}

/// An indicatif bar per phase on stderr; hidden when stderr is not a terminal.
#[derive(Debug, Default)]
struct Bar(RefCell<Option<ProgressBar>>);

impl Progress for Bar {
    fn start(&self, phase: &str, total_bytes: u64) {
        let bar = ProgressBar::new(total_bytes);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>16} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(phase.to_owned());
        *self.0.borrow_mut() = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.0.borrow() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.0.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("plantgate-updater: {err}");
            match err {
                UpdaterError::Config(_) | UpdaterError::Usage(_) => ExitCode::from(2),
                UpdaterError::Appliance(appliance::Error::Config(_)) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[allow(clippy::print_stdout)]
fn run(cli: Cli) -> Result<ExitCode, UpdaterError> {
    match cli.command {
        Command::Key(command) => key(command),
        Command::Trust(TrustCommand::Create {
            anchors,
            threshold,
            version,
            out,
        }) => {
            let certs = anchors
                .iter()
                .map(|path| {
                    std::fs::read(path)
                        .map_err(UpdaterError::io(path))
                        .and_then(|pem| {
                            openssl::x509::X509::from_pem(&pem).map_err(|err| {
                                UpdaterError::Usage(format!(
                                    "{}: not a PEM certificate ({err})",
                                    path.display()
                                ))
                            })
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let envelope = trust::anchor_set_envelope(version, threshold, now(), &certs)?;
            trust::write_anchor_set(&envelope, &out)?;
            appliance::outln!(
                "anchor set v{version}: {} anchors, threshold {threshold} -> {}",
                certs.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Trust(TrustCommand::Sign { file, key }) => {
            let signer = signer_from_args(&key.cert, &key.key)?;
            let mut envelope = trust::read_anchor_set(&file)?;
            TrustSet::from_body(&envelope.body)?;
            trust::sign_envelope(&mut envelope, signer.as_ref())?;
            trust::write_anchor_set(&envelope, &file)?;
            appliance::outln!(
                "signed by {}: {} signatures",
                signer.describe(),
                envelope.signatures.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bundle(command) => bundle_command(command),
        Command::Trust(TrustCommand::Rotate { file }) => {
            let updater = open_box(&cli.config, &cli.updater_config)?;
            let set = updater.rotate_trust(&file)?;
            appliance::outln!(
                "trust anchors rotated to v{}: {} anchors, threshold {}",
                set.version,
                set.anchors.len(),
                set.threshold
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { bundle } => {
            let updater = open_box(&cli.config, &cli.updater_config)?;
            let verified = updater.verify(&bundle, &Bar::default())?;
            appliance::outln!(
                "OK: {} {} version {} (security version {}), signed by {}",
                verified.manifest.product,
                verified.manifest.target,
                verified.manifest.version,
                verified.manifest.security_version,
                verified.signed_by.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Install { bundle } => {
            let updater = open_box(&cli.config, &cli.updater_config)?;
            let report = updater.install(&bundle, &Bar::default())?;
            appliance::outln!(
                "installed version {} into slot {}; it boots next, with {} trial boots to pass `plantgate-updater health`",
                report.version,
                report.slot,
                report.tries
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Health => health(&cli.config, &cli.updater_config),
        Command::Firmware(command) => firmware_command(command, &cli.config, &cli.updater_config),
        Command::Status => {
            let updater = open_box(&cli.config, &cli.updater_config)?;
            let status = updater.status()?;
            appliance::outln!("booted slot: {}", status.booted);
            appliance::outln!("boot order: {:?}", status.boot.order());
            for slot in [updater::slots::SlotId::A, updater::slots::SlotId::B] {
                appliance::outln!(
                    "slot {slot}: {} version={} ok={} good={} trial_boots_left={}",
                    updater.slots.describe(slot),
                    status
                        .state
                        .slot(slot)
                        .map(|s| format!("{} (security {})", s.version, s.security_version))
                        .unwrap_or_else(|| "-".into()),
                    status.boot.ok(slot),
                    status.boot.good(slot),
                    status.boot.tries(slot)
                );
            }
            appliance::outln!(
                "floor: version {} security version {}",
                status.state.floor.version,
                status.state.floor.security_version
            );
            appliance::outln!(
                "trust: anchor set v{}, {} anchors, threshold {}",
                status.trust_version,
                status.anchors,
                status.threshold
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cli_actor() -> Actor {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Actor::System(format!("cli:uid={uid}"))
}

fn json_out(value: &impl serde::Serialize) -> Result<String, UpdaterError> {
    serde_json::to_string_pretty(value).map_err(|err| UpdaterError::Usage(err.to_string()))
}

#[allow(clippy::print_stdout)]
fn firmware_command(
    command: FirmwareCommand,
    config: &Option<PathBuf>,
    updater_config: &Path,
) -> Result<ExitCode, UpdaterError> {
    let actor = cli_actor();
    let app_config = Config::load(config.as_deref()).map_err(appliance::Error::Config)?;
    let app = Appliance::open(app_config, &actor)?;
    match command {
        FirmwareCommand::Upload { bundle, model } => {
            let updater_config = UpdaterConfig::load(updater_config)?;
            let trust = updater_config.trust_store(&app.config.data_dir);
            let stored = firmware::upload(
                &app,
                &trust,
                &updater_config.product,
                &actor,
                &bundle,
                &model,
                &Bar::default(),
            )?;
            appliance::outln!(
                "stored firmware {}: {} version {} (security version {}), {} bytes, sha256 {}, signed by {}",
                stored.id.0,
                stored.model,
                stored.version,
                stored.security_version,
                stored.payload_size,
                stored.payload_sha256,
                stored.signed_by
            );
        }
        FirmwareCommand::List { json } => {
            let all = Firmware::list(&mut *app.store.conn()?)?;
            if json {
                appliance::outln!("{}", json_out(&all)?);
            } else {
                for fw in all {
                    appliance::outln!(
                        "{:<5} {:<20} {:<12} security={} size={} sha256={} uploaded={}",
                        fw.id.0,
                        fw.model,
                        fw.version,
                        fw.security_version,
                        fw.payload_size,
                        fw.payload_sha256,
                        format_us(fw.uploaded_at_us)
                    );
                }
            }
        }
        FirmwareCommand::Rollout(RolloutCommand::Create {
            firmware,
            percent,
            serials,
            failure_threshold_pct,
        }) => {
            let selection = match percent {
                Some(pct) => Selection::Percent(pct),
                None => Selection::Serials(serials),
            };
            let rollout = Rollout::create(
                &app.audit,
                &actor,
                &RolloutRequest {
                    firmware: FirmwareId(firmware),
                    selection,
                    failure_threshold_pct,
                    organisation: None,
                },
                appliance::time::now_us(),
            )?;
            appliance::outln!("{}", rollout.id.0);
        }
        FirmwareCommand::Rollout(RolloutCommand::List { json }) => {
            let all = Rollout::list(&mut *app.store.conn()?)?;
            if json {
                appliance::outln!("{}", json_out(&all)?);
            } else {
                for summary in all {
                    let r = &summary.rollout;
                    appliance::outln!(
                        "rollout {} firmware {} ({} {}) {} {} threshold={}% devices={} updated={} failed={}{}",
                        r.id.0,
                        summary.firmware.id.0,
                        summary.firmware.model,
                        summary.firmware.version,
                        r.selection,
                        r.state,
                        r.failure_threshold_pct,
                        summary.devices.len(),
                        summary.count(DeviceStatus::Updated),
                        summary.count(DeviceStatus::Failed),
                        r.stop_reason
                            .as_deref()
                            .map(|reason| format!(" ({reason})"))
                            .unwrap_or_default()
                    );
                    for (serial, status, detail) in &summary.devices {
                        appliance::outln!("  {serial:<20} {status:<12} {detail}");
                    }
                }
            }
        }
        FirmwareCommand::Rollout(RolloutCommand::Pause { id }) => {
            let rollout = Rollout::set_paused(
                &app.audit,
                &actor,
                RolloutId(id),
                true,
                appliance::time::now_us(),
            )?;
            appliance::outln!("rollout {} is {}", rollout.id.0, rollout.state);
        }
        FirmwareCommand::Rollout(RolloutCommand::Resume { id }) => {
            let rollout = Rollout::set_paused(
                &app.audit,
                &actor,
                RolloutId(id),
                false,
                appliance::time::now_us(),
            )?;
            appliance::outln!("rollout {} is {}", rollout.id.0, rollout.state);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn open_box(config: &Option<PathBuf>, updater_config: &Path) -> Result<Updater, UpdaterError> {
    let updater_config = UpdaterConfig::load(updater_config)?;
    let config = Config::load(config.as_deref()).map_err(appliance::Error::Config)?;
    let app = Appliance::open(config, &Actor::System("updater".into()))?;
    Ok(Updater::open(app, updater_config))
}

#[allow(clippy::print_stdout)]
fn health(config: &Option<PathBuf>, updater_config: &Path) -> Result<ExitCode, UpdaterError> {
    let updater_config = UpdaterConfig::load(updater_config)?;
    let config = Config::load(config.as_deref()).map_err(appliance::Error::Config)?;
    // A store that cannot be opened and migrated is itself a failed health check; there is
    // nowhere to record it, and the bootloader's counter takes it from here.
    let app = match Appliance::open(config, &Actor::System("updater".into())) {
        Ok(app) => app,
        Err(err) => {
            appliance::outln!("UNHEALTHY: store migrated: {err}");
            return Ok(ExitCode::from(1));
        }
    };
    let checks = updater::health::configured_checks(&app.store, &updater_config.health);
    let updater = Updater::open(app, updater_config);
    let report = updater.health(&checks)?;
    if let Some(slot) = report.rolled_back_from {
        appliance::outln!(
            "ROLLED BACK: slot {slot} never passed its health check; running slot {}",
            report.booted
        );
    }
    for (check, problem) in &report.failures {
        appliance::outln!("UNHEALTHY: {check}: {problem}");
    }
    if report.marked_good {
        appliance::outln!("slot {} is healthy and marked good", report.booted);
    } else if report.healthy() {
        appliance::outln!("slot {} is healthy", report.booted);
    }
    Ok(if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[allow(clippy::print_stdout)]
fn key(command: KeyCommand) -> Result<ExitCode, UpdaterError> {
    let day = 86_400;
    match command {
        KeyCommand::Anchor {
            name,
            years,
            out_dir,
        } => {
            let pair = pki::new_anchor(&name, now() - day, now() + years * 365 * day)?;
            std::fs::create_dir_all(&out_dir).map_err(UpdaterError::io(&out_dir))?;
            let (cert, key) = (
                out_dir.join(format!("{name}.anchor.pem")),
                out_dir.join(format!("{name}.anchor.key")),
            );
            pki::write_pair(&pair, &cert, &key)?;
            appliance::outln!(
                "anchor {name}: {} and {} (keep the key offline)",
                cert.display(),
                key.display()
            );
        }
        KeyCommand::Signing {
            anchor_cert,
            anchor_key,
            name,
            days,
            out_dir,
        } => {
            let (mut certs, key) = pki::read_pair(&anchor_cert, &anchor_key)?;
            let anchor = pki::KeyPair {
                cert: certs.remove(0),
                key,
            };
            let pair = pki::issue_signing_cert(&anchor, &name, now() - 3600, now() + days * day)?;
            std::fs::create_dir_all(&out_dir).map_err(UpdaterError::io(&out_dir))?;
            let (cert, key) = (
                out_dir.join(format!("{name}.pem")),
                out_dir.join(format!("{name}.key")),
            );
            pki::write_pair(&pair, &cert, &key)?;
            appliance::outln!(
                "signing key {name}, valid {days} days: {} and {}",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
fn bundle_command(command: BundleCommand) -> Result<ExitCode, UpdaterError> {
    match command {
        BundleCommand::Create {
            product,
            target,
            version,
            hardware,
            min_installed_version,
            security_version,
            created_at,
            expires_in_days,
            payloads,
            out,
        } => {
            let created_at = match created_at {
                Some(raw) => parse_time("--created-at", &raw).map_err(UpdaterError::Usage)?,
                None => now(),
            };
            let payloads = payloads
                .iter()
                .map(|arg| {
                    arg.split_once('=')
                        .map(|(name, file)| (name.to_owned(), PathBuf::from(file)))
                        .ok_or_else(|| {
                            UpdaterError::Usage(format!("--payload {arg:?}: use NAME=FILE"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let spec = BundleSpec {
                product,
                target,
                version,
                hardware,
                min_installed_version,
                security_version,
                created_at,
                expires_at: created_at + expires_in_days * 86_400,
                payloads,
            };
            let manifest = bundle::create(&spec, &out, &Bar::default())?;
            appliance::outln!(
                "unsigned bundle {} version {} with {} payloads -> {}; sign it with `bundle sign`",
                manifest.target,
                manifest.version,
                manifest.payloads.len(),
                out.display()
            );
        }
        BundleCommand::Sign { bundle: path, key } => {
            let signer = signer_from_args(&key.cert, &key.key)?;
            let count = bundle::sign(&path, signer.as_ref())?;
            appliance::outln!("signed by {}: {count} signatures", signer.describe());
        }
        BundleCommand::Show { bundle: path } => {
            let (envelope, _) = bundle::read_header(&path)?;
            appliance::outln!("{}", String::from_utf8_lossy(&envelope.body));
            appliance::outln!(
                "signatures: {} (not checked; use `verify` on the box)",
                envelope.signatures.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
