//! Receiving a bundle and having it verified, for the upload page and the API alike: the
//! body streams to a staged file (never whole in memory, refused past
//! `web.max_firmware_bytes`), the updater verifies it and stores it if it passes, and every
//! refusal is audited.

use std::io::Write;

use actix_web::web;
use appliance::firmware::Firmware;
use appliance::{Actor, Appliance};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tempfile::NamedTempFile;
use updater::UpdaterError;
use updater::config::UpdaterConfig;
use updater::firmware::{self as fw, Uploader};
use updater::progress::Progress;

use crate::error::WebError;
use crate::state::AppState;

/// Why a bundle did not arrive whole.
#[derive(Debug)]
pub(crate) enum Received {
    TooLarge(u64),
    /// The client stopped sending, or sent something that is not a body.
    Cut(String),
    Io(String),
}

impl Received {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Received::TooLarge(_) => "bundle.too_large",
            Received::Cut(_) => "upload.incomplete",
            Received::Io(_) => "updater.io",
        }
    }

    pub(crate) fn reason(&self) -> String {
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
pub(crate) async fn receive<S, E>(
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
pub(crate) fn updater_config(state: &AppState) -> Result<UpdaterConfig, UpdaterError> {
    UpdaterConfig::load(&state.app.config.web.updater_config)
}

/// Verifies a received bundle and stores it if it passes; refusals are audited by the
/// updater with their code and reason.
pub(crate) fn verify_and_store(
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
pub(crate) async fn audit_refusal(
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

pub(crate) fn updater_error(err: UpdaterError) -> WebError {
    match err {
        UpdaterError::Appliance(err) => err.into(),
        other => {
            tracing::error!(error = %other, code = other.code(), "firmware request failed");
            WebError::Internal(other.code().to_owned())
        }
    }
}
