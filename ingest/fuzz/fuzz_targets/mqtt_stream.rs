//! A client's byte stream as the MQTT listener decodes it (mqttbytes for the packets, then
//! our CONNECT version choice, PUBLISH topic and content type). Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ingest::mqtt::decode_for_fuzzing(data, 64 * 1024);
});
