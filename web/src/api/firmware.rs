//! Firmware through the API: `GET` and `POST /api/v1/firmware`, for administrators' tokens.

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::Actor;
use appliance::firmware::Firmware;
use appliance::time::format_us;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use updater::UpdaterError;
use updater::firmware::{self as fw, Uploader};
use utoipa::{IntoParams, ToSchema};

use super::caller::ApiCaller;
use super::error::{ApiError, ErrorBody};
use crate::client::source;
use crate::firmware::receive::{
    Received, audit_refusal, receive, updater_config, verify_and_store,
};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct FirmwareItem {
    id: i64,
    /// The device model it is for (target `device:MODEL`).
    model: String,
    version: String,
    security_version: i64,
    /// The payload's size in bytes.
    size: i64,
    /// The payload's SHA-256, as the signed manifest pins it.
    sha256: String,
    /// The trust anchors whose signatures met the threshold.
    signed_by: String,
    uploaded_at: String,
}

impl From<appliance::firmware::Firmware> for FirmwareItem {
    fn from(f: appliance::firmware::Firmware) -> FirmwareItem {
        FirmwareItem {
            id: f.id.0,
            model: f.model,
            version: f.version,
            security_version: f.security_version,
            size: f.payload_size,
            sha256: f.payload_sha256,
            signed_by: f.signed_by,
            uploaded_at: format_us(f.uploaded_at_us),
        }
    }
}

/// Stored firmware for field devices, newest first.
#[utoipa::path(get, path = "/api/v1/firmware", responses(
    (status = 200, body = [FirmwareItem]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["firmware:read"])))]
pub(super) async fn firmware_list(
    state: web::Data<AppState>,
    caller: ApiCaller,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("firmware:read", "firmware:read (for an administrator)")?;
    let all =
        web::block(move || appliance::firmware::Firmware::list(&mut *state.app.store.conn()?))
            .await??;
    let items: Vec<FirmwareItem> = all.into_iter().rev().map(FirmwareItem::from).collect();
    Ok(HttpResponse::Ok().json(items))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct FirmwareUploadParams {
    /// The device model the bundle is for: 1-64 of `A-Z a-z 0-9 . _ -`.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)]
    model: String,
}

/// Uploads a signed firmware bundle (the `.pgb` file as the body) for a device model. It is
/// verified before anything is kept: signatures and threshold against this appliance's
/// trust anchors, expiry, target and hardware, no downgrade, length, payload hash. A
/// refusal is 422 with the refusal's code (`bundle.untrusted_signer`, `bundle.wrong_target`,
/// `bundle.truncated`, ...) and reason, is audited, and stores nothing.
#[utoipa::path(post, path = "/api/v1/firmware", params(FirmwareUploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The signed bundle (.pgb)"),
    responses(
    (status = 201, body = FirmwareItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)
), security(("bearer" = ["firmware:write"])))]
pub(super) async fn firmware_upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ApiCaller,
    params: web::Query<FirmwareUploadParams>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require_administrator("firmware:write", "firmware:write (for an administrator)")?;
    // A declared length over the limit is refused before a byte is read.
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = state.app.config.web.max_firmware_bytes;
    let actor = appliance::Actor::User(caller.user.id);
    let from = source(&req);
    if declared.is_some_and(|len| len > max) {
        let reason = format!(
            "the file is larger than {max} bytes, the most this appliance accepts (web.max_firmware_bytes)"
        );
        let (app, model, actor, from, why) = (
            state.app.clone(),
            params.model.clone(),
            actor,
            from,
            reason.clone(),
        );
        web::block(move || {
            let uploader = updater::firmware::Uploader {
                actor: &actor,
                source: &from,
                file: "api upload",
            };
            updater::firmware::audit_rejection(&app, &uploader, &model, "bundle.too_large", &why)
        })
        .await?
        .map_err(|_| ApiError::Internal)?;
        return Err(ApiError::TooLarge(reason));
    }
    let stored = api_upload(&state, actor, from, params.into_inner().model, body).await?;
    Ok(HttpResponse::Created().json(FirmwareItem::from(stored)))
}

/// For the REST API: receives a bundle body, verifies and stores it, all while the request
/// waits. Refusals are audited (by the updater, or here for what never reached it).
async fn api_upload<S, E>(
    state: &web::Data<AppState>,
    actor: Actor,
    from: String,
    model: String,
    body: S,
) -> Result<Firmware, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
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
