//! Readings through the REST API beyond paging: a CSV/JSONL export (streamed, no row cap)
//! and a live stream of new readings as Server-Sent Events. Both take a device (serial) or
//! a site (id) of the caller's own organisation and need the `readings:read` scope.
//!
//! `ingest` is another process, so the stream polls the store (the processes' shared source
//! of truth) for readings with a larger id than the last one sent. An event's `id` is the
//! reading's id: a client that reconnects with `Last-Event-ID` misses nothing. The token is
//! checked again at every poll, so a revoked or expired token ends the stream. Both are in
//! the OpenAPI document; the stream as `text/event-stream`.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use appliance::Actor;
use appliance::audit::ExportFormat;
use appliance::devices::Device;
use appliance::ids::{SiteId, TokenId};
use appliance::models::Site;
use appliance::readings::{self, ExportFilter, Reading};
use appliance::time::{format_us, parse_instant};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi};

use super::caller::ApiCaller;
use super::error::{ApiError, ErrorBody};
use crate::client::source;
use crate::state::AppState;

/// How often a stream looks for new readings.
const POLL: Duration = Duration::from_secs(1);
/// A comment line is sent after this long without events, so proxies keep the connection
/// and a client that left is noticed.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// The most readings one poll sends; more wait for the next round, without a pause.
const POLL_ROWS: i64 = 1000;
/// Streams one token may hold open at once; each polls the store, so they are counted.
pub const MAX_STREAMS_PER_TOKEN: usize = 4;

/// Open streams per token id.
fn open_streams() -> &'static std::sync::Mutex<std::collections::HashMap<TokenId, usize>> {
    static OPEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<TokenId, usize>>> =
        std::sync::OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// One open stream of a token, counted until dropped (when the stream's task ends).
struct StreamSlot(TokenId);

impl StreamSlot {
    fn take(token: TokenId) -> Option<StreamSlot> {
        let mut open = open_streams()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(token).or_insert(0);
        if *count >= MAX_STREAMS_PER_TOKEN {
            return None;
        }
        *count += 1;
        Some(StreamSlot(token))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = open_streams()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.0) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.0);
            }
        }
    }
}

/// The readings part of the OpenAPI document, merged into `/api/v1/openapi.json`. The
/// routes are in the API's table (`super::routes`).
#[derive(OpenApi)]
#[openapi(paths(export, stream), components(schemas(ErrorBody)))]
#[derive(Debug)]
pub struct ReadingsDoc;

/// Whose readings, for the OpenAPI document: exactly one of `device` (a serial) or `site`
/// (an id), both of the caller's own organisation. Separate query parameters cannot say
/// "exactly one of these two"; an exploded query object whose schema is one of two
/// one-property objects can, and it puts the same `device=` or `site=` in the URL.
#[derive(Debug)]
pub struct ReadingsOf;

