//! The A/B cycle with file-backed slots and a real boot environment, for each backend (a
//! GRUB grubenv, a U-Boot environment with one copy and with two): install, trial boot,
//! mark good; a slot that never gets healthy is rolled back; a killed installer never
//! leaves a half-written slot that boots. GRUB's and U-Boot's own tools read what we write.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::Backend;
use common::fixtures::*;
use updater::slots::SlotId;

const PAYLOAD_LEN: usize = 512 * 1024;

fn healthy_update_boots_and_is_marked_good(backend: Backend, env: Env) {
    let vendor = Vendor::new(2, "vendor");
    let tb = TestBox::with_env(backend, env, &vendor, 2);
    let payload = payload_file(&tb.work, "rootfs.img", PAYLOAD_LEN, 3);
    let bundle = make_bundle(
        &spec("2.0.0", 3, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0], &vendor.signers[1]],
    );

    let report = tb.install(&bundle).expect("install");
    assert_eq!((report.slot, report.tries), (SlotId::B, 3));
    assert_eq!(tb.slot_bytes(SlotId::B), std::fs::read(&payload).unwrap());
    assert_eq!(tb.slot_bytes(SlotId::A), SLOT_A_IMAGE);

    assert_eq!(tb.reboot(), SlotId::B);
    let health = tb.updater.health(&tb.checks(true)).expect("health");
    assert!(
        health.trial && health.marked_good && health.healthy(),
        "{health:?}"
    );
    let state = tb.boot_state();
    assert!(state.good(SlotId::B));
    assert_eq!(tb.reboot(), SlotId::B, "a good slot keeps booting");
    assert_eq!(tb.reboot(), SlotId::B);
    let status = tb.updater.status().unwrap();
    assert_eq!(status.state.floor.version.to_string(), "2.0.0");
    assert_eq!(status.state.floor.security_version, 3);
    assert_eq!(
        tb.actions(),
        [
            "updater.bundle.verified",
            "updater.install.started",
            "updater.install.completed",
            "updater.boot.trial",
            "updater.slot.marked_good",
        ]
    );
    let (_, _, details) = tb.audit_trail().into_iter().nth(3).unwrap();
    assert_eq!(details["slot"], "B");
    assert_eq!(details["version"], "2.0.0");
}

