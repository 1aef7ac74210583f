//! Tampering with the stored audit log, directly in the database, is caught by
//! `plantgate audit verify`, which names the first bad sequence number and exits non-zero.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use common::{Backend, Cli, TestAppliance, stdout};

const RECORDS: usize = 60;

/// A populated appliance with a checkpoint every 10 records.
fn populated(backend: Backend) -> TestAppliance {
    let t = TestAppliance::with_settings(backend, "checkpoint_every_records = 10");
    // One record per append, so that checkpoints fall exactly on 10, 20, 30...
    t.populate(RECORDS, 1);
    t
}

/// Runs `audit verify` and returns (succeeded, stdout).
fn verify(t: &TestAppliance) -> (bool, String) {
    let output = t
        .cli()
        .args(["audit", "verify"])
        .output()
        .expect("run plantgate");
    let text = stdout(&output);
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "verify exited with {:?}: {text}{}",
        output.status,
        common::stderr(&output)
    );
    (output.status.success(), text)
}

fn assert_tampered_at(t: &TestAppliance, seq: i64) {
    let (ok, text) = verify(t);
    assert!(!ok, "verify passed a tampered log: {text}");
    assert!(text.contains("TAMPERED"), "{text}");
    assert!(
        text.contains(&format!("first bad record: seq {seq}:")),
        "expected seq {seq}: {text}"
    );
}

fn intact_log_passes(backend: Backend) {
    let t = populated(backend);
    let (ok, text) = verify(&t);
    assert!(ok, "{text}");
    let total = t.tail();
    assert!(text.contains(&format!("{total} records")), "{text}");
    assert!(
        text.contains(&format!("signed head at seq {total}")),
        "{text}"
    );
}

fn changing_one_byte_of_details_is_caught(backend: Backend) {
    let t = populated(backend);
    // "cycle count 4711" becomes "4712": one byte, still valid JSON.
    t.tamper(&[
        "UPDATE audit_log SET details = REPLACE(details, '4711', '4712') WHERE seq = 35".into(),
    ]);
    let details: String = {
        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        audit_log
            .filter(seq.eq(35))
            .select(details)
            .first(&mut *t.conn())
            .expect("record 35")
    };
    assert!(
        details.contains("4712"),
        "the tampering did not happen: {details}"
    );
    assert_tampered_at(&t, 35);
}

fn deleting_a_middle_record_is_caught(backend: Backend) {
    let t = populated(backend);
    t.tamper(&["DELETE FROM audit_log WHERE seq = 20".into()]);
    assert_tampered_at(&t, 20);
}

fn swapping_two_records_is_caught(backend: Backend) {
    let t = populated(backend);
    t.tamper(&[
        "UPDATE audit_log SET seq = 1000000 WHERE seq = 12".into(),
        "UPDATE audit_log SET seq = 12 WHERE seq = 40".into(),
        "UPDATE audit_log SET seq = 40 WHERE seq = 1000000".into(),
    ]);
    assert_tampered_at(&t, 12);
}

