//! Turning a posted body into validated readings: bounded gzip, then JSON (UTF-8) or CBOR
//! (RFC 8949) as the content type says, then each reading checked and its device resolved
//! against the credential that sent it.
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
    #[serde(deserialize_with = "number")]
    pub value: f64,
    /// RFC 3339 text, or milliseconds since the Unix epoch.
    #[serde(alias = "timestamp")]
    pub ts: Timestamp,
    pub seq: i64,
}

#[derive(Debug, PartialEq)]
pub enum Timestamp {
    Millis(i64),
    Text(String),
}

/// A number (milliseconds) or a text (RFC 3339), read straight from the token: serde's
/// `untagged` would buffer every reading's timestamp into an intermediate value first.
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("milliseconds since the Unix epoch or an RFC 3339 text")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp::Millis(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp::Millis)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Ok(Timestamp::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Cbor,
}

impl Format {
    /// The format a `Content-Type` names (parameters ignored): `application/json` or
    /// `application/cbor`. `None` is JSON: an MQTT 3.1.1 publish, or an MQTT 5 publish
    /// without the content-type property.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Format, IngestError> {
        let Some(raw) = content_type else {
            return Ok(Format::Json);
        };
        let mime = raw.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/json") {
            Ok(Format::Json)
        } else if mime.eq_ignore_ascii_case("application/cbor") {
            Ok(Format::Cbor)
        } else {
            Err(IngestError::BadContentType(raw.to_owned()))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub device: Option<String>,
    pub firmware_version: Option<String>,
    #[serde(default, deserialize_with = "optional_number")]
    pub battery_pct: Option<f64>,
    #[serde(default, deserialize_with = "optional_number")]
    pub signal_dbm: Option<f64>,
}

/// Any number, integer or float. CBOR encoders write integral values as integers, and
/// ciborium, unlike serde_json, does not turn an integer into an `f64` by itself.
struct NumberVisitor;

impl serde::de::Visitor<'_> for NumberVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
}

fn number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(NumberVisitor)
}

fn optional_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    struct Optional;
    impl<'de> serde::de::Visitor<'de> for Optional {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Option<f64>, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<f64>, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Option<f64>, D::Error> {
            number(deserializer).map(Some)
        }
    }
    deserializer.deserialize_option(Optional)
}

/// Limits from `[ingest]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_decoded_bytes: usize,
    pub max_batch_readings: usize,
    pub max_future_skew_us: i64,
    /// Readings timestamped before this are refused (`ingest.earliest_timestamp`).
    pub earliest_us: i64,
}

/// Inflates a gzip body, refusing one that inflates past `limit` (a gzip bomb). A body of
/// several gzip members is one stream (RFC 1952): every member is inflated, and bytes after
/// the last one that are not a gzip member refuse the whole body rather than being dropped.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|err| IngestError::BadGzip(err.to_string()))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(out)
}

/// Parses a batch in `format`. CBOR must be exactly one data item: trailing bytes are refused.
pub fn parse(format: Format, body: &[u8], limits: &Limits) -> Result<Batch, IngestError> {
    let batch: Batch = match format {
        Format::Json => {
            let text = std::str::from_utf8(body)
                .map_err(|err| IngestError::InvalidUtf8(err.to_string()))?;
            serde_json::from_str(text).map_err(|err| IngestError::BadJson(err.to_string()))?
        }
        Format::Cbor => {
            let mut rest = body;
            let batch = ciborium::de::from_reader(&mut rest)
                .map_err(|err| IngestError::BadCbor(cbor_problem(err)))?;
            if !rest.is_empty() {
                return Err(IngestError::BadCbor(format!(
                    "{} bytes follow the batch; send exactly one CBOR map",
                    rest.len()
                )));
            }
            batch
        }
    };
    if batch.readings.len() > limits.max_batch_readings {
        return Err(IngestError::TooManyReadings {
            count: batch.readings.len(),
            limit: limits.max_batch_readings,
        });
    }
    Ok(batch)
}

