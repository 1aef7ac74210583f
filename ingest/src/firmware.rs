//! Firmware for devices on the device network: what is offered, the signed manifest, the
//! payload with HTTP Range (resume), and status reports. A device sees only firmware of its
//! own model in a running rollout it belongs to; anything else is 404.
//!
//! The manifest is the bundle's own header bytes (magic, manifest, CMS signatures), so a
//! device verifies the vendor's signatures itself and need not trust the appliance.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use actix_web::body::SizedStream;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use appliance::devices::Device;
use appliance::firmware::{DeviceStatus, FirmwareId, Offer};
use bytes::Bytes;
use serde::Deserialize;

use crate::auth::{authenticated, bearer};
use crate::body::read_within;
use crate::error::IngestError;
use crate::shared::Shared;

/// Payload bytes read per chunk while streaming.
const CHUNK: usize = 256 * 1024;
/// A status report is small.
const MAX_STATUS_BYTES: usize = 4096;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/firmware", web::get().to(list_offers))
        .route("/v1/firmware/{id}/manifest", web::get().to(get_manifest))
        .route("/v1/firmware/{id}/payload", web::get().to(get_payload))
        .route("/v1/firmware/{id}/status", web::post().to(post_status));
}

fn source(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn unavailable(err: impl std::fmt::Display) -> IngestError {
    tracing::error!(error = %err, "firmware: store or file unavailable");
    IngestError::Unavailable
}

/// The device behind the bearer secret; a bad secret is audited (rate-limited) and 401.
fn authenticate(shared: &Shared, secret: &str, source: &str) -> Result<Device, IngestError> {
    let found = {
        let mut conn = shared.app.store.conn().map_err(unavailable)?;
        Device::authenticate(&mut conn, secret).map_err(unavailable)?
    };
    found.ok_or_else(|| {
        shared
            .auth_failures
            .record(&shared.app, source, "https", None);
        IngestError::BadCredential
    })
}

/// Runs `work` with the authenticated device and its offer of firmware `id`, off the
/// async threads.
async fn with_offer<T: Send + 'static>(
    req: &HttpRequest,
    shared: &web::Data<Shared>,
    id: i64,
    work: impl FnOnce(&Shared, Offer, PathBuf) -> Result<T, IngestError> + Send + 'static,
) -> Result<T, IngestError> {
    let secret = bearer(req)?;
    let source = source(req);
    let shared = shared.clone();
    let result = web::block(move || {
        let device = authenticate(&shared, &secret, &source)?;
        let offer = {
            let mut conn = shared.app.store.conn().map_err(unavailable)?;
            Offer::find(&mut conn, &device, FirmwareId(id)).map_err(unavailable)?
        }
        .ok_or(IngestError::FirmwareNotOffered)?;
        let path = shared
            .app
            .config
            .data_dir
            .join("firmware")
            .join(&offer.firmware.file_name);
        work(&shared, offer, path)
    })
    .await
    .map_err(unavailable)?;
    if result.is_ok() {
        authenticated(req);
    }
    result
}

fn offer_json(offer: &Offer) -> serde_json::Value {
    let fw = &offer.firmware;
    serde_json::json!({
        "id": fw.id.0,
        "model": fw.model,
        "version": fw.version,
        "security_version": fw.security_version,
        "size": fw.payload_size,
        "sha256": fw.payload_sha256,
        "rollout": offer.rollout.id.0,
        "status": offer.member.status,
        "manifest": format!("/v1/firmware/{}/manifest", fw.id.0),
        "payload": format!("/v1/firmware/{}/payload", fw.id.0),
    })
}

/// `GET /v1/firmware`: what this device is offered now.
async fn list_offers(
    req: HttpRequest,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, IngestError> {
    let secret = bearer(&req)?;
    let source = source(&req);
    let offers = web::block(move || {
        let device = authenticate(&shared, &secret, &source)?;
        let mut conn = shared.app.store.conn().map_err(unavailable)?;
        Offer::all_for(&mut conn, &device).map_err(unavailable)
    })
    .await
    .map_err(unavailable)??;
    authenticated(&req);
    let list: Vec<_> = offers.iter().map(offer_json).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "firmware": list })))
}

