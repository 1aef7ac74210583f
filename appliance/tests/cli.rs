//! The `plantgate` command as an operator uses it: configuration errors, `init`, export,
//! user listing, and the audit trail each command leaves.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};

use appliance::enrolment::{self, FIRST_ADMIN};
use appliance::models::{Organisation, Role, User};
use common::{Backend, Cli, TestAppliance, stderr, stdout, test_actor};

fn plantgate(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plantgate"));
    cmd.current_dir(dir)
        .env_remove("PLANTGATE_CONFIG")
        .env("PLANTGATE_LOG__LEVEL", "warn");
    cmd
}

/// Asserts exit code 2 and exactly one line on stderr that contains every `needle`.
fn assert_config_error(output: &Output, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}

fn with_config(toml: &str) -> (tempfile::TempDir, Command) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("plantgate.toml"), toml).expect("write");
    let mut cmd = plantgate(dir.path());
    cmd.args(["--config", "plantgate.toml", "config", "check"]);
    (dir, cmd)
}

#[test]
fn runs_with_no_config_file_storing_under_dot_var() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = plantgate(dir.path())
        .args(["config", "check"])
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("data_dir = \"./var\""),
        "{}",
        stdout(&output)
    );
    let output = plantgate(dir.path()).arg("init").output().expect("run");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(dir.path().join("var/plantgate.db").is_file());
    assert!(dir.path().join("var/keys/audit-signing.key").is_file());
}

#[test]
fn an_unknown_key_in_the_file_is_named() {
    let (_dir, mut cmd) = with_config("data_dir = \"d\"\ncolour = \"blue\"\n");
    assert_config_error(
        &cmd.output().expect("run"),
        &["colour", "unknown key", "plantgate.toml"],
    );
    let (_dir, mut cmd) = with_config("[store]\nurll = \"sqlite://x.db\"\n");
    assert_config_error(
        &cmd.output().expect("run"),
        &["store.urll", "unknown key", "url"],
    );
}

#[test]
fn an_unknown_environment_override_is_named() {
    let (_dir, mut cmd) = with_config("");
    cmd.env("PLANTGATE_STORE__COLOUR", "blue");
    assert_config_error(
        &cmd.output().expect("run"),
        &["store.colour", "unknown key", "PLANTGATE_STORE__COLOUR"],
    );
}

#[test]
fn a_wrong_type_names_key_value_and_expectation() {
    let (_dir, mut cmd) = with_config("[store]\npool_size = \"eight\"\n");
    assert_config_error(
        &cmd.output().expect("run"),
        &["store.pool_size", "\"eight\"", "expected"],
    );
    let (_dir, mut cmd) = with_config("");
    cmd.env("PLANTGATE_STORE__POOL_SIZE", "eight");
    assert_config_error(
        &cmd.output().expect("run"),
        &["store.pool_size", "eight", "PLANTGATE_STORE__POOL_SIZE"],
    );
    let (_dir, mut cmd) = with_config("[log]\nformat = \"xml\"\n");
    assert_config_error(
        &cmd.output().expect("run"),
        &["log.format", "xml", "human", "json"],
    );
    let (_dir, mut cmd) = with_config("[store]\npool_size = 0\n");
    assert_config_error(
        &cmd.output().expect("run"),
        &["store.pool_size", "between 1 and 64"],
    );
}

#[test]
fn an_unsupported_store_scheme_is_refused_without_printing_the_password() {
    let (_dir, mut cmd) = with_config("");
    cmd.env(
        "PLANTGATE_STORE__URL",
        "mysql://plantgate:hunter2@db.example/plantgate",
    );
    let output = cmd.output().expect("run");
    assert_config_error(
        &output,
        &["store.url", "unsupported scheme `mysql`", "postgres://"],
    );
    assert!(!stderr(&output).contains("hunter2"));
}

#[test]
fn broken_toml_is_one_line() {
    let (_dir, mut cmd) = with_config("[store\nurl = 3\n");
    assert_config_error(&cmd.output().expect("run"), &["plantgate.toml"]);
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = plantgate(dir.path())
        .args(["--config", "nope.toml", "config", "check"])
        .output()
        .expect("run");
    assert_config_error(&output, &["nope.toml", "no such file"]);
}

