//! Uploading a bundle through the page: the form streams to a staged file, a verification
//! job runs on a thread of its own, and the browser is sent to the job's progress page, which
//! shows the result once the job is done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_multipart::Multipart;
use actix_web::{HttpRequest, web};
use appliance::Actor;
use askama::Template;
use futures_util::StreamExt;
use updater::firmware::{self as fw, Uploader};

use super::pages::{UploadForm, guard, render};
use super::receive::{audit_refusal, receive, updater_config, updater_error, verify_and_store};
use crate::client::source;
use crate::error::WebError;
use crate::jobs::{Job, JobOutcome, JobProgress};
use crate::render::{Nav, Page, html, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

/// Verifications running at once; each reads a whole bundle from disk.
const MAX_RUNNING_JOBS: usize = 2;
/// The form's text fields (token, model) are short.
const MAX_TEXT_FIELD: usize = 1024;

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
            html(&page)
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
