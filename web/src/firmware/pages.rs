//! The firmware page: stored firmware, the organisation's rollouts, and the forms to upload a
//! bundle (handled in [`super::upload`]) and to start, pause or resume a rollout.

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::Actor;
use appliance::firmware::{DeviceStatus, Firmware, Rollout, RolloutId, RolloutRequest, Selection};
use askama::Template;
use serde::Deserialize;

use super::receive::updater_config;
use crate::client::source;
use crate::error::WebError;
use crate::forms::CsrfForm;
use crate::render::{Nav, Page, html_into, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

/// Where a sensitive page sends a user whose password is not fresh.
const CONFIRM_FOR_FIRMWARE: &str = "/account/confirm?next=firmware";

/// The page's CSP: the portal's, plus its own script and the upload request that script
/// makes. Every other page allows no script at all.
const CSP_WITH_SCRIPT: &str = "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("../../static/firmware-upload.js"))
}

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
pub(super) struct UploadForm {
    pub(super) model: String,
    pub(super) model_error: Option<String>,
    pub(super) bundle_error: Option<String>,
    pub(super) stored: Option<String>,
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
pub(super) async fn render(
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
    let mut response = HttpResponse::build(status);
    response.insert_header(("Content-Security-Policy", CSP_WITH_SCRIPT));
    html_into(&mut response, &page)
}

/// The checks every firmware page makes: an administrator whose password is fresh.
pub(super) fn guard(state: &AppState, user: &SignedIn) -> Result<(), WebError> {
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
            let (audit, actor, from, now) = (
                state.app.audit.clone(),
                Actor::User(user.user.id),
                source(&req),
                state.now(),
            );
            match web::block(move || Rollout::create_from(&audit, &actor, &from, &request, now))
                .await?
            {
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
    let (app, actor, from, organisation, now) = (
        state.app.clone(),
        Actor::User(user.user.id),
        source(&req),
        user.user.organisation_id,
        state.now(),
    );
    let changed = web::block(move || -> appliance::error::Result<()> {
        let visible = Rollout::list_for_organisation(&mut *app.store.conn()?, organisation)?
            .iter()
            .any(|summary| summary.rollout.id == RolloutId(id));
        if !visible {
            return Err(appliance::Error::NotFound("rollout"));
        }
        Rollout::set_paused_from(&app.audit, &actor, &from, RolloutId(id), paused, now).map(|_| ())
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