#[test]
fn an_unwritable_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let readonly = dir.path().join("ro");
    std::fs::create_dir(&readonly).expect("mkdir");
    // Root ignores permission bits, so as root make a read-only mount; otherwise chmod.
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mounted = is_root
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(&readonly)
            .status()
            .is_ok_and(|s| s.success());
    if !mounted {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            !is_root,
            "as root a read-only tmpfs is needed for this test, and mount failed"
        );
        std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    let output = plantgate(dir.path())
        .args(["config", "check"])
        .env("PLANTGATE_DATA_DIR", readonly.join("plantgate"))
        .output()
        .expect("run");
    if mounted {
        let _ = Command::new("umount").arg(&readonly).status();
    }
    assert_config_error(&output, &["data_dir", "not a writable directory"]);
}

fn init_prints_the_enrolment_token_once(backend: Backend) {
    let t = TestAppliance::new(backend);
    let first = t.cli().arg("init").output().expect("init");
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| {
            line.len() == 43
                && line
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .unwrap_or_else(|| panic!("no token in: {text}"))
        .to_owned();

    let again = t.cli().arg("init").output().expect("init again");
    assert!(again.status.success());
    assert!(
        !stdout(&again).contains(&token),
        "the token was shown twice"
    );
    assert!(
        stdout(&again).contains("--reissue-token"),
        "{}",
        stdout(&again)
    );

    // The store holds only the token's hash, and the audit log does not hold the token.
    let export = t.cli().args(["audit", "export"]).output().expect("export");
    assert!(!stdout(&export).contains(&token));
    assert!(stdout(&export).contains("\"action\":\"enrolment.token.issued\""));
    if backend == Backend::Sqlite {
        let db = std::fs::read(t.app.config.data_dir.join("plantgate.db")).expect("db file");
        let wal = std::fs::read(t.app.config.data_dir.join("plantgate.db-wal")).unwrap_or_default();
        let needle = token.as_bytes();
        assert!(
            !db.windows(needle.len())
                .chain(wal.windows(needle.len()))
                .any(|w| w == needle)
        );
    }

    // Reissuing replaces it: the old token no longer enrols, the new one does, once.
    let reissued = t
        .cli()
        .args(["init", "--reissue-token"])
        .output()
        .expect("reissue");
    let new_token = stdout(&reissued)
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 43)
        .expect("new token")
        .to_owned();
    assert_ne!(new_token, token);
    let conn = &mut *t.conn();
    assert!(
        enrolment::redeem(conn, FIRST_ADMIN, &token, appliance::time::now_us()).is_err(),
        "a replaced token still works"
    );
    assert!(enrolment::redeem(conn, FIRST_ADMIN, &new_token, appliance::time::now_us()).is_ok());
    assert!(
        enrolment::redeem(conn, FIRST_ADMIN, &new_token, appliance::time::now_us()).is_err(),
        "a token worked twice"
    );
}

fn init_audits_what_it_creates(backend: Backend) {
    // The test appliance's store, but a data directory that was never initialised: for
    // SQLite that is also a fresh database; the PostgreSQL one is migrated and empty.
    let t = TestAppliance::new(backend);
    let fresh = tempfile::tempdir().expect("tempdir");
    let output = t
        .cli()
        .env("PLANTGATE_DATA_DIR", fresh.path())
        .arg("init")
        .output()
        .expect("init");
    assert!(output.status.success(), "{}", stderr(&output));
    let output = t
        .cli()
        .env("PLANTGATE_DATA_DIR", fresh.path())
        .args(["audit", "export"])
        .output()
        .expect("export");
    let actions: Vec<String> = stdout(&output)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("json line")["action"]
                .to_string()
        })
        .collect();
    // Every key the table lists, the signing key among them, then the signing key's own record.
    let mut expected = vec![
        "\"keys.created\"",
        "\"audit.key.generated\"",
        "\"appliance.initialised\"",
        "\"enrolment.token.issued\"",
    ];
    if backend == Backend::Sqlite {
        expected.insert(0, "\"store.migrated\"");
    }
    assert_eq!(actions, expected);
}

