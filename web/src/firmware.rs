//! Firmware for field devices in the portal: stored bundles, uploading a signed bundle for a
//! device model (verified by the updater's own checks before anything is kept), and staged
//! rollouts (create, pause, resume). Administrators only, and a sensitive action: the
//! password must have been given within `web.reauthenticate_seconds`.
//!
//! An upload streams to a private file in `{data_dir}/firmware/` (never whole in memory),
//! then a verification job runs on a thread of its own while the browser is sent to its
//! progress page, which refreshes itself until the job is done (no JavaScript needed). With
//! JavaScript, `firmware-upload.js` also shows the bytes sent while the file uploads.
//!
//! The portal verifies and stores firmware itself, as its own unprivileged user: reading the
//! trust anchors needs no privilege, and the file it keeps is only ever served to devices,
//! which verify it again themselves. It never touches slots or the boot environment.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_multipart::Multipart;
use actix_web::{HttpRequest, HttpResponse, web};
use appliance::firmware::{DeviceStatus, Firmware, Rollout, RolloutId, RolloutRequest, Selection};
use appliance::models::UserId;
use appliance::{Actor, Appliance};
use askama::Template;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tempfile::NamedTempFile;
use updater::UpdaterError;
use updater::config::UpdaterConfig;
use updater::firmware::{self as fw, Uploader};
use updater::progress::Progress;

use crate::{AppState, Nav, SignedIn, WebError, see_other, source};

type Page = Result<HttpResponse, WebError>;

/// Where a sensitive page sends a user whose password is not fresh.
const CONFIRM_FOR_FIRMWARE: &str = "/account/confirm?next=firmware";
/// Verifications running at once; each reads a whole bundle from disk.
const MAX_RUNNING_JOBS: usize = 2;
/// Finished jobs are kept this long for their result page.
const KEEP_JOBS_US: i64 = 3600 * 1_000_000;
/// The form's text fields (token, model) are short.
const MAX_TEXT_FIELD: usize = 1024;

/// The page's CSP: the portal's, plus its own script and the upload request that script
/// makes. Every other page allows no script at all.
const CSP_WITH_SCRIPT: &str = "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/firmware-upload.js", web::get().to(script))
        .route("/firmware", web::get().to(firmware_page))
        .route("/firmware", web::post().to(upload))
        .route("/firmware/uploads/{job}", web::get().to(job_page))
        .route("/firmware/rollouts", web::post().to(create_rollout))
        .route(
            "/firmware/rollouts/{id}/{change}",
            web::post().to(change_rollout),
        );
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("../static/firmware-upload.js"))
}

// ----- verification jobs -----

/// What a finished verification came to.
#[derive(Debug, Clone)]
enum JobOutcome {
    Stored(Box<Firmware>),
    /// The refusal's code and reason, as audited.
    Refused {
        code: String,
        reason: String,
    },
}

/// One upload being verified: progress as the updater reports it, then the outcome.
#[derive(Debug)]
struct Job {
    owner: UserId,
    model: String,
    file: String,
    started_us: i64,
    phase: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
    outcome: Mutex<Option<JobOutcome>>,
}

impl Job {
    fn outcome(&self) -> Option<JobOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn finish(&self, outcome: JobOutcome) {
        *self
            .outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(outcome);
    }
}

/// The updater's progress reports, kept where the progress page reads them.
struct JobProgress(Arc<Job>);

impl Progress for JobProgress {
    fn start(&self, phase: &str, total_bytes: u64) {
        *self
            .0
            .phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = phase.to_owned();
        self.0.total.store(total_bytes, Ordering::Relaxed);
        self.0.done.store(0, Ordering::Relaxed);
    }

    fn advance(&self, bytes: u64) {
        self.0.done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn finish(&self) {}
}

/// The portal's verification jobs, by an unguessable id; each visible to its owner only.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|job| job.outcome().is_none())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, job: Arc<Job>, now_us: i64) -> Result<String, WebError> {
        let mut id = [0u8; 16];
        openssl::rand::rand_bytes(&mut id)
            .map_err(|err| WebError::Internal(format!("random job id: {err}")))?;
        let id = hex::encode(id);
        let mut jobs = self.lock();
        jobs.retain(|_, job| job.outcome().is_none() || now_us - job.started_us < KEEP_JOBS_US);
        jobs.insert(id.clone(), job);
        Ok(id)
    }

    fn find(&self, id: &str, owner: UserId) -> Option<Arc<Job>> {
        self.lock()
            .get(id)
            .filter(|job| job.owner == owner)
            .cloned()
    }
}

