//! The ruleset as an administrator reads it (`plantgate-firewall dry-run`), kept as a
//! snapshot: every change to the rules the appliance applies shows up as a diff in review.
//! No grants, a fixed configuration; needs neither root nor the kernel.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

use std::path::Path;

use appliance::config::Config;
use firewall::ruleset::{self, Policy};

#[test]
fn the_default_ruleset_reads_as_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("plantgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {:?}\n[network]\nuplink_interface = \"uplink0\"\ndevice_interface = \"device0\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let config = Config::load(Some(&config_path)).expect("config");
    let policy = Policy::from_config(&config).expect("policy");
    let text = firewall::text::render(&ruleset::replace_table(&policy, &[], &[]));
    testkit::snapshot::assert_snapshot(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots"),
        "dry-run.nft",
        &text,
    );
}