fn cbor_problem(err: ciborium::de::Error<std::io::Error>) -> String {
    match err {
        ciborium::de::Error::Io(err) => format!("truncated or unreadable: {err}"),
        ciborium::de::Error::Syntax(offset) => format!("malformed at byte {offset}"),
        ciborium::de::Error::Semantic(Some(offset), problem) => {
            format!("at byte {offset}: {problem}")
        }
        ciborium::de::Error::Semantic(None, problem) => problem,
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_owned(),
    }
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

/// One reading's own checks, which need no store: the timestamp (and how far it is in the
/// future), the metric name, a finite value and the sequence number. The fuzz target runs
/// every decoded reading through it.
pub fn check_reading(
    raw: RawReading,
    device: DeviceId,
    limits: &Limits,
    now_us: i64,
) -> Result<NewReading, String> {
    let measured_at_us = parse_ts(&raw.ts)?;
    if measured_at_us < limits.earliest_us {
        return Err(format!(
            "timestamp {} is before {} (ingest.earliest_timestamp); check the device clock, \
             and that it sends milliseconds, not seconds",
            appliance::time::format_us(measured_at_us),
            appliance::time::format_us(limits.earliest_us),
        ));
    }
    if measured_at_us > now_us.saturating_add(limits.max_future_skew_us) {
        return Err(format!(
            "timestamp is more than {} s in the future; check the device clock",
            limits.max_future_skew_us / 1_000_000
        ));
    }
    let reading = NewReading {
        device_id: device,
        seq: raw.seq,
        metric: raw.metric,
        value: raw.value,
        measured_at_us,
        received_at_us: now_us,
    };
    reading.validate().map_err(|err| err.to_string())?;
    Ok(reading)
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
            .map_err(IngestError::from)?
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
        let reading = check_reading(raw, device, limits, now_us)
            .map_err(|problem| IngestError::BadReading { index, problem })?;
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
        let reported = DeviceState {
            firmware_version: None,
            battery_pct: raw.battery_pct,
            signal_dbm: raw.signal_dbm,
        };
        reported
            .validate()
            .map_err(|err| IngestError::BadState(err.to_string()))?;
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

    /// 2000-01-01T00:00:00Z, the default floor.
    const EARLIEST_US: i64 = 946_684_800_000_000;

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("compress");
        encoder.finish().expect("finish")
    }

    #[test]
    fn every_gzip_member_is_inflated_and_trailing_bytes_refuse_the_body() {
        let mut two = gzip(b"{\"readings\":[");
        two.extend(gzip(b"]}"));
        assert_eq!(
            gunzip(&two, 1 << 20).expect("two members"),
            b"{\"readings\":[]}"
        );
        for trailer in [&b"garbage"[..], b"\0", b"\x1f\x8b"] {
            let mut body = gzip(b"{}");
            body.extend_from_slice(trailer);
            assert!(
                matches!(gunzip(&body, 1 << 20), Err(IngestError::BadGzip(_))),
                "trailer {trailer:?} was accepted"
            );
        }
    }

    #[test]
    fn timestamps_before_the_floor_and_impossible_values_are_refused_with_the_reason() {
        let now = 1_795_334_400_000_000;
        let check = |ts: Timestamp, metric: &str, value: f64| {
            let raw = RawReading {
                device: None,
                metric: metric.into(),
                value,
                ts,
                seq: 1,
            };
            check_reading(raw, DeviceId(1), &limits(), now)
        };
        for ts in [
            Timestamp::Millis(0),
            Timestamp::Millis(-1_000),
            Timestamp::Text("0001-01-01T00:00:00Z".into()),
            // Seconds sent where milliseconds belong: 2026-11-22 read as 1970-01-21.
            Timestamp::Millis(1_795_334_400),
        ] {
            let problem = check(ts, "cycle_count", 1.0).expect_err("before the floor");
            assert!(
                problem.contains("before 2000-01-01") && problem.contains("milliseconds"),
                "{problem}"
            );
        }
        let good = || Timestamp::Millis(1_795_334_400_000);
        assert!(check(Timestamp::Millis(EARLIEST_US / 1000), "cycle_count", 1.0).is_ok());
        for (metric, value) in [
            ("battery_pct", -50.0),
            ("battery_pct", 250.0),
            ("cycle_count", -1.0),
            ("temperature_c", -300.0),
        ] {
            let problem = check(good(), metric, value).expect_err("impossible");
            assert!(
                problem.contains(metric) && problem.contains("physically"),
                "{problem}"
            );
        }
        assert!(check(good(), "battery_pct", 100.0).is_ok());
        assert!(check(good(), "my_custom_metric", -1e300).is_ok());
        for (battery, signal, field) in [
            (Some(-50.0), None, "battery_pct"),
            (Some(250.0), None, "battery_pct"),
            (None, Some(1e300), "signal_dbm"),
            (None, Some(20.0), "signal_dbm"),
        ] {
            let state = DeviceState {
                firmware_version: None,
                battery_pct: battery,
                signal_dbm: signal,
            };
            let problem = state.validate().expect_err("impossible state").to_string();
            assert!(problem.contains(field), "{problem}");
        }
    }

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
            earliest_us: EARLIEST_US,
        };
        for body in [
            &br#"{"readings":[{"metric":"t","value":"hot","ts":0,"seq":1}]}"#[..],
            br#"{"readings":[{"metric":"t","value":1,"ts":0,"seq":1,"extra":1}]}"#,
            br#"{"readings":[{}, {}, {}]}"#,
            b"\xff\xfe",
            b"[1,2",
        ] {
            assert!(
                parse(Format::Json, body, &limits).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn limits() -> Limits {
        Limits {
            max_body_bytes: 1 << 20,
            max_decoded_bytes: 1 << 20,
            max_batch_readings: 10,
            max_future_skew_us: 0,
            earliest_us: EARLIEST_US,
        }
    }

    fn cbor(value: &serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).expect("encode");
        out
    }

    #[test]
    fn cbor_and_json_decode_to_the_same_batch() {
        let value = serde_json::json!({"readings": [
            {"metric": "temperature_c", "value": 71.5, "ts": "2026-11-22T08:00:00Z", "seq": 1},
            {"metric": "cycle_count", "value": 18211, "ts": 1_795_334_400_000_i64, "seq": 2},
        ], "states": [{"battery_pct": 80}]});
        let json = parse(Format::Json, value.to_string().as_bytes(), &limits()).expect("json");
        let cbor = parse(Format::Cbor, &cbor(&value), &limits()).expect("cbor");
        assert_eq!(format!("{json:?}"), format!("{cbor:?}"));
        assert_eq!(
            cbor.readings[0].ts,
            Timestamp::Text("2026-11-22T08:00:00Z".into())
        );
        assert_eq!(cbor.readings[1].ts, Timestamp::Millis(1_795_334_400_000));
        assert_eq!(cbor.readings[1].value, 18211.0);
    }

    #[test]
    fn bad_cbor_is_refused_with_a_reason() {
        let good = cbor(
            &serde_json::json!({"readings": [{"metric": "t", "value": 1, "ts": 0, "seq": 1}]}),
        );
        let mut trailing = good.clone();
        trailing.push(0);
        for (body, expect) in [
            (good[..good.len() - 3].to_vec(), "truncated"),
            (trailing, "follow the batch"),
            (
                cbor(
                    &serde_json::json!({"readings": [{"metric": "t", "value": "hot", "ts": 0, "seq": 1}]}),
                ),
                "invalid type",
            ),
            (cbor(&serde_json::json!([1, 2])), "invalid type"),
            (vec![0xff], "expected map"),
        ] {
            match parse(Format::Cbor, &body, &limits()) {
                Err(IngestError::BadCbor(problem)) => {
                    assert!(problem.contains(expect), "{problem:?} lacks {expect:?}")
                }
                other => panic!("{body:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn content_types_pick_the_decoder() {
        assert_eq!(Format::from_content_type(None).ok(), Some(Format::Json));
        assert_eq!(
            Format::from_content_type(Some("application/CBOR; x=1")).ok(),
            Some(Format::Cbor)
        );
        assert!(matches!(
            Format::from_content_type(Some("text/plain")),
            Err(IngestError::BadContentType(_))
        ));
    }
}