fn commands_before_init_say_to_run_init(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.populate(3, 3);
    std::fs::remove_file(t.app.config.keys_dir().join("audit-signing.key")).expect("remove key");
    for args in [&["migrate"][..], &["user", "list"], &["audit", "export"]] {
        let output = t.cli().args(args).output().expect("run");
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains("run `plantgate init` first"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // With records in the log, init refuses to make a new key that would orphan them.
    let output = t.cli().arg("init").output().expect("init");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("restore"), "{}", stderr(&output));
}

/// The store is created by `plantgate init` only: with it gone (SQLite: the file moved
/// away; PostgreSQL: a database without Plantgate's tables), every command refuses, names
/// the store, exits non-zero, and creates nothing, and the signed audit head is untouched.
fn a_missing_store_is_refused_and_never_recreated(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.populate(3, 3);
    let data_dir = t.app.config.data_dir.clone();
    let head = std::fs::read(data_dir.join("audit-head.json")).expect("head");
    let db = data_dir.join("plantgate.db");
    let empty = (backend == Backend::Postgres).then(testkit::store::PostgresDatabase::create_empty);
    let moved = t.dir.path().join("moved-away");
    if backend == Backend::Sqlite {
        std::fs::create_dir(&moved).expect("mkdir");
        for suffix in ["", "-wal", "-shm"] {
            let from = data_dir.join(format!("plantgate.db{suffix}"));
            if from.exists() {
                std::fs::rename(&from, moved.join(format!("plantgate.db{suffix}"))).expect("move");
            }
        }
    }
    let cli = || {
        let mut cmd = t.cli();
        if let Some(db) = &empty {
            cmd.env("PLANTGATE_STORE__URL", db.url());
        }
        cmd
    };
    let problem = match backend {
        Backend::Sqlite => "is missing",
        Backend::Postgres => "is not a Plantgate store",
    };
    let commands: [&[&str]; 6] = [
        &["audit", "verify"],
        &["user", "list"],
        &[
            "grant",
            "open",
            "--from",
            "10.0.0.5",
            "--to",
            "10.0.1.7",
            "--agent",
            "s7",
            "--seconds",
            "60",
            "--reason",
            "maintenance",
        ],
        &["grant", "revoke", "1"],
        &["migrate"],
        &["audit", "export"],
    ];
    for args in commands {
        let output = cli().args(args).output().expect("run");
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("the store")
                && err.contains(problem)
                && err.contains("restore it from backup")
                && err.contains("plantgate init"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("firewall: applied"), "{args:?}: {err}");
        assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
        assert!(!db.exists(), "{args:?} created {}", db.display());
        if let Some(empty) = &empty {
            assert_eq!(empty.table_count(), 0, "{args:?} created tables");
        }
        assert_eq!(
            std::fs::read(data_dir.join("audit-head.json")).expect("head"),
            head,
            "{args:?} rewrote the signed audit head"
        );
    }

    // Put back, the store is the same one, intact.
    if backend == Backend::Sqlite {
        for entry in std::fs::read_dir(&moved).expect("moved") {
            let entry = entry.expect("entry");
            std::fs::rename(entry.path(), data_dir.join(entry.file_name())).expect("move back");
        }
    }
    let output = t.cli().args(["audit", "verify"]).output().expect("verify");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("audit log intact"),
        "{}",
        stdout(&output)
    );

    // `init` on a new appliance (a fresh data directory) still creates the store.
    let fresh = tempfile::tempdir().expect("tempdir");
    let output = cli()
        .env("PLANTGATE_DATA_DIR", fresh.path())
        .arg("init")
        .output()
        .expect("init");
    assert!(output.status.success(), "{}", stderr(&output));
    match &empty {
        None => assert!(fresh.path().join("plantgate.db").is_file()),
        Some(empty) => assert!(empty.table_count() > 0),
    }
    let output = cli()
        .env("PLANTGATE_DATA_DIR", fresh.path())
        .args(["user", "list"])
        .output()
        .expect("user list");
    assert!(output.status.success(), "{}", stderr(&output));
}

