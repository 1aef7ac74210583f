//! Test support: the shared harness (`testkit::store`), the `on_both_backends!` macro, the
//! `plantgate` binary, which only this crate's tests can name, and `plant`, the site, machines
//! and people the remote-access tests share.
#![allow(dead_code)] // each test binary uses part of this

use std::process::Command;

pub mod plant;

pub use testkit::store::*;

/// `testkit::on_both_backends!`, named at this test crate's root, where its test files find
/// it.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => { testkit::on_both_backends!($($name),*); };
}

/// The `plantgate` binary, configured for a test appliance.
pub trait Cli {
    fn cli(&self) -> Command;
}

impl Cli for TestAppliance {
    fn cli(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_plantgate"));
        cmd.env("PLANTGATE_CONFIG", &self.config_path)
            .env("PLANTGATE_LOG__LEVEL", "warn");
        cmd
    }
}
