//! The payload decoder shared by HTTPS and MQTT: the first byte picks JSON or CBOR and
//! whether the rest is gzip-compressed; every reading that decodes goes through the same
//! per-reading checks as a real request. Any panic, overflow or runaway allocation is a bug.
#![no_main]

use appliance::ids::DeviceId;
use ingest::decode::{self, Format, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_body_bytes: 64 * 1024,
    max_decoded_bytes: 256 * 1024,
    max_batch_readings: 10_000,
    max_future_skew_us: 300_000_000,
    // 2000-01-01T00:00:00Z, the default floor.
    earliest_us: 946_684_800_000_000,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let inflated;
    let body = if selector & 2 != 0 {
        match decode::gunzip(body, LIMITS.max_decoded_bytes) {
            Ok(bytes) => {
                inflated = bytes;
                &inflated[..]
            }
            Err(_) => return,
        }
    } else {
        body
    };
    let format = if selector & 1 != 0 {
        Format::Cbor
    } else {
        Format::Json
    };
    if let Ok(batch) = decode::parse(format, body, &LIMITS) {
        for raw in batch.readings {
            let _ = decode::check_reading(raw, DeviceId(1), &LIMITS, 1_795_334_400_000_000);
        }
    }
});
