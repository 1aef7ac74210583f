//! Test support: the shared harness (`testkit::store`) and the fixtures.
#![allow(dead_code)] // each test binary uses part of this

pub mod fixtures;

pub use testkit::store::*;
