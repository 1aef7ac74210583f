//! The signed head when its write after a commit fails (the data partition filled between
//! the commit and the head's update): the records are committed and acknowledged, the head
//! file still says `committed` = the tail before and `pending` = the new tail. That state
//! must pass `plantgate audit verify`, and the next append must bring the head level with
//! the store by itself. (A failure before the commit rolls the append back; the full-disk
//! test in `ingest/tests/full_disk.rs` shows that one on a real full file system.)
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::audit::chain::Hash;
use appliance::keys::SigningKey;
use common::{Backend, Cli, TestAppliance, stdout};

on_both_backends!(a_head_left_behind_by_a_failed_write_verifies_and_catches_up);

fn hash_of(t: &TestAppliance, seq: i64) -> Hash {
    let mut found = None;
    appliance::audit::export::for_each_record(&mut t.conn(), &Default::default(), |r| {
        if r.seq == seq {
            found = Some(r.hash.clone());
        }
        Ok(true)
    })
    .unwrap();
    found.expect("record").try_into().expect("32-byte hash")
}

fn verify(t: &TestAppliance) -> String {
    let output = t.cli().args(["audit", "verify"]).output().unwrap();
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "verify failed: {text}{}",
        common::stderr(&output)
    );
    text
}

fn a_head_left_behind_by_a_failed_write_verifies_and_catches_up(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.populate(5, 1);
    let tail = t.tail();
    let head = t.app.audit.head_file();
    assert_eq!(head.read().unwrap().unwrap().committed.seq, tail);

    // What a head write that failed after the commit leaves: `begin`'s write only.
    let key = SigningKey::load(&t.app.config.keys_dir()).unwrap();
    head.begin(
        &key,
        (tail - 1, &hash_of(&t, tail - 1)),
        (tail, &hash_of(&t, tail)),
    )
    .unwrap();
    let state = head.read().unwrap().unwrap();
    assert_eq!(state.committed.seq, tail - 1);
    assert_eq!(state.pending.as_ref().map(|p| p.seq), Some(tail));
    let said = verify(&t);
    assert!(said.contains(&format!("head at seq {tail}")), "{said}");

    // The next append signs the store's tail as committed: level again, no repair needed.
    t.populate(1, 1);
    let state = head.read().unwrap().unwrap();
    assert_eq!(state.committed.seq, tail + 1);
    assert_eq!(state.pending, None);
    verify(&t);
}