// ----- receiving a bundle -----

/// Why a bundle did not arrive whole.
#[derive(Debug)]
enum Received {
    TooLarge(u64),
    /// The client stopped sending, or sent something that is not a body.
    Cut(String),
    Io(String),
}

impl Received {
    fn code(&self) -> &'static str {
        match self {
            Received::TooLarge(_) => "bundle.too_large",
            Received::Cut(_) => "upload.incomplete",
            Received::Io(_) => "updater.io",
        }
    }

    fn reason(&self) -> String {
        match self {
            Received::TooLarge(max) => format!(
                "the file is larger than {max} bytes, the most this appliance accepts (web.max_firmware_bytes)"
            ),
            Received::Cut(why) => format!("the upload did not arrive whole: {why}"),
            Received::Io(why) => format!("the appliance could not store the upload: {why}"),
        }
    }
}

/// Streams `body` into `staged` on a blocking thread, chunk by chunk, refusing it once it
/// passes `max` bytes. Memory use is a few chunks, whatever the size.
async fn receive<S, E>(
    mut body: S,
    staged: NamedTempFile,
    max: u64,
) -> Result<(NamedTempFile, u64), Received>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = web::block(move || -> std::io::Result<NamedTempFile> {
        let mut staged = staged;
        while let Some(chunk) = rx.blocking_recv() {
            staged.as_file_mut().write_all(&chunk)?;
        }
        Ok(staged)
    });
    let mut total = 0u64;
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                total += bytes.len() as u64;
                if total > max {
                    failure = Some(Received::TooLarge(max));
                    break;
                }
                if tx.send(bytes).await.is_err() {
                    break;
                }
            }
            Err(err) => {
                failure = Some(Received::Cut(err.to_string()));
                break;
            }
        }
    }
    drop(tx);
    let staged = writer
        .await
        .map_err(|err| Received::Io(err.to_string()))?
        .map_err(|err| Received::Io(err.to_string()))?;
    // A refused upload's file is dropped here, which deletes it.
    match failure {
        Some(failure) => Err(failure),
        None => Ok((staged, total)),
    }
}

/// The updater's settings, read afresh for each upload so a changed file takes effect.
fn updater_config(state: &AppState) -> Result<UpdaterConfig, UpdaterError> {
    UpdaterConfig::load(&state.app.config.web.updater_config)
}

/// Verifies a received bundle and stores it if it passes; refusals are audited by the
/// updater with their code and reason.
fn verify_and_store(
    app: &Appliance,
    uploader: &Uploader<'_>,
    staged: NamedTempFile,
    model: &str,
    progress: &dyn Progress,
    config: &UpdaterConfig,
) -> Result<Firmware, UpdaterError> {
    fw::store_staged(
        app,
        &config.trust_store(&app.config.data_dir),
        &config.product,
        uploader,
        staged,
        model,
        progress,
    )
}

/// Audits a refusal the portal makes before the updater sees the bundle.
async fn audit_refusal(
    state: &web::Data<AppState>,
    actor: Actor,
    source: String,
    file: String,
    model: String,
    code: &'static str,
    reason: String,
) -> Result<(), WebError> {
    let app = state.app.clone();
    web::block(move || {
        let uploader = Uploader {
            actor: &actor,
            source: &source,
            file: &file,
        };
        fw::audit_rejection(&app, &uploader, &model, code, &reason)
    })
    .await?
    .map_err(updater_error)
}

fn updater_error(err: UpdaterError) -> WebError {
    match err {
        UpdaterError::Appliance(err) => err.into(),
        other => {
            tracing::error!(error = %other, code = other.code(), "firmware request failed");
            WebError::Internal(other.code().to_owned())
        }
    }
}

// ----- the page -----

struct FirmwareRow {
    id: i64,
    model: String,
    version: String,
    security_version: i64,
    size: String,
    sha256: String,
    signed_by: String,
    uploaded: String,
}

struct RolloutRow {
    id: i64,
    firmware: String,
    selection: String,
    state: String,
    threshold: i32,
    devices: usize,
    counts: String,
    stop_reason: String,
    running: bool,
    paused: bool,
}

/// What the upload form shows again after a refusal.
#[derive(Debug, Default)]
struct UploadForm {
    model: String,
    model_error: Option<String>,
    bundle_error: Option<String>,
    stored: Option<String>,
}