fn update_failing_health_three_times_rolls_back_to_the_old_slot(backend: Backend, env: Env) {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::with_env(backend, env, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", PAYLOAD_LEN, 4);
    let bundle = make_bundle(
        &spec("2.0.0", 3, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    tb.install(&bundle).expect("install");

    for left in [2, 1, 0] {
        assert_eq!(tb.reboot(), SlotId::B);
        let health = tb.updater.health(&tb.checks(false)).expect("health runs");
        assert!(!health.healthy() && !health.marked_good);
        assert_eq!(health.failures[0].0, "portal");
        assert_eq!(tb.boot_state().tries(SlotId::B), left);
    }
    assert_eq!(
        tb.reboot(),
        SlotId::A,
        "the bootloader falls back once the trials are used up"
    );
    let health = tb.updater.health(&tb.checks(true)).expect("health");
    assert_eq!(health.rolled_back_from, Some(SlotId::B));
    assert!(health.healthy() && !health.trial);
    assert_eq!(
        tb.slot_bytes(SlotId::A),
        SLOT_A_IMAGE,
        "the old slot is intact"
    );
    assert!(
        !tb.boot_state().ok(SlotId::B),
        "the failed slot is marked bad"
    );
    assert_eq!(tb.reboot(), SlotId::A);
    let status = tb.updater.status().unwrap();
    assert_eq!(
        status.state.floor.version.to_string(),
        "1.0.0",
        "a failed update never raises the floor"
    );

    let trail = tb.audit_trail();
    let failed = trail
        .iter()
        .filter(|(a, _, _)| a == "updater.health.failed")
        .count();
    assert_eq!(failed, 3);
    let (_, outcome, details) = trail
        .iter()
        .find(|(a, _, _)| a == "updater.rollback")
        .expect("the rollback is audited");
    assert_eq!(outcome, "failure");
    assert_eq!(details["failed_slot"], "B");
    assert_eq!(details["failed_version"], "2.0.0");
    assert_eq!(details["running_slot"], "A");
    // The same bundle can be tried again after the rollback.
    tb.install(&bundle).expect("reinstall after rollback");
}

fn install_is_refused_while_the_running_slot_is_on_trial(backend: Backend, env: Env) {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::with_env(backend, env, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", PAYLOAD_LEN, 5);
    let first = make_bundle(
        &spec("2.0.0", 3, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    tb.install(&first).expect("install");
    assert_eq!(tb.reboot(), SlotId::B);
    let next = make_bundle(
        &spec("3.0.0", 3, &payload),
        &tb.work.join("c.pgb"),
        &[&vendor.signers[0]],
    );
    let err = tb.install(&next).expect_err("would overwrite the fallback");
    assert!(err.to_string().contains("only fallback"), "{err}");
    assert_eq!(tb.slot_bytes(SlotId::A), SLOT_A_IMAGE);
}

/// Runs each named test on SQLite and PostgreSQL, with each boot environment backend.
macro_rules! on_every_backend_and_boot_env {
    ($($name:ident),* $(,)?) => {
        on_every_backend_and_boot_env!(@env grub, Grub; $($name),*);
        on_every_backend_and_boot_env!(@env uboot, Uboot; $($name),*);
        on_every_backend_and_boot_env!(@env uboot_redundant, UbootRedundant; $($name),*);
    };
    (@env $module:ident, $env:ident; $($name:ident),*) => {
        mod $module {
            mod sqlite {
                $( #[test] fn $name() { super::super::$name(super::super::Backend::Sqlite, super::super::Env::$env) } )*
            }
            mod postgres {
                $( #[test] fn $name() { super::super::$name(super::super::Backend::Postgres, super::super::Env::$env) } )*
            }
        }
    };
}

on_every_backend_and_boot_env!(
    healthy_update_boots_and_is_marked_good,
    update_failing_health_three_times_rolls_back_to_the_old_slot,
    install_is_refused_while_the_running_slot_is_on_trial,
);

#[test]
fn installer_killed_mid_write_leaves_the_old_slot_booting_with_grub() {
    installer_killed_mid_write_leaves_the_old_slot_booting(Env::Grub);
}

#[test]
fn installer_killed_mid_write_leaves_the_old_slot_booting_with_uboot() {
    installer_killed_mid_write_leaves_the_old_slot_booting(Env::Uboot);
}

#[test]
fn installer_killed_mid_write_leaves_the_old_slot_booting_with_redundant_uboot() {
    installer_killed_mid_write_leaves_the_old_slot_booting(Env::UbootRedundant);
}

fn installer_killed_mid_write_leaves_the_old_slot_booting(env: Env) {
    let vendor = Vendor::new(1, "vendor");
    let scratch = tempfile::tempdir().unwrap();
    // Slot B is a FIFO, so the test holds the installer mid-write, then kills it.
    let fifo = scratch.path().join("slot-b.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let tb = TestBox::with_slot_b(Backend::Sqlite, env, &vendor, 1, Some(fifo.clone()));
    let payload = payload_file(&tb.work, "rootfs.img", 16 << 20, 6);
    let bundle = make_bundle(
        &spec("2.0.0", 3, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );

    let log = scratch.path().join("installer.log");
    let mut child = tb
        .cli()
        .arg("install")
        .arg(&bundle)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start installer");
    // Opening the read end waits for the installer to open the slot: it has verified the
    // bundle and armed the boot environment. Take 1 MiB of its 16, then pull the plug.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader_fifo = fifo.clone();
    std::thread::spawn(move || {
        let mut slot = std::fs::File::open(&reader_fifo).expect("open fifo");
        let mut got = vec![0u8; 1 << 20];
        slot.read_exact(&mut got).expect("installer writes");
        tx.send((slot, got)).unwrap();
    });
    let (slot, got) = loop {
        if let Ok(received) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            break received;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the installer exited ({status}) before writing: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
    };
    assert_eq!(got, std::fs::read(&payload).unwrap()[..1 << 20]);
    child.kill().expect("kill -9");
    let status = child.wait().unwrap();
    assert!(!status.success());
    drop(slot);

    assert!(
        !tb.boot_state().ok(SlotId::B),
        "a half-written slot is not bootable"
    );
    assert_eq!(tb.reboot(), SlotId::A);
    assert_eq!(tb.slot_bytes(SlotId::A), SLOT_A_IMAGE);
    let health = tb.updater.health(&tb.checks(true)).expect("health");
    assert!(health.healthy() && health.rolled_back_from.is_none());
    let actions = tb.actions();
    assert!(actions.contains(&"updater.install.started".to_owned()));
    assert!(!actions.contains(&"updater.install.completed".to_owned()));
}

#[test]
fn grub_editenv_reads_the_environment_we_write_and_we_read_its_edits() {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::new(Backend::Sqlite, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", PAYLOAD_LEN, 8);
    let bundle = make_bundle(
        &spec("2.0.0", 3, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    tb.install(&bundle).expect("install");
    assert_eq!(std::fs::metadata(&tb.env_file).unwrap().len(), 1024);

    let editenv = |args: &[&str]| {
        let output = Command::new("grub-editenv").arg(&tb.env_file).args(args).output().unwrap_or_else(|err| {
            panic!(
                "\n\n*** grub-editenv cannot run ({err}). Install grub-common (scripts/deps test).\n\
                 *** This test checks our grubenv against GRUB's own tool and never skips.\n"
            )
        });
        assert!(
            output.status.success(),
            "grub-editenv {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let listed = editenv(&["list"]);
    for line in [
        "PG_ORDER=B A",
        "PG_B_OK=1",
        "PG_B_GOOD=0",
        "PG_B_TRIES=3",
        "PG_A_GOOD=1",
    ] {
        assert!(
            listed.lines().any(|l| l == line),
            "{line} missing from:\n{listed}"
        );
    }
    // GRUB's save_env decrements the counter at boot; we must read what it writes.
    editenv(&["set", "PG_B_TRIES=2"]);
    assert_eq!(tb.boot_state().tries(SlotId::B), 2);
    assert_eq!(std::fs::metadata(&tb.env_file).unwrap().len(), 1024);
}

/// Runs `fw_printenv` or `fw_setenv` (u-boot-tools) on the test box's environment.
fn fw_tool(tb: &TestBox, tool: &str, args: &[&str]) -> String {
    let config = tb.work.join("fw_env.config");
    std::fs::write(&config, tb.env_kind.fw_env_config(&tb.env_file)).unwrap();
    let output = Command::new(tool)
        .arg("-c")
        .arg(&config)
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "\n\n*** {tool} cannot run ({err}). Install libubootenv-tool (scripts/deps test).\n\
                 *** This test checks our U-Boot environment against U-Boot's own tools and never skips.\n"
            )
        });
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // fw_printenv warns on standard error (bad CRC, default environment) yet exits 0.
    assert!(
        output.stderr.is_empty(),
        "{tool} {args:?} warned: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn uboot_tools_read_the_environment_we_write_and_we_read_theirs(env: Env) {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::with_env(Backend::Sqlite, env, &vendor, 1);
    let payload = payload_file(&tb.work, "rootfs.img", PAYLOAD_LEN, 9);
    let bundle = make_bundle(
        &spec("2.0.0", 3, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    tb.install(&bundle).expect("install");

    let mut listed: Vec<String> = fw_tool(&tb, "fw_printenv", &[])
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "PG_A_GOOD=1",
            "PG_A_OK=1",
            "PG_A_TRIES=0",
            "PG_B_GOOD=0",
            "PG_B_OK=1",
            "PG_B_TRIES=3",
            "PG_ORDER=B A",
        ],
        "fw_printenv lists exactly what we wrote"
    );
    // U-Boot's saveenv after counting a try down; we must read what it writes, and keep
    // what it holds beyond our variables.
    fw_tool(&tb, "fw_setenv", &["PG_B_TRIES", "2"]);
    fw_tool(&tb, "fw_setenv", &["bootdelay", "0"]);
    assert_eq!(tb.boot_state().tries(SlotId::B), 2);
    assert_eq!(tb.reboot(), SlotId::B);
    assert_eq!(
        fw_tool(&tb, "fw_printenv", &["PG_B_TRIES"]),
        "PG_B_TRIES=1\n"
    );
    assert_eq!(fw_tool(&tb, "fw_printenv", &["bootdelay"]), "bootdelay=0\n");
}

#[test]
fn uboot_tools_read_a_single_environment_we_write_and_we_read_theirs() {
    uboot_tools_read_the_environment_we_write_and_we_read_theirs(Env::Uboot);
}

#[test]
fn uboot_tools_read_a_redundant_environment_we_write_and_we_read_theirs() {
    uboot_tools_read_the_environment_we_write_and_we_read_theirs(Env::UbootRedundant);
}

#[test]
fn a_uboot_environment_with_a_bad_crc_is_refused_and_nothing_is_installed() {
    let vendor = Vendor::new(1, "vendor");
    let tb = TestBox::with_env(Backend::Sqlite, Env::Uboot, &vendor, 1);
    let factory = tb.boot_state();
    factory
        .save(tb.env().as_ref())
        .expect("write the factory environment");
    assert_eq!(fw_tool(&tb, "fw_printenv", &["PG_ORDER"]), "PG_ORDER=A B\n");
    // One flipped bit in the data area, as a worn flash cell would do.
    let mut bytes = std::fs::read(&tb.env_file).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&tb.env_file, &bytes).unwrap();

    let err = tb
        .updater
        .status()
        .expect_err("a corrupt environment is refused");
    assert!(err.to_string().contains("bad CRC"), "{err}");
    let payload = payload_file(&tb.work, "rootfs.img", PAYLOAD_LEN, 10);
    let bundle = make_bundle(
        &spec("2.0.0", 3, &payload),
        &tb.work.join("b.pgb"),
        &[&vendor.signers[0]],
    );
    let err = tb
        .install(&bundle)
        .expect_err("no install on a corrupt environment");
    assert!(err.to_string().contains("bad CRC"), "{err}");
    assert_eq!(tb.slot_bytes(SlotId::B), SLOT_B_IMAGE, "slot B untouched");
    assert_eq!(
        std::fs::read(&tb.env_file).unwrap(),
        bytes,
        "the environment untouched"
    );
}