impl utoipa::PartialSchema for ReadingsOf {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let only = |name: &str, kind: Type, format: Option<KnownFormat>, about: &str| {
            ObjectBuilder::new()
                .property(
                    name,
                    ObjectBuilder::new()
                        // Text is never a NUL: the portal refuses one in any query.
                        .pattern((kind == Type::String).then_some(r"^[^\x00]*$"))
                        .schema_type(kind)
                        .format(format.map(SchemaFormat::KnownFormat))
                        .description(Some(about)),
                )
                .required(name)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        OneOfBuilder::new()
            .item(only("device", Type::String, None, "A device's serial."))
            .item(only(
                "site",
                Type::Integer,
                Some(KnownFormat::Int64),
                "A site's id.",
            ))
            .description(Some(
                "One device (`device=SERIAL`) or one site (`site=ID`).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ReadingsOf {}

/// Which readings: one device or one site, of the caller's own organisation.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportParams {
    /// A device's serial. Give `device` or `site` (documented as [`ReadingsOf`]).
    #[param(ignore)]
    device: Option<String>,
    /// A site's id. Give `device` or `site`.
    #[param(ignore)]
    site: Option<i64>,
    /// Only this metric, such as `temperature_c`.
    #[param(pattern = r"^[^\x00]*$")]
    metric: Option<String>,
    /// RFC 3339 time (a date alone also works); readings measured at or after it.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Readings measured before it.
    #[param(format = DateTime)]
    until: Option<String>,
    /// `csv` (default) or `jsonl`.
    #[param(inline)]
    format: Option<ExportFileFormat>,
}

/// The export's file format.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFileFormat {
    Csv,
    Jsonl,
}

/// Which readings to stream: one device or one site, of the caller's own organisation.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StreamParams {
    /// A device's serial. Give `device` or `site` (documented as [`ReadingsOf`]).
    #[param(ignore)]
    device: Option<String>,
    /// A site's id. Give `device` or `site`.
    #[param(ignore)]
    site: Option<i64>,
    /// Only this metric, such as `temperature_c`.
    #[param(pattern = r"^[^\x00]*$")]
    metric: Option<String>,
}

/// Resolves `device`/`site` to a filter within the caller's organisation; anything else
/// (unknown, or another organisation's) is not found.
fn scope(
    state: &AppState,
    caller: &ApiCaller,
    device: Option<String>,
    site: Option<i64>,
) -> Result<ExportFilter, ApiError> {
    let organisation = caller.user.organisation_id;
    let mut conn = state.app.store.conn()?;
    match (device, site) {
        (Some(serial), None) => {
            let device = Device::find_by_serial(&mut conn, &serial)?
                .filter(|d| d.organisation_id == organisation)
                .ok_or(ApiError::NotFound)?;
            Ok(ExportFilter {
                device: Some(device.id),
                ..ExportFilter::default()
            })
        }
        (None, Some(site)) => {
            Site::list_for(&mut conn, organisation)?
                .into_iter()
                .find(|s| s.id == SiteId(site))
                .ok_or(ApiError::NotFound)?;
            Ok(ExportFilter {
                site: Some(SiteId(site)),
                ..ExportFilter::default()
            })
        }
        _ => Err(ApiError::Invalid(
            "give exactly one of device (a serial) or site (an id)".into(),
        )),
    }
}

/// A device's or a site's readings as CSV (or JSONL), in measurement order, streamed with
/// no row cap. Audited as `readings.exported`.
#[utoipa::path(get, path = "/api/v1/readings/export", params(("of" = inline(ReadingsOf), Query, style = Form, explode, description = "Whose readings: `device=SERIAL` or `site=ID`, exactly one"), ExportParams), responses(
    (status = 200, description = "The readings: CSV with the columns device,seq,metric,value,measured_at,measured_at_us,received_at_us, or JSON Lines with those fields", content(
        (String = "text/csv"),
        (String = "application/x-ndjson")
    )),
    (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["readings:read"])))]
pub(crate) async fn export(
    state: web::Data<AppState>,
    caller: ApiCaller,
    req: HttpRequest,
    params: web::Query<ExportParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require("readings:read")?;
    let params = params.into_inner();
    let (format, content_type, extension) = match params.format {
        Some(ExportFileFormat::Csv) | None => (ExportFormat::Csv, "text/csv; charset=utf-8", "csv"),
        Some(ExportFileFormat::Jsonl) => (ExportFormat::Jsonl, "application/x-ndjson", "jsonl"),
    };
    let instant = |raw: &Option<String>| {
        raw.as_deref()
            .map(parse_instant)
            .transpose()
            .map_err(ApiError::Invalid)
    };
    let (since_us, until_us) = (instant(&params.since)?, instant(&params.until)?);
    let filter = {
        let state = state.clone();
        let caller = caller.clone();
        let (device, site) = (params.device, params.site);
        web::block(move || scope(&state, &caller, device, site)).await??
    };
    let filter = ExportFilter {
        metric: params.metric,
        since_us,
        until_us,
        ..filter
    };
    let via = serde_json::json!({ "via": "api", "token": caller.token.id });
    Ok(crate::download::readings(
        state,
        Actor::User(caller.user.id),
        source(&req),
        filter,
        (format, content_type, extension),
        via,
    ))
}

/// One event's data.
#[derive(Debug, Serialize)]
struct StreamedReading<'a> {
    id: i64,
    device: &'a str,
    seq: i64,
    metric: &'a str,
    value: f64,
    measured_at: String,
    received_at: String,
}

fn event(serial: &str, r: &Reading) -> String {
    let data = StreamedReading {
        id: r.id,
        device: serial,
        seq: r.seq,
        metric: &r.metric,
        value: r.value,
        measured_at: format_us(r.measured_at_us),
        received_at: format_us(r.received_at_us),
    };
    // Serialising plain fields cannot fail; an empty object would still be valid SSE.
    let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
    format!("id: {}\nevent: reading\ndata: {json}\n\n", r.id)
}