#[derive(Template)]
#[template(path = "firmware.html")]
struct FirmwarePage {
    signed_in: Option<Nav>,
    csrf: String,
    max_bytes: u64,
    available: Option<String>,
    firmware: Vec<FirmwareRow>,
    rollouts: Vec<RolloutRow>,
    upload: UploadForm,
    rollout_problem: Option<String>,
}

#[derive(Template)]
#[template(path = "firmware_job.html")]
struct JobPage {
    signed_in: Option<Nav>,
    model: String,
    file: String,
    phase: String,
    done: u64,
    total: u64,
    percent: u64,
}

fn human_size(bytes: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn rollout_row(summary: appliance::firmware::RolloutSummary) -> RolloutRow {
    let statuses = [
        DeviceStatus::Assigned,
        DeviceStatus::Downloading,
        DeviceStatus::Downloaded,
        DeviceStatus::Verified,
        DeviceStatus::Installing,
        DeviceStatus::Updated,
        DeviceStatus::Failed,
    ];
    let counts = statuses
        .iter()
        .map(|status| (status, summary.count(*status)))
        .filter(|(_, n)| *n > 0)
        .map(|(status, n)| format!("{status} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let r = summary.rollout;
    RolloutRow {
        id: r.id.0,
        firmware: format!(
            "{} {} (#{})",
            summary.firmware.model, summary.firmware.version, summary.firmware.id.0
        ),
        selection: r.selection.clone(),
        running: r.state == "running",
        paused: r.state == "paused",
        state: r.state,
        threshold: r.failure_threshold_pct,
        devices: summary.devices.len(),
        counts,
        stop_reason: r.stop_reason.unwrap_or_default(),
    }
}

/// Renders the page: stored firmware, the organisation's rollouts, and the forms.
async fn render(
    state: &web::Data<AppState>,
    user: &SignedIn,
    upload: UploadForm,
    rollout_problem: Option<String>,
    status: actix_web::http::StatusCode,
) -> Page {
    let (app, organisation) = (state.app.clone(), user.user.organisation_id);
    let (firmware, rollouts) = web::block(move || -> appliance::error::Result<_> {
        let mut conn = app.store.conn()?;
        Ok((
            Firmware::list(&mut conn)?,
            Rollout::list_for_organisation(&mut conn, organisation)?,
        ))
    })
    .await??;
    let available = updater_config(state).err().map(|err| err.to_string());
    let page = FirmwarePage {
        signed_in: Some(user.nav()),
        csrf: user.csrf.clone(),
        max_bytes: state.app.config.web.max_firmware_bytes,
        available,
        firmware: firmware
            .into_iter()
            .rev()
            .map(|f| FirmwareRow {
                id: f.id.0,
                size: human_size(f.payload_size),
                uploaded: appliance::access::short_time(f.uploaded_at_us),
                model: f.model,
                version: f.version,
                security_version: f.security_version,
                sha256: f.payload_sha256,
                signed_by: f.signed_by,
            })
            .collect(),
        rollouts: rollouts.into_iter().rev().map(rollout_row).collect(),
        upload,
        rollout_problem,
    };
    let body = page
        .render()
        .map_err(|err| WebError::Internal(err.to_string()))?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CSP_WITH_SCRIPT))
        .body(body))
}

/// The checks every firmware page makes: an administrator whose password is fresh.
fn guard(state: &AppState, user: &SignedIn) -> Result<(), WebError> {
    user.admin_only("Managing firmware")?;
    user.require_recent_authentication(state, CONFIRM_FOR_FIRMWARE)
}

pub async fn firmware_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    guard(&state, &user)?;
    render(
        &state,
        &user,
        UploadForm::default(),
        None,
        actix_web::http::StatusCode::OK,
    )
    .await
}

/// Reads a short text field of the form.
async fn text_field(field: &mut actix_multipart::Field) -> Result<String, WebError> {
    let mut value = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk =
            chunk.map_err(|err| WebError::BadRequest(format!("The form was cut off: {err}")))?;
        if value.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(WebError::BadRequest("A form field is too long.".into()));
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value).map_err(|_| WebError::BadRequest("A form field is not text.".into()))
}