fn export_streams_jsonl_and_csv_with_time_bounds(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.populate(30, 10);
    let middle = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    std::thread::sleep(std::time::Duration::from_millis(5));
    t.populate(20, 10);
    let total = t.tail() as usize;

    let all = t
        .cli()
        .args(["audit", "export", "--format", "jsonl"])
        .output()
        .expect("export");
    let lines: Vec<serde_json::Value> = stdout(&all)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), total);
    assert!(
        lines
            .windows(2)
            .all(|w| w[1]["seq"].as_i64() == w[0]["seq"].as_i64().map(|s| s + 1))
    );
    assert_eq!(lines[total - 1]["details"]["note"], "cycle count 4711");
    assert_eq!(lines[total - 1]["hash"].as_str().map(str::len), Some(64));

    let since = t
        .cli()
        .args(["audit", "export", "--since", &middle])
        .output()
        .expect("export");
    let later: Vec<serde_json::Value> = stdout(&since)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    // The second batch, and the audit record of the first export.
    assert_eq!(
        later.len(),
        21,
        "only the second batch and one export are after {middle}"
    );
    assert_eq!(later[20]["action"], "audit.exported");
    let until = t
        .cli()
        .args(["audit", "export", "--until", &middle, "--format", "csv"])
        .output()
        .expect("export");
    let csv = stdout(&until);
    assert!(csv.starts_with(
        "seq,time,actor_kind,actor_id,source,action,target,outcome,details,prev_hash,hash\n"
    ));
    assert_eq!(csv.lines().count(), 1 + total - 20);

    let bad = t
        .cli()
        .args(["audit", "export", "--since", "last tuesday"])
        .output()
        .expect("export");
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("is not a time"), "{}", stderr(&bad));

    // The exports themselves are audited, with what was exported.
    let last = t
        .cli()
        .args(["audit", "export", "--since", &middle])
        .output()
        .expect("export");
    let last_line: serde_json::Value =
        serde_json::from_str(stdout(&last).lines().last().expect("a line")).expect("json");
    assert_eq!(last_line["action"], "audit.exported");
    assert_eq!(last_line["details"]["format"], "csv");
    // That is the record of the CSV export before it, of the records before `middle`.
    assert_eq!(last_line["details"]["records"], (total - 20) as u64);
}

fn csv_export_neutralises_spreadsheet_formulas(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.app
        .audit
        .record(
            appliance::AuditEvent::new(test_actor(), "user.renamed")
                .target("=HYPERLINK(\"http://x\")"),
        )
        .expect("append");
    let output = t
        .cli()
        .args(["audit", "export", "--format", "csv"])
        .output()
        .expect("export");
    let csv = stdout(&output);
    assert!(csv.contains("'=HYPERLINK"), "{csv}");
    assert!(!csv.contains(",=HYPERLINK"), "{csv}");
}

fn user_list_shows_users_with_role_and_organisation(backend: Backend) {
    let t = TestAppliance::new(backend);
    let actor = test_actor();
    let plant = Organisation::create(
        &t.app.audit,
        &actor,
        "Moulding Plant Nord",
        appliance::time::now_us(),
    )
    .expect("org");
    User::create(
        &t.app.audit,
        &actor,
        plant.id,
        "Ada Admin",
        "ada@plant.example",
        Role::Admin,
        appliance::time::now_us(),
    )
    .expect("user");
    User::create(
        &t.app.audit,
        &actor,
        plant.id,
        "Tom Tech",
        "tom@vendor.example",
        Role::Technician,
        appliance::time::now_us(),
    )
    .expect("user");
    let output = t.cli().args(["user", "list"]).output().expect("list");
    let text = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        text.lines().any(|l| l.contains("ada@plant.example")
            && l.contains("admin")
            && l.contains("Moulding Plant Nord")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("tom@vendor.example") && l.contains("technician")),
        "{text}"
    );
    let json = t
        .cli()
        .args(["user", "list", "--json"])
        .output()
        .expect("list");
    let users: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(users.as_array().map(Vec::len), Some(2));
    assert_eq!(users[0]["organisation"], "Moulding Plant Nord");
}

fn migrate_reports_an_up_to_date_store(backend: Backend) {
    let t = TestAppliance::new(backend);
    let output = t.cli().arg("migrate").output().expect("migrate");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("up to date"),
        "{}",
        stdout(&output)
    );
}