/// `GET /v1/firmware/{id}/manifest`: the bundle's signed header, byte for byte.
async fn get_manifest(
    req: HttpRequest,
    path: web::Path<i64>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, IngestError> {
    let header = with_offer(&req, &shared, path.into_inner(), |_, offer, path| {
        let len = usize::try_from(offer.firmware.payload_offset).map_err(unavailable)?;
        let mut bytes = vec![0u8; len];
        File::open(&path)
            .and_then(|mut file| file.read_exact(&mut bytes))
            .map_err(unavailable)?;
        Ok(bytes)
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/vnd.plantgate.bundle-header")
        .body(header))
}

/// A single byte range of a `size`-byte body: `Ok(None)` means the whole body (no Range,
/// several ranges, or a header we do not understand, which RFC 9110 lets a server ignore).
fn parse_range(value: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, IngestError> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else {
            return Ok(None);
        };
        if suffix == 0 || size == 0 {
            return Err(IngestError::RangeNotSatisfiable { size });
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ok(None);
        };
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            match last.parse::<u64>() {
                Ok(end) if end >= start => end.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(IngestError::RangeNotSatisfiable { size });
        }
        (start, end)
    };
    Ok(Some(range))
}

/// `GET /v1/firmware/{id}/payload`: the payload, whole or one byte range, streamed in
/// constant memory.
async fn get_payload(
    req: HttpRequest,
    path: web::Path<i64>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, IngestError> {
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (file, size, range, sha256) =
        with_offer(&req, &shared, path.into_inner(), move |_, offer, path| {
            let fw = &offer.firmware;
            let size = u64::try_from(fw.payload_size).map_err(unavailable)?;
            let offset = u64::try_from(fw.payload_offset).map_err(unavailable)?;
            let range = parse_range(range_header.as_deref(), size)?;
            let start = range.map(|(start, _)| start).unwrap_or(0);
            let mut file = File::open(&path).map_err(unavailable)?;
            file.seek(SeekFrom::Start(offset + start))
                .map_err(unavailable)?;
            Ok((file, size, range, fw.payload_sha256.clone()))
        })
        .await?;
    let (status, start, end) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut response = HttpResponse::build(status);
    response
        .content_type("application/octet-stream")
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, format!("\"{sha256}\"")));
    if status == StatusCode::PARTIAL_CONTENT {
        response.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
    }
    let stream = futures_util::stream::try_unfold((file, len), |(file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let (file, buf) = web::block(move || {
            let mut file = file;
            let mut buf = vec![0u8; want];
            file.read_exact(&mut buf).map(|()| (file, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok::<_, std::io::Error>(Some((Bytes::from(buf), (file, left - want as u64))))
    });
    Ok(response.body(SizedStream::new(len, Box::pin(stream))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusReport {
    status: String,
    #[serde(default)]
    detail: String,
}

/// `POST /v1/firmware/{id}/status`: `{"status": "downloading"|..., "detail": "..."}`.
async fn post_status(
    req: HttpRequest,
    path: web::Path<i64>,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, IngestError> {
    let secret = bearer(&req)?;
    let source = source(&req);
    let id = FirmwareId(path.into_inner());
    let body = read_within(payload, MAX_STATUS_BYTES).await?;
    let receipt = web::block(move || {
        let device = authenticate(&shared, &secret, &source)?;
        let report: StatusReport =
            serde_json::from_slice(&body).map_err(|err| IngestError::BadJson(err.to_string()))?;
        let status: DeviceStatus = report
            .status
            .parse()
            .map_err(|err: appliance::Error| IngestError::BadStatus(err.to_string()))?;
        Offer::report(
            &shared.app.audit,
            &device,
            id,
            status,
            &report.detail,
            &source,
            appliance::time::now_us(),
        )
        .map_err(|err| match err {
            appliance::Error::NotFound(_) => IngestError::FirmwareNotOffered,
            appliance::Error::Invalid { .. } => IngestError::BadStatus(err.to_string()),
            other => IngestError::from(other),
        })
    })
    .await
    .map_err(unavailable)??;
    authenticated(&req);
    Ok(HttpResponse::Ok().json(receipt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let r = |v: &str| parse_range(Some(v), 100).map_err(|e| e.code());
        assert_eq!(r("bytes=0-9"), Ok(Some((0, 9))));
        assert_eq!(r("bytes=90-"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=90-500"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-10"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-500"), Ok(Some((0, 99))));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("items=0-1"), Ok(None));
        assert_eq!(r("bytes=9-3"), Ok(None));
        assert_eq!(r("bytes=100-"), Err("range.not_satisfiable"));
        assert_eq!(parse_range(None, 100).map_err(|e| e.code()), Ok(None));
    }
}
