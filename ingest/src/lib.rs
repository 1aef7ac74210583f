//! `plantgate-ingest`: device telemetry over HTTPS and MQTT over TLS, stored durably by one
//! group-committing writer, with alerts (their emails go through the one mail outbox).

pub mod auth;
pub mod body;
pub mod decode;
pub mod deliver;
pub mod error;
pub mod firmware;
pub mod gate;
pub mod http;
pub mod https;
pub mod live;
pub mod mqtt;
pub mod shared;
pub mod writer;