/// New readings of a device or a site as Server-Sent Events, as they are stored: `event:
/// reading` with `id` the reading's id and `data` a JSON object (id, device, seq, metric,
/// value, measured_at, received_at). It starts after `Last-Event-ID` if the client sends
/// one (a reconnect misses nothing), else with the next reading stored. A comment line
/// comes every 15 s without events. It ends with `event: end` when the token is revoked or
/// expires. A token may hold 4 streams open at once; one more is 429.
#[utoipa::path(get, path = "/api/v1/readings/stream",
    params(
        ("of" = inline(ReadingsOf), Query, style = Form, explode, description = "Whose readings: `device=SERIAL` or `site=ID`, exactly one"),
        StreamParams,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "The `id` of the last event received, to resume after it")
    ),
    responses(
    (status = 200, description = "An endless event stream: `event: reading`, `id: <reading id>`, `data: {\"id\":..,\"device\":..,\"seq\":..,\"metric\":..,\"value\":..,\"measured_at\":..,\"received_at\":..}`; `event: end` when the token stops being valid", content_type = "text/event-stream", body = String),
    (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)
), security(("bearer" = ["readings:read"])))]
pub(crate) async fn stream(
    state: web::Data<AppState>,
    caller: ApiCaller,
    req: HttpRequest,
    params: web::Query<StreamParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require("readings:read")?;
    let params = params.into_inner();
    let resume = match req.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    ApiError::Invalid("Last-Event-ID: must be an event id from this stream".into())
                })?,
        ),
    };
    let secret = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_owned())
        .ok_or(ApiError::MissingToken)?;
    let (filter, start) = {
        let state = state.clone();
        let caller = caller.clone();
        let (device, site) = (params.device, params.site);
        web::block(move || -> Result<(ExportFilter, i64), ApiError> {
            let filter = scope(&state, &caller, device, site)?;
            let start = match resume {
                Some(id) => id,
                None => readings::last_id(&mut *state.app.store.conn()?)?,
            };
            Ok((filter, start))
        })
        .await??
    };
    let filter = ExportFilter {
        metric: params.metric,
        ..filter
    };
    let slot = StreamSlot::take(caller.token.id).ok_or(ApiError::RateLimited(60))?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    actix_web::rt::spawn(async move {
        let _slot = slot;
        let mut last = start;
        let mut quiet = Duration::ZERO;
        // A first comment, so the client sees the stream is open at once.
        if sender
            .send(Ok(web::Bytes::from_static(b": stream open\n\n")))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let poll = {
                let state = state.clone();
                let filter = filter.clone();
                let secret = secret.clone();
                web::block(
                    move || -> appliance::error::Result<Option<Vec<(String, Reading)>>> {
                        let mut conn = state.app.store.conn()?;
                        if appliance::tokens::authenticate(&mut conn, &secret, state.now())?
                            .is_none()
                        {
                            return Ok(None);
                        }
                        readings::page_after(&mut conn, &filter, last, POLL_ROWS).map(Some)
                    },
                )
                .await
            };
            let chunk = match poll {
                Ok(Ok(Some(rows))) => {
                    let full = rows.len() as i64 == POLL_ROWS;
                    let mut text = String::new();
                    for (serial, reading) in &rows {
                        text.push_str(&event(serial, reading));
                        last = reading.id;
                    }
                    if !text.is_empty() {
                        quiet = Duration::ZERO;
                        if sender.send(Ok(web::Bytes::from(text))).await.is_err() {
                            return;
                        }
                    }
                    if full {
                        continue;
                    }
                    None
                }
                Ok(Ok(None)) => Some(
                    "event: end\ndata: {\"reason\":\"the token was revoked or has expired\"}\n\n",
                ),
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "readings stream poll failed");
                    Some(
                        "event: end\ndata: {\"reason\":\"the appliance could not read the store\"}\n\n",
                    )
                }
                Err(_) => Some("event: end\ndata: {\"reason\":\"internal error\"}\n\n"),
            };
            if let Some(end) = chunk {
                let _ = sender
                    .send(Ok(web::Bytes::from_static(end.as_bytes())))
                    .await;
                return;
            }
            tokio::time::sleep(POLL).await;
            if sender.is_closed() {
                return; // the client left
            }
            quiet += POLL;
            if quiet >= HEARTBEAT {
                quiet = Duration::ZERO;
                if sender
                    .send(Ok(web::Bytes::from_static(b": keep-alive\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::poll_fn({
        let mut receiver = receiver;
        move |cx| receiver.poll_recv(cx)
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}