fn dropping_the_last_ten_records_is_caught(backend: Backend) {
    let t = populated(backend);
    let tail = t.tail();
    // Removing the checkpoints that mention them too leaves only the signed head as witness.
    t.tamper(&[
        format!("DELETE FROM audit_log WHERE seq > {}", tail - 10),
        format!("DELETE FROM audit_checkpoints WHERE seq > {}", tail - 10),
    ]);
    let (ok, text) = verify(&t);
    assert!(!ok, "verify passed a truncated log: {text}");
    let head = t
        .app
        .audit
        .head_file()
        .read()
        .expect("head")
        .expect("a head");
    assert!(
        text.starts_with(&format!(
            "audit log TRUNCATED: the head says seq {tail} (hash {}), the store ends at seq {}",
            head.committed.hash,
            tail - 10
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("first bad record: seq {}:", tail - 9)),
        "{text}"
    );
}

fn inserting_a_forged_record_is_caught(backend: Backend) {
    let t = populated(backend);
    let tail = t.tail();
    // Shift everything after 30 up by one and copy record 31 into the gap.
    t.tamper(&[
        "UPDATE audit_log SET seq = seq + 1000000 WHERE seq > 30".into(),
        "UPDATE audit_log SET seq = seq - 999999 WHERE seq > 1000000".into(),
        "INSERT INTO audit_log SELECT 31, occurred_at_us, actor_kind, actor_id, source, action, target, outcome, \
         details, prev_hash, hash FROM audit_log WHERE seq = 32"
            .into(),
    ]);
    assert_eq!(t.tail(), tail + 1);
    assert_tampered_at(&t, 32);
}

fn appending_without_the_key_is_caught(backend: Backend) {
    use appliance::audit::chain::AuditRecord;
    use appliance::schema::audit_log::dsl::*;
    use diesel::prelude::*;
    let t = populated(backend);
    let conn = &mut *t.conn();
    let last: AuditRecord = audit_log
        .order(seq.desc())
        .select(AuditRecord::as_select())
        .first(conn)
        .expect("tail record");
    // A forged record that links correctly: anyone can compute SHA-256, only the key signs.
    let mut forged = AuditRecord {
        seq: last.seq + 1,
        occurred_at_us: last.occurred_at_us + 1,
        actor_kind: "user".into(),
        actor_id: "1".into(),
        source: "local".into(),
        action: "user.created".into(),
        target: "user:66".into(),
        outcome: "success".into(),
        details: "{}".into(),
        prev_hash: last.hash.clone(),
        hash: Vec::new(),
    };
    forged.hash = forged.compute_hash().to_vec();
    appliance::on_backend!(conn, c => diesel::insert_into(audit_log).values(&forged).execute(c))
        .expect("insert");
    assert_tampered_at(&t, last.seq + 1);
}

fn rewriting_the_chain_with_recomputed_hashes_is_caught(backend: Backend) {
    let t = populated(backend);
    // Change record 25 and recompute every hash after it, so the chain is internally
    // consistent again. Only the signed checkpoint at 30 (and the signed head) can tell.
    let conn = &mut *t.conn();
    let records = {
        use appliance::audit::chain::AuditRecord;
        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        audit_log
            .order(seq)
            .select(AuditRecord::as_select())
            .load(conn)
            .expect("records")
    };
    let mut statements = Vec::new();
    let mut prev = records[23].hash.clone();
    for mut record in records.into_iter().skip(24) {
        if record.seq == 25 {
            record.target = "device:forged".into();
        }
        record.prev_hash = prev;
        record.hash = record.compute_hash().to_vec();
        prev = record.hash.clone();
        statements.push(format!(
            "UPDATE audit_log SET target = '{}', prev_hash = {}, hash = {} WHERE seq = {}",
            record.target,
            hex_literal(backend, &record.prev_hash),
            hex_literal(backend, &record.hash),
            record.seq
        ));
    }
    t.tamper(&statements);
    let (ok, text) = verify(&t);
    assert!(!ok, "{text}");
    // The checkpoints at 10 and 20 still vouch for 1..=20; the one at 30 does not.
    assert!(text.contains("first bad record: seq 21:"), "{text}");
    assert!(text.contains("21..=30"), "{text}");
}

fn a_forged_checkpoint_is_caught(backend: Backend) {
    let t = populated(backend);
    t.tamper(&[format!(
        "UPDATE audit_checkpoints SET signature = {} WHERE seq = 20",
        hex_literal(backend, &[7u8; 64])
    )]);
    assert_tampered_at(&t, 20);
}

fn a_deleted_head_file_fails_verification(backend: Backend) {
    let t = populated(backend);
    std::fs::remove_file(t.app.audit.head_file().path()).expect("remove head");
    let (ok, text) = verify(&t);
    assert!(!ok, "{text}");
    assert!(text.contains("signed audit head is missing"), "{text}");
}

fn the_store_itself_refuses_updates_and_deletes(backend: Backend) {
    let t = populated(backend);
    use diesel::connection::SimpleConnection;
    let conn = &mut *t.conn();
    for sql in [
        "UPDATE audit_log SET target = 'x' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
    ] {
        let err = conn.batch_execute(sql).expect_err("append-only");
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert!(verify(&t).0);
}

fn hex_literal(backend: Backend, bytes: &[u8]) -> String {
    match backend {
        Backend::Sqlite => format!("X'{}'", hex::encode(bytes)),
        Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
    }
}

on_both_backends!(
    intact_log_passes,
    changing_one_byte_of_details_is_caught,
    deleting_a_middle_record_is_caught,
    swapping_two_records_is_caught,
    dropping_the_last_ten_records_is_caught,
    inserting_a_forged_record_is_caught,
    appending_without_the_key_is_caught,
    rewriting_the_chain_with_recomputed_hashes_is_caught,
    a_forged_checkpoint_is_caught,
    a_deleted_head_file_fails_verification,
    the_store_itself_refuses_updates_and_deletes,
);
