//! How long one password check takes with the appliance's Argon2id parameters.
//! The portal issue asks for 50 to 250 ms: slow for an attacker, quick for a person.
//! `cargo bench -p plantgate-appliance --bench login`; under `cargo test` it runs once.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::time::Instant;

fn main() {
    let rounds = if std::env::args().any(|arg| arg == "--bench") {
        20
    } else {
        1
    };
    let hash = appliance::accounts::hash_password("Vierkant-Schraube-77").expect("hash");
    let started = Instant::now();
    for _ in 0..rounds {
        // Hashing and verifying cost the same: one Argon2id evaluation each.
        appliance::accounts::hash_password("Vierkant-Schraube-77").expect("hash");
    }
    let per_login = started.elapsed().as_secs_f64() * 1e3 / f64::from(rounds);
    println!(
        "Argon2id ({}), one password check: {per_login:.1} ms (target 50-250 ms)",
        hash.split('$').nth(3).unwrap_or("?")
    );
}
