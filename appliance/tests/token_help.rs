//! `plantgate token create --help` names every scope a token can have, from the one list
//! the library checks scopes against.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

use std::process::Command;

#[test]
fn token_create_help_lists_every_scope() {
    let output = Command::new(env!("CARGO_BIN_EXE_plantgate"))
        .args(["token", "create", "--help"])
        .env_remove("PLANTGATE_CONFIG")
        .output()
        .expect("run plantgate");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for scope in appliance::tokens::SCOPES {
        assert!(help.contains(scope), "{scope} missing from:\n{help}");
    }
}

#[test]
fn token_create_refuses_an_unknown_scope_before_touching_anything() {
    let output = Command::new(env!("CARGO_BIN_EXE_plantgate"))
        .args(["token", "create", "--user", "a@b.example", "--name", "x"])
        .args(["--scope", "everything:write"])
        .env_remove("PLANTGATE_CONFIG")
        .output()
        .expect("run plantgate");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("everything:write"), "{err}");
    assert!(err.contains("firmware:write"), "the allowed scopes: {err}");
}
