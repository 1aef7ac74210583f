//! Downloads streamed from a blocking export: what the export writes goes out in 64 KiB
//! chunks through a bounded channel, so a slow download slows the export down instead of
//! filling memory, and no export has a row cap.

use actix_web::{HttpResponse, web};
use appliance::audit::export::ExportFormat;
use appliance::readings::ExportFilter;
use appliance::time::format_us;
use appliance::{Actor, AuditEvent};

use crate::error::WebError;
use crate::state::AppState;

type Chunk = Result<web::Bytes, std::io::Error>;

/// Writes into the download's channel in 64 KiB chunks.
pub(crate) struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            let chunk = web::Bytes::from(std::mem::take(&mut self.buffer));
            self.sender
                .blocking_send(Ok(chunk))
                .map_err(|_| std::io::Error::other("the download was cancelled"))?;
        }
        Ok(())
    }
}

/// An attachment named `file_name` whose body `produce` writes on a blocking thread.
/// `produce` audits its own outcome; an `Err` it returns ends the download with an error
/// after what was already written, so a client never takes a cut file for a whole one.
pub(crate) fn attachment(
    content_type: &'static str,
    file_name: &str,
    produce: impl FnOnce(&mut ChannelWriter) -> Result<(), String> + Send + 'static,
) -> HttpResponse {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Chunk>(16);
    actix_web::rt::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(64 * 1024),
        };
        let result = produce(&mut writer);
        let flushed = std::io::Write::flush(&mut writer);
        if let Err(problem) = result.and(flushed.map_err(|e| e.to_string())) {
            let _ = sender.blocking_send(Err(std::io::Error::other(problem)));
        }
    });
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{file_name}\""),
        ))
        .streaming(futures_util::stream::poll_fn(move |cx| {
            receiver.poll_recv(cx)
        }))
}

/// An export's format from `?format=csv|jsonl` (JSONL when absent): the format, its content type and extension.
pub(crate) fn export_format(
    raw: Option<&str>,
) -> Result<(ExportFormat, &'static str, &'static str), WebError> {
    match raw {
        Some("csv") => Ok((ExportFormat::Csv, "text/csv; charset=utf-8", "csv")),
        Some("jsonl") | None => Ok((ExportFormat::Jsonl, "application/x-ndjson", "jsonl")),
        Some(other) => Err(WebError::BadRequest(format!(
            "format {other:?} is not csv or jsonl"
        ))),
    }
}

/// The readings `filter` selects as a streamed attachment, audited `readings.exported` once
/// written, with how many went out (or why it failed) and `via` (where it was asked for)
/// in its details: the one readings export of the API and the portal's charts.
pub(crate) fn readings(
    state: web::Data<AppState>,
    actor: Actor,
    source: String,
    filter: ExportFilter,
    (format, content_type, extension): (ExportFormat, &'static str, &'static str),
    via: serde_json::Value,
) -> HttpResponse {
    let file_name = format!("plantgate-readings.{extension}");
    attachment(content_type, &file_name, move |writer| {
        let result = state
            .app
            .store
            .conn()
            .map_err(|e| e.to_string())
            .and_then(|mut conn| {
                appliance::readings::export(&mut conn, &filter, format, writer)
                    .map_err(|e| e.to_string())
            });
        let mut details = serde_json::json!({
            "format": extension,
            "device": filter.device, "site": filter.site, "metric": filter.metric,
            "since": filter.since_us.map(format_us), "until": filter.until_us.map(format_us),
        });
        if let (Some(details), Some(via)) = (details.as_object_mut(), via.as_object()) {
            details.extend(via.clone());
        }
        let event = AuditEvent::new(actor, "readings.exported").source(source);
        let event = match &result {
            Ok(count) => {
                details["readings"] = (*count).into();
                event.details(details)
            }
            Err(problem) => {
                details["error"] = problem.clone().into();
                event.outcome(appliance::Outcome::Failure).details(details)
            }
        };
        if let Err(err) = state.app.audit.record(event) {
            tracing::error!(error = %err, "could not audit a readings export");
        }
        result.map(|_| ())
    })
}
