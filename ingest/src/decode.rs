//! Turning a posted body into validated readings: bounded gzip, UTF-8, JSON, then each
//! reading checked and its device resolved against the credential that sent it.
//!
//! The same decoder serves HTTPS bodies and MQTT payloads. Nothing here touches the store
//! except to look devices up; nothing is stored unless the whole batch is valid.

use std::collections::BTreeMap;
use std::io::Read;

use appliance::DbConnection;
use appliance::devices::Device;
use appliance::ids::DeviceId;
use appliance::readings::{DeviceState, NewReading};
use serde::Deserialize;

use crate::error::IngestError;

/// What a device posts. `device` may be left out of a reading (and of a state) when the
/// sender posts for itself, or, over MQTT, when the topic names the device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    #[serde(default)]
    pub readings: Vec<RawReading>,
    #[serde(default)]
    pub states: Vec<RawState>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReading {
    pub device: Option<String>,
    pub metric: String,
    pub value: f64,
    /// RFC 3339 text, or milliseconds since the Unix epoch.
    #[serde(alias = "timestamp")]
    pub ts: Timestamp,
    pub seq: i64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Timestamp {
    Millis(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub device: Option<String>,
    pub firmware_version: Option<String>,
    pub battery_pct: Option<f64>,
    pub signal_dbm: Option<f64>,
}

/// Limits from `[ingest]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_decoded_bytes: usize,
    pub max_batch_readings: usize,
    pub max_future_skew_us: i64,
}

/// Inflates a gzip body, refusing one that inflates past `limit` (a gzip bomb).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|err| IngestError::BadGzip(err.to_string()))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(out)
}

/// Parses a JSON batch.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Batch, IngestError> {
    let text =
        std::str::from_utf8(body).map_err(|err| IngestError::InvalidUtf8(err.to_string()))?;
    let batch: Batch =
        serde_json::from_str(text).map_err(|err| IngestError::BadJson(err.to_string()))?;
    if batch.readings.len() > limits.max_batch_readings {
        return Err(IngestError::TooManyReadings {
            count: batch.readings.len(),
            limit: limits.max_batch_readings,
        });
    }
    Ok(batch)
}

fn parse_ts(ts: &Timestamp) -> Result<i64, String> {
    match ts {
        Timestamp::Millis(ms) => ms
            .checked_mul(1000)
            .ok_or_else(|| format!("timestamp {ms} is out of range")),
        Timestamp::Text(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_micros())
            .map_err(|_| {
                format!("timestamp {text:?} is not RFC 3339, such as 2026-11-22T08:00:00Z")
            }),
    }
}

/// A batch that passed every check, ready for the writer.
#[derive(Debug, Default)]
pub struct Accepted {
    pub readings: Vec<NewReading>,
    pub states: BTreeMap<DeviceId, DeviceState>,
}

/// Checks every reading and resolves its device. `sender` is the authenticated device;
/// `default_device` is the device a reading without `device` is for.
pub fn accept(
    conn: &mut DbConnection,
    sender: &Device,
    default_device: &str,
    batch: Batch,
    limits: &Limits,
    now_us: i64,
) -> Result<Accepted, IngestError> {
    let mut serials: Vec<&str> = batch
        .readings
        .iter()
        .filter_map(|r| r.device.as_deref())
        .chain(batch.states.iter().filter_map(|s| s.device.as_deref()))
        .collect();
    serials.push(default_device);
    serials.sort_unstable();
    serials.dedup();
    let known: BTreeMap<String, Device> = if serials == [sender.serial.as_str()] {
        BTreeMap::from([(sender.serial.clone(), sender.clone())])
    } else {
        Device::find_by_serials(conn, &serials)
            .map_err(|err| {
                tracing::error!(error = %err, "device lookup failed");
                IngestError::Unavailable
            })?
            .into_iter()
            .map(|d| (d.serial.clone(), d))
            .collect()
    };
    let resolve = |serial: &str| -> Result<DeviceId, IngestError> {
        let device = known
            .get(serial)
            .ok_or_else(|| IngestError::UnknownDevice(serial.to_owned()))?;
        if device.is_revoked() || !sender.may_post_for(device) {
            return Err(IngestError::ForeignDevice {
                credential: sender.serial.clone(),
                device: serial.to_owned(),
            });
        }
        Ok(device.id)
    };
    let mut accepted = Accepted::default();
    for (index, raw) in batch.readings.into_iter().enumerate() {
        let device = resolve(raw.device.as_deref().unwrap_or(default_device))?;
        let bad = |problem: String| IngestError::BadReading { index, problem };
        let measured_at_us = parse_ts(&raw.ts).map_err(bad)?;
        if measured_at_us > now_us.saturating_add(limits.max_future_skew_us) {
            return Err(bad(format!(
                "timestamp is more than {} s in the future; check the device clock",
                limits.max_future_skew_us / 1_000_000
            )));
        }
        let reading = NewReading {
            device_id: device,
            seq: raw.seq,
            metric: raw.metric,
            value: raw.value,
            measured_at_us,
            received_at_us: now_us,
        };
        reading.validate().map_err(|err| bad(err.to_string()))?;
        if reading.metric == "battery_pct" {
            accepted.states.entry(device).or_default().battery_pct = Some(reading.value);
        }
        accepted.readings.push(reading);
    }
    for raw in batch.states {
        let device = resolve(raw.device.as_deref().unwrap_or(default_device))?;
        if raw
            .firmware_version
            .as_ref()
            .is_some_and(|f| f.len() > 64 || f.chars().any(char::is_control))
        {
            return Err(IngestError::BadJson(
                "firmware_version: at most 64 printable characters".into(),
            ));
        }
        let state = accepted.states.entry(device).or_default();
        state.firmware_version = raw.firmware_version.or(state.firmware_version.take());
        state.battery_pct = raw.battery_pct.or(state.battery_pct);
        state.signal_dbm = raw.signal_dbm.or(state.signal_dbm);
    }
    if accepted.readings.is_empty() && accepted.states.is_empty() {
        return Err(IngestError::BadJson(
            "the batch holds no readings and no states".into(),
        ));
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_bomb_is_refused_before_it_fills_memory() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b' '; 4 << 20]).expect("compress");
        let bomb = encoder.finish().expect("finish");
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            gunzip(&bomb, 1 << 20),
            Err(IngestError::TooLarge { .. })
        ));
        assert!(matches!(
            gunzip(b"not gzip", 1 << 20),
            Err(IngestError::BadGzip(_))
        ));
    }

    #[test]
    fn wrong_types_and_unknown_fields_are_refused() {
        let limits = Limits {
            max_body_bytes: 1 << 20,
            max_decoded_bytes: 1 << 20,
            max_batch_readings: 2,
            max_future_skew_us: 0,
        };
        for body in [
            &br#"{"readings":[{"metric":"t","value":"hot","ts":0,"seq":1}]}"#[..],
            br#"{"readings":[{"metric":"t","value":1,"ts":0,"seq":1,"extra":1}]}"#,
            br#"{"readings":[{}, {}, {}]}"#,
            b"\xff\xfe",
            b"[1,2",
        ] {
            assert!(
                parse(body, &limits).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
