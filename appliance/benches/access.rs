//! What a remote-access decision costs at the core, on SQLite: a request (checks, insert,
//! approver emails queued), its approval (re-checks, grant stored, request flipped) and its
//! end (grant revoked), each one audited transaction with its fsyncs.
//! `cargo bench -p plantgate-appliance --bench access`; under `cargo test` it runs a few.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use appliance::access::{
    self, Decision, Machine, NewMachine, NewRequest, PolicyChange, SitePolicy,
};
use appliance::config::Config;
use appliance::keys::SigningKey;
use appliance::models::{Organisation, Role, Site, User};
use appliance::{Actor, Appliance};

fn main() {
    let rounds = if std::env::args().any(|arg| arg == "--bench") {
        300
    } else {
        5
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plantgate.toml");
    std::fs::write(&path, format!("data_dir = {:?}\n", dir.path().join("data"))).unwrap();
    let config = Config::load(Some(&path)).unwrap();
    config.prepare_data_dir().unwrap();
    SigningKey::generate(&config.keys_dir()).unwrap();
    let actor = Actor::System("bench".into());
    let app = Appliance::create(config, &actor).unwrap();
    let (audit, config) = (&app.audit, &app.config);
    let org = Organisation::create(audit, &actor, "Plant", appliance::time::now_us()).unwrap();
    let site = Site::create(
        audit,
        &actor,
        org.id,
        "Hall A",
        "",
        appliance::time::now_us(),
    )
    .unwrap();
    let policy = PolicyChange {
        approval_required: true,
        max_minutes: "60".into(),
        device_allowlist: "192.168.50.0/24".into(),
        ..PolicyChange::default()
    };
    SitePolicy::set(
        audit,
        &actor,
        config,
        &site,
        &policy,
        appliance::time::now_us(),
    )
    .unwrap();
    let press = Machine::add(
        audit,
        &actor,
        config,
        &site,
        &NewMachine {
            name: "Press",
            address: "192.168.50.10",
            agents: &["s7".into()],
        },
        appliance::time::now_us(),
    )
    .unwrap();
    let user = |name: &str, role| {
        User::create(
            audit,
            &actor,
            org.id,
            name,
            &format!("{name}@plant.example"),
            role,
            appliance::time::now_us(),
        )
        .unwrap()
    };
    let (tech, ann) = (user("tom", Role::Technician), user("ann", Role::Approver));
    access::set_approver(audit, &actor, &site, ann.id, true).unwrap();
    let new = NewRequest {
        machine_id: press.id,
        agent: "s7".into(),
        minutes: "30".into(),
        reason: "bench".into(),
        declared_address: String::new(),
    };
    let (mut asking, mut deciding, mut ending) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let now = appliance::time::now_us();
        let started = Instant::now();
        let request = access::request(audit, config, &tech, "10.1.0.5", &new, now).unwrap();
        asking += started.elapsed();
        let started = Instant::now();
        access::decide(
            audit,
            config,
            &ann,
            request.id,
            &Decision::Approve {
                minutes: String::new(),
            },
            "10.1.0.6",
            now,
        )
        .unwrap();
        deciding += started.elapsed();
        let started = Instant::now();
        access::end(audit, config, &ann, request.id, "bench", "10.1.0.6", now).unwrap();
        ending += started.elapsed();
    }
    let per = |total: Duration| total.as_secs_f64() * 1e3 / f64::from(rounds);
    println!(
        "remote access on SQLite, {rounds} rounds: request {:.2} ms, approve (grant stored) {:.2} ms, revoke {:.2} ms",
        per(asking),
        per(deciding),
        per(ending)
    );
}
