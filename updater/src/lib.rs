//! Plantgate's signed OTA updater: the bundle format and signing tool (vendor side), and
//! verification, A/B install, boot health and rollback (box side). See `FORMAT.md`.
//!
//! It builds on the core library for config, store and audit; the core knows nothing of it.

pub mod bootenv;
pub mod bundle;
pub mod config;
pub mod container;
pub mod error;
pub mod firmware;
mod fsutil;
pub mod health;
pub mod manifest;
pub mod pki;
pub mod progress;
pub mod slots;
pub mod state;
pub mod trust;
pub mod updater;
pub mod verify;

pub use error::{Rejection, Result, UpdaterError};
pub use updater::Updater;