fn checkpoints_reach_syslog(backend: Backend) {
    let t = TestAppliance::with_settings(backend, "checkpoint_every_records = 5");
    // The receiving end of a syslog socket, as /dev/log is for rsyslog or journald.
    let socket_path = t.dir.path().join("syslog.sock");
    let receiver = UnixDatagram::bind(&socket_path).expect("bind");
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    t.populate(12, 1);
    let output = t
        .cli()
        .args(["audit", "checkpoints", "--syslog"])
        .arg(&socket_path)
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", stderr(&output));
    let mut buf = [0u8; 2048];
    let mut messages = Vec::new();
    while let Ok(n) = receiver.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if messages.len() >= 3 {
            break;
        }
    }
    assert!(messages.len() >= 2, "{messages:?}");
    for message in &messages {
        // RFC 3164: <PRI> then the tag; facility auth (4) * 8 + notice (5) = 37.
        assert!(message.starts_with("<37>"), "{message}");
        assert!(message.contains("plantgate-audit"), "{message}");
        assert!(
            message.contains("plantgate audit checkpoint seq="),
            "{message}"
        );
        assert!(message.contains("signature="), "{message}");
    }
    let printed = t
        .cli()
        .args(["audit", "checkpoints"])
        .output()
        .expect("run");
    assert!(
        stdout(&printed).lines().count() >= 2,
        "{}",
        stdout(&printed)
    );
}

fn tls_install_replaces_the_portal_certificate_only_with_its_own_key(backend: Backend) {
    let t = TestAppliance::new(backend);
    let dir = t.dir.path();
    let (cert, key) =
        appliance::tls::self_signed("plantgate.plant.example", &[]).expect("certificate");
    let (_, other_key) = appliance::tls::self_signed("other", &[]).expect("other key");
    std::fs::write(dir.join("new.crt"), &cert).expect("write");
    std::fs::write(dir.join("new.key"), &key).expect("write");
    std::fs::write(dir.join("wrong.key"), &other_key).expect("write");
    let installed = t.app.config.data_dir.join("tls/portal.crt");

    let refused = t
        .cli()
        .args(["tls", "install", "--cert"])
        .arg(dir.join("new.crt"))
        .arg("--key")
        .arg(dir.join("wrong.key"))
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("does not belong to the certificate"),
        "{}",
        stderr(&refused)
    );
    assert!(!installed.exists(), "a refused certificate was written");

    let ok = t
        .cli()
        .args(["tls", "install", "--cert"])
        .arg(dir.join("new.crt"))
        .arg("--key")
        .arg(dir.join("new.key"))
        .output()
        .expect("run");
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("plantgate.plant.example"),
        "{}",
        stdout(&ok)
    );
    assert_eq!(std::fs::read(&installed).expect("installed"), cert);
    let export = t
        .cli()
        .args(["audit", "export", "--action", "tls."])
        .output()
        .expect("export");
    assert!(stdout(&export).contains("tls.certificate.replaced"));
}

on_both_backends!(
    tls_install_replaces_the_portal_certificate_only_with_its_own_key,
    init_prints_the_enrolment_token_once,
    init_audits_what_it_creates,
    commands_before_init_say_to_run_init,
    a_missing_store_is_refused_and_never_recreated,
    export_streams_jsonl_and_csv_with_time_bounds,
    csv_export_neutralises_spreadsheet_formulas,
    user_list_shows_users_with_role_and_organisation,
    migrate_reports_an_up_to_date_store,
    checkpoints_reach_syslog,
);

/// A reader that closes the pipe early (`plantgate config check | head -1`) ends the
/// command quietly with success, not with a panic.
#[test]
fn a_closed_pipe_ends_printing_quietly() {
    let t = TestAppliance::new(Backend::Sqlite);
    for args in [
        &["config", "check"][..],
        &["user", "list"],
        &["grant", "list"],
    ] {
        let mut child = t
            .cli()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait");
        let err = stderr(&output);
        assert!(
            output.status.success(),
            "{args:?}: {:?} {err}",
            output.status
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
