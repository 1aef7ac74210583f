//! Rebuild when a migration is added or changed: `embed_migrations!` reads the migration
//! directories at compile time, and cargo does not see a new directory on its own (a stale
//! build would migrate a store short of the migrations the tests fingerprint).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