/// The upload form: `csrf`, `model`, then the file `bundle`, in that order (as the page
/// sends them), so the token is checked before a byte of the file is stored.
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: SignedIn,
    mut form: Multipart,
) -> Page {
    guard(&state, &user)?;
    let (mut csrf_ok, mut model) = (false, String::new());
    let actor = Actor::User(user.user.id);
    let from = source(&req);
    let refuse_model = |model: String, problem: String| UploadForm {
        model,
        model_error: Some(problem),
        ..UploadForm::default()
    };
    while let Some(field) = form.next().await {
        let mut field =
            field.map_err(|err| WebError::BadRequest(format!("The form was cut off: {err}")))?;
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "csrf" => {
                user.check_csrf(&text_field(&mut field).await?)?;
                csrf_ok = true;
            }
            "model" => model = text_field(&mut field).await?.trim().to_owned(),
            "bundle" => {
                if !csrf_ok {
                    return Err(WebError::Forbidden(
                        "The form was stale or not from this session; reload the page and try again."
                            .into(),
                    ));
                }
                let file = field
                    .content_disposition()
                    .and_then(|d| d.get_filename())
                    .unwrap_or("upload.pgb")
                    .to_owned();
                if let Err(err) = appliance::firmware::clean_model(&model) {
                    let problem = err.to_string();
                    audit_refusal(
                        &state,
                        actor,
                        from,
                        file,
                        model.clone(),
                        "request.invalid",
                        problem.clone(),
                    )
                    .await?;
                    return render(
                        &state,
                        &user,
                        refuse_model(model, problem),
                        None,
                        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                    )
                    .await;
                }
                let config = match updater_config(&state) {
                    Ok(config) => config,
                    Err(err) => {
                        let problem = format!("Firmware cannot be verified here: {err}");
                        return render(
                            &state,
                            &user,
                            UploadForm {
                                model,
                                bundle_error: Some(problem),
                                ..UploadForm::default()
                            },
                            None,
                            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                        )
                        .await;
                    }
                };
                if state.firmware_jobs.running() >= MAX_RUNNING_JOBS {
                    let problem = format!(
                        "{MAX_RUNNING_JOBS} bundles are being verified right now; upload again when one is done."
                    );
                    return render(
                        &state,
                        &user,
                        UploadForm {
                            model,
                            bundle_error: Some(problem),
                            ..UploadForm::default()
                        },
                        None,
                        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                    )
                    .await;
                }
                let staged = {
                    let app = state.app.clone();
                    web::block(move || fw::staging_file(&app))
                        .await?
                        .map_err(updater_error)?
                };
                let max = state.app.config.web.max_firmware_bytes;
                let staged = match receive(&mut field, staged, max).await {
                    Ok((staged, _)) => staged,
                    Err(failure) => {
                        let reason = failure.reason();
                        audit_refusal(
                            &state,
                            actor,
                            from,
                            file,
                            model.clone(),
                            failure.code(),
                            reason.clone(),
                        )
                        .await?;
                        return render(
                            &state,
                            &user,
                            UploadForm {
                                model,
                                bundle_error: Some(reason),
                                ..UploadForm::default()
                            },
                            None,
                            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                        )
                        .await;
                    }
                };
                let job = Arc::new(Job {
                    owner: user.user.id,
                    model: model.clone(),
                    file: file.clone(),
                    started_us: state.now(),
                    phase: Mutex::new("checking signatures".into()),
                    total: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    outcome: Mutex::new(None),
                });
                let id = state.firmware_jobs.add(job.clone(), state.now())?;
                let app = state.app.clone();
                // A thread of its own: verifying reads the whole bundle, which must not hold
                // up the blocking pool that every page's store access uses.
                std::thread::Builder::new()
                    .name("firmware-verify".into())
                    .spawn(move || {
                        let progress = JobProgress(job.clone());
                        let uploader = Uploader {
                            actor: &actor,
                            source: &from,
                            file: &file,
                        };
                        let outcome = match verify_and_store(
                            &app, &uploader, staged, &model, &progress, &config,
                        ) {
                            Ok(stored) => JobOutcome::Stored(Box::new(stored)),
                            Err(err) => JobOutcome::Refused {
                                code: err.code().to_owned(),
                                // "refused: " is the page's own heading; the rejection says why.
                                reason: err
                                    .rejection()
                                    .map_or_else(|| err.to_string(), ToString::to_string),
                            },
                        };
                        job.finish(outcome);
                    })
                    .map_err(|err| WebError::Internal(format!("verification thread: {err}")))?;
                return Ok(see_other(&format!("/firmware/uploads/{id}")));
            }
            // Anything else is drained and ignored.
            _ => while field.next().await.is_some() {},
        }
    }
    if !csrf_ok {
        return Err(WebError::Forbidden(
            "The form was stale or not from this session; reload the page and try again.".into(),
        ));
    }
    render(
        &state,
        &user,
        UploadForm {
            model,
            bundle_error: Some("Choose a bundle file (.pgb) to upload.".into()),
            ..UploadForm::default()
        },
        None,
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

/// A verification's progress while it runs (the page refreshes itself every second), then
/// the firmware page with the result: what was stored, or the refusal beside the file field.
pub async fn job_page(state: web::Data<AppState>, user: SignedIn, path: web::Path<String>) -> Page {
    guard(&state, &user)?;
    let job = state
        .firmware_jobs
        .find(&path.into_inner(), user.user.id)
        .ok_or(WebError::NotFound)?;
    match job.outcome() {
        None => {
            let (done, total) = (
                job.done.load(Ordering::Relaxed),
                job.total.load(Ordering::Relaxed),
            );
            let page = JobPage {
                signed_in: Some(user.nav()),
                model: job.model.clone(),
                file: job.file.clone(),
                phase: job
                    .phase
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone(),
                done,
                total,
                percent: (done * 100).checked_div(total).unwrap_or(0).min(100),
            };
            let body = page
                .render()
                .map_err(|err| WebError::Internal(err.to_string()))?;
            Ok(HttpResponse::Ok()
                .content_type("text/html; charset=utf-8")
                .body(body))
        }
        Some(JobOutcome::Stored(stored)) => {
            let notice = format!(
                "Stored firmware {}: {} version {} (security version {}), {} bytes, SHA-256 {}, signed by {}.",
                stored.id.0,
                stored.model,
                stored.version,
                stored.security_version,
                stored.payload_size,
                stored.payload_sha256,
                stored.signed_by
            );
            render(
                &state,
                &user,
                UploadForm {
                    stored: Some(notice),
                    ..UploadForm::default()
                },
                None,
                actix_web::http::StatusCode::OK,
            )
            .await
        }
        Some(JobOutcome::Refused { code, reason }) => {
            render(
                &state,
                &user,
                UploadForm {
                    model: job.model.clone(),
                    bundle_error: Some(format!("Refused ({code}): {reason}")),
                    ..UploadForm::default()
                },
                None,
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RolloutForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    firmware: i64,
    /// A share of the model's devices, 1-100; used when no serials are given.
    #[serde(default)]
    percent: String,
    /// Serials separated by commas, spaces or lines.
    #[serde(default)]
    serials: String,
    #[serde(default)]
    failure_threshold_pct: String,
}

/// Starts a rollout to the administrator's own organisation's devices of the model.
pub async fn create_rollout(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: SignedIn,
    form: web::Form<RolloutForm>,
) -> Page {
    user.admin_only("Managing firmware")?;
    user.check_csrf(&form.csrf)?;
    guard(&state, &user)?;
    let form = form.into_inner();
    let serials: Vec<String> = form
        .serials
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let number = |field: &str, raw: &str, default: Option<u8>| -> Result<u8, String> {
        match (raw.trim(), default) {
            ("", Some(default)) => Ok(default),
            (raw, _) => raw
                .parse::<u8>()
                .map_err(|_| format!("{field}: {raw:?} is not a whole number from 0 to 100")),
        }
    };
    let request = (|| -> Result<RolloutRequest, String> {
        let selection = if serials.is_empty() {
            Selection::Percent(number("percent", &form.percent, None)?)
        } else {
            Selection::Serials(serials)
        };
        Ok(RolloutRequest {
            firmware: appliance::firmware::FirmwareId(form.firmware),
            selection,
            failure_threshold_pct: number(
                "failure threshold",
                &form.failure_threshold_pct,
                Some(20),
            )?,
            organisation: Some(user.user.organisation_id),
        })
    })();
    let problem = match request {
        Err(problem) => Some(problem),
        Ok(request) => {
            let (audit, actor, from) = (
                state.app.audit.clone(),
                Actor::User(user.user.id),
                source(&req),
            );
            match web::block(move || Rollout::create_from(&audit, &actor, &from, &request)).await? {
                Ok(_) => return Ok(see_other("/firmware")),
                Err(appliance::Error::Invalid { field, problem }) => {
                    Some(format!("{field}: {problem}"))
                }
                Err(appliance::Error::NotFound(_)) => Some("That firmware is not stored.".into()),
                Err(appliance::Error::Conflict(problem)) => Some(problem),
                Err(other) => return Err(other.into()),
            }
        }
    };
    render(
        &state,
        &user,
        UploadForm::default(),
        problem,
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Pauses or resumes one of the organisation's rollouts; any other id is "not found".
pub async fn change_rollout(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: SignedIn,
    path: web::Path<(i64, String)>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Managing firmware")?;
    user.check_csrf(&form.csrf)?;
    guard(&state, &user)?;
    let (id, change) = path.into_inner();
    let paused = match change.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(WebError::NotFound),
    };
    let (app, actor, from, organisation) = (
        state.app.clone(),
        Actor::User(user.user.id),
        source(&req),
        user.user.organisation_id,
    );
    let changed = web::block(move || -> appliance::error::Result<()> {
        let visible = Rollout::list_for_organisation(&mut *app.store.conn()?, organisation)?
            .iter()
            .any(|summary| summary.rollout.id == RolloutId(id));
        if !visible {
            return Err(appliance::Error::NotFound("rollout"));
        }
        Rollout::set_paused_from(&app.audit, &actor, &from, RolloutId(id), paused).map(|_| ())
    })
    .await?;
    match changed {
        Ok(()) => Ok(see_other("/firmware")),
        Err(appliance::Error::Conflict(problem)) => {
            render(
                &state,
                &user,
                UploadForm::default(),
                Some(problem),
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(other) => Err(other.into()),
    }
}

// ----- the API's side -----

/// For the REST API: receives a bundle body, verifies and stores it, all while the request
/// waits. Refusals are audited (by the updater, or here for what never reached it).
pub(crate) async fn api_upload<S, E>(
    state: &web::Data<AppState>,
    actor: Actor,
    from: String,
    model: String,
    body: S,
) -> Result<Firmware, crate::api::ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use crate::api::ApiError;
    let file = format!("api upload for {model}");
    // Exactly as the API's document gives the pattern: the pages' forms trim spaces away,
    // the API does not.
    let checked = appliance::firmware::clean_model(&model).and_then(|clean| {
        if clean == model {
            Ok(clean)
        } else {
            Err(appliance::Error::invalid(
                "model",
                format!("{model:?} has spaces around it"),
            ))
        }
    });
    if let Err(err) = checked {
        let problem = err.to_string();
        audit_refusal(
            state,
            actor,
            from,
            file,
            model,
            "request.invalid",
            problem.clone(),
        )
        .await
        .map_err(|_| ApiError::Internal)?;
        return Err(ApiError::Invalid(problem));
    }
    let config = updater_config(state).map_err(|err| ApiError::Unavailable(err.to_string()))?;
    let staged = {
        let app = state.app.clone();
        web::block(move || fw::staging_file(&app))
            .await?
            .map_err(|_| ApiError::Internal)?
    };
    let max = state.app.config.web.max_firmware_bytes;
    let staged = match receive(body, staged, max).await {
        Ok((staged, _)) => staged,
        Err(failure) => {
            let reason = failure.reason();
            audit_refusal(
                state,
                actor,
                from,
                file,
                model,
                failure.code(),
                reason.clone(),
            )
            .await
            .map_err(|_| ApiError::Internal)?;
            return Err(match failure {
                Received::TooLarge(_) => ApiError::TooLarge(reason),
                Received::Cut(_) => ApiError::Invalid(reason),
                Received::Io(_) => ApiError::Internal,
            });
        }
    };
    let app = state.app.clone();
    let stored = web::block(move || {
        let uploader = Uploader {
            actor: &actor,
            source: &from,
            file: &file,
        };
        verify_and_store(
            &app,
            &uploader,
            staged,
            &model,
            &updater::progress::NoProgress,
            &config,
        )
    })
    .await?;
    stored.map_err(|err| match err {
        UpdaterError::Rejected(rejection) => ApiError::Rejected {
            code: rejection.code(),
            message: rejection.to_string(),
        },
        UpdaterError::Appliance(appliance::Error::Invalid { field, problem }) => {
            ApiError::Invalid(format!("{field}: {problem}"))
        }
        UpdaterError::Appliance(appliance::Error::Conflict(problem)) => ApiError::Conflict(problem),
        UpdaterError::Trust(problem) | UpdaterError::Config(problem) => {
            ApiError::Unavailable(problem)
        }
        other => {
            tracing::error!(error = %other, code = other.code(), "firmware upload failed");
            ApiError::Internal
        }
    })
}
