//! The signed audit head is never overwritten by a store that does not extend it. With the
//! store moved away, replaced by an empty one or by an older copy, every command and every
//! service's start path refuses and writes nothing; `audit verify` reports the truncation
//! with both sequence numbers; putting the real store back leaves the episode in the log;
//! and only an administrator's accepted restore (audited with both heads) moves the head.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use appliance::audit::head::HeadFile;
use appliance::config::Config;
use appliance::keyring::{self, Service};
use appliance::{Actor, Appliance, Audit, AuditEvent, Store};
use common::{Backend, Cli, TestAppliance, stderr, stdout};
use diesel::{Connection, PgConnection, RunQueryDsl};

/// Stores moved in and out of place: SQLite files beside the data directory, PostgreSQL
/// databases renamed. A "slot" is a named place off to the side.
struct Stores {
    backend: Backend,
    config: Config,
    /// SQLite: the store's path; PostgreSQL: the database's name.
    real: String,
    slots: PathBuf,
}

impl Stores {
    fn new(t: &TestAppliance) -> Stores {
        let real = match t.backend {
            Backend::Sqlite => t
                .app
                .config
                .data_dir
                .join("plantgate.db")
                .display()
                .to_string(),
            Backend::Postgres => {
                let url = t.app.config.store.url.clone().expect("postgres url");
                url.rsplit('/').next().expect("database").to_owned()
            }
        };
        let slots = t.dir.path().join("slots");
        std::fs::create_dir_all(&slots).expect("slots");
        Stores {
            backend: t.backend,
            config: t.app.config.clone(),
            real,
            slots,
        }
    }

    fn slot(&self, name: &str) -> String {
        match self.backend {
            Backend::Sqlite => self.slots.join(format!("{name}.db")).display().to_string(),
            Backend::Postgres => format!("{}_{name}", self.real),
        }
    }

    /// Moves the store in place to the slot.
    fn stash(&self, name: &str) {
        self.rename(&self.real, &self.slot(name));
    }

    /// Moves the slot's store into place.
    fn unstash(&self, name: &str) {
        self.rename(&self.slot(name), &self.real);
    }

    fn rename(&self, from: &str, to: &str) {
        match self.backend {
            Backend::Sqlite => {
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{from}{suffix}"));
                    if from.exists() {
                        std::fs::rename(&from, format!("{to}{suffix}")).expect("move store");
                    }
                }
            }
            Backend::Postgres => {
                admin_until_free(from, &format!("ALTER DATABASE {from} RENAME TO {to}"))
            }
        }
    }

    /// A copy of the store in place, as a backup taken now would be.
    fn snapshot(&self, t: &TestAppliance, name: &str) {
        use diesel::connection::SimpleConnection;
        match self.backend {
            Backend::Sqlite => {
                let conn: &mut appliance::DbConnection = &mut t.conn();
                conn.batch_execute(&format!("VACUUM INTO '{}'", self.slot(name)))
                    .expect("copy the store");
            }
            Backend::Postgres => admin_until_free(
                &self.real,
                &format!("CREATE DATABASE {} TEMPLATE {}", self.slot(name), self.real),
            ),
        }
    }

    /// An initialised Plantgate store with no records, in the slot.
    fn make_empty(&self, name: &str) {
        let mut config = self.config.clone();
        match self.backend {
            Backend::Sqlite => config.store.url = Some(format!("sqlite://{}", self.slot(name))),
            Backend::Postgres => {
                admin(&format!("CREATE DATABASE {}", self.slot(name)));
                let url = self.config.store.url.clone().expect("url");
                config.store.url = Some(url.replace(&self.real, &self.slot(name)));
            }
        }
        Store::create(&config)
            .expect("create")
            .migrate()
            .expect("migrate");
    }

    /// Whether a store (file or database) exists in place.
    fn in_place(&self) -> bool {
        match self.backend {
            Backend::Sqlite => Path::new(&self.real).exists(),
            Backend::Postgres => {
                #[derive(diesel::QueryableByName)]
                struct N {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                diesel::sql_query(format!(
                    "SELECT count(*) AS n FROM pg_database WHERE datname = '{}'",
                    self.real
                ))
                .get_result::<N>(&mut admin_connection())
                .expect("pg_database")
                .n > 0
            }
        }
    }

    /// The missing store's message for this backend.
    fn missing(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "is missing",
            Backend::Postgres => "does not exist",
        }
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        if self.backend == Backend::Postgres {
            for name in ["away", "real", "older", "empty"] {
                let _ = diesel::sql_query(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.slot(name)
                ))
                .execute(&mut admin_connection());
            }
        }
    }
}

fn admin_connection() -> PgConnection {
    PgConnection::establish(&common::admin_url()).expect("postgres admin connection")
}

fn admin(sql: &str) {
    diesel::sql_query(sql)
        .execute(&mut admin_connection())
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

/// Runs `sql`, which needs `database` free of sessions: the test's own pool still holds
/// some, so they are ended first (their pool reconnects later). Ending a session is
/// asynchronous, so a refusal because the database is still in use is retried.
fn admin_until_free(database: &str, sql: &str) {
    let mut admin = admin_connection();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        ))
        .execute(&mut admin)
        .expect("end sessions");
        match diesel::sql_query(sql).execute(&mut admin) {
            Ok(_) => return,
            Err(err) if std::time::Instant::now() < deadline => {
                assert!(err.to_string().contains("being accessed"), "{sql}: {err}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(err) => panic!("{sql}: {err}"),
        }
    }
}

fn head_bytes(t: &TestAppliance) -> Vec<u8> {
    std::fs::read(t.app.audit.head_file().path()).expect("head")
}

/// The committed head's sequence number and hash.
fn signed_head(t: &TestAppliance) -> (i64, String) {
    let state = HeadFile::in_dir(&t.app.config.data_dir)
        .read()
        .expect("read head")
        .expect("a head");
    (state.committed.seq, state.committed.hash)
}

fn run(t: &TestAppliance, args: &[&str]) -> Output {
    t.cli().args(args).output().expect("run plantgate")
}

/// Records of one action, as `audit export` shows them.
fn exported(t: &TestAppliance, action: &str) -> Vec<serde_json::Value> {
    let output = run(t, &["audit", "export", "--action", action]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect()
}

fn details(record: &serde_json::Value) -> serde_json::Value {
    record["details"].clone()
}

fn assert_verify_intact(t: &TestAppliance) -> String {
    let output = run(t, &["audit", "verify"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(text.starts_with("audit log intact"), "{text}");
    text
}

/// `audit verify` fails and names both heads.
fn assert_verify_truncated(t: &TestAppliance, head: &(i64, String), store_seq: i64) {
    let output = run(t, &["audit", "verify"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}{}", stderr(&output));
    let expected = format!(
        "audit log TRUNCATED: the head says seq {} (hash {}), the store ends at seq {store_seq}",
        head.0, head.1
    );
    assert!(text.starts_with(&expected), "expected {expected:?}: {text}");
    assert!(text.contains("accept-restore"), "{text}");
}

/// Every command, and every service's start path, refuses a store that does not extend
/// the head, names both sequence numbers, and leaves the head and the store as they were.
fn assert_everything_refuses_truncation(t: &TestAppliance, head: &(i64, String), store_seq: i64) {
    let before = head_bytes(t);
    let says = format!(
        "the audit log is truncated: the signed head says seq {} (hash {}), the store ends at seq {store_seq}",
        head.0, head.1
    );
    for args in [
        &["user", "list"][..],
        &["audit", "export"],
        &["migrate"],
        &["init"],
        &["grant", "revoke", "1"],
    ] {
        let output = run(t, args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&says), "{args:?}: {err}");
        assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
    }
    // The services' start: the self-check refuses with one line, and so does the open.
    for service in Service::ALL {
        let line = keyring::self_check(&t.app.config, service).expect_err("self-check refuses");
        assert!(
            line.starts_with(&format!("{}: cannot start: {says}", service.program())),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
        let err = Appliance::open(
            t.app.config.clone(),
            &Actor::System(service.program().into()),
        )
        .expect_err("open refuses");
        assert_eq!(err.code(), "audit.truncated", "{err}");
    }
    // A process that opened before the store was swapped cannot append either.
    let store = Store::open(&t.app.config).expect("open store");
    let audit = Audit::open_for_restore(store.clone(), &t.app.config).expect("audit");
    let err = audit
        .record(AuditEvent::new(
            Actor::System("test".into()),
            "test.event.recorded",
        ))
        .expect_err("append refused");
    assert_eq!(err.code(), "audit.truncated", "{err}");
    let tail: Option<i64> = {
        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        audit_log
            .select(diesel::dsl::max(seq))
            .first(&mut *store.conn().expect("conn"))
            .expect("tail")
    };
    assert_eq!(tail.unwrap_or(0), store_seq, "something was appended");
    assert_eq!(head_bytes(t), before, "the signed head was rewritten");
}

/// With the store moved away (the SQLite file, or the PostgreSQL database renamed), every
/// command refuses, names the missing store and creates nothing; put back, the episode is
/// recorded in the log at the next open.
fn a_moved_store_is_refused_and_the_episode_stays_in_the_log(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.populate(5, 1);
    let stores = Stores::new(&t);
    let head = head_bytes(&t);
    let (head_seq, _) = signed_head(&t);
    stores.stash("away");
    let commands: [&[&str]; 8] = [
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
        &["audit", "accept-restore", "--reason", "nothing to accept"],
        &["init"],
    ];
    for args in commands {
        let output = run(&t, args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("the store") && err.contains(stores.missing()),
            "{args:?}: {err}"
        );
        assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
        assert!(!stores.in_place(), "{args:?} created a store");
        assert_eq!(
            head_bytes(&t),
            head,
            "{args:?} rewrote the signed audit head"
        );
    }
    // `init` says why it will not make a new store, and the way out.
    let err = stderr(&run(&t, &["init"]));
    assert!(
        err.contains(&format!("the log holds records up to seq {head_seq}"))
            && err.contains("put the store back from backup")
            && err.contains("--accept-empty-store"),
        "{err}"
    );
    for service in Service::ALL {
        let err = Appliance::open(
            t.app.config.clone(),
            &Actor::System(service.program().into()),
        )
        .expect_err("a service's open refuses");
        assert_eq!(err.code(), "store.missing", "{err}");
    }
    assert!(!stores.in_place());

    // Back in place: the chain matches the head again, and the episode is not lost.
    stores.unstash("away");
    let text = assert_verify_intact(&t);
    assert!(text.contains("note: the store did not match"), "{text}");
    let output = run(&t, &["user", "list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let episodes = exported(&t, "audit.head.mismatch");
    assert_eq!(episodes.len(), 1, "{episodes:?}");
    assert_eq!(episodes[0]["seq"], head_seq + 1, "{episodes:?}");
    let episode = details(&episodes[0]);
    assert_eq!(episode["first"]["kind"], "store_missing", "{episode}");
    assert_eq!(episode["first"]["head_seq"], head_seq, "{episode}");
    assert!(
        episode["refusals"].as_u64().unwrap_or(0) >= commands.len() as u64,
        "{episode}"
    );
    let text = assert_verify_intact(&t);
    assert!(!text.contains("note:"), "recorded twice? {text}");
}

/// An empty store and an older copy are each reported as truncation at the right sequence
/// numbers and refused everywhere; the real store back, the episode is recorded; an older
/// copy accepted on purpose is recorded with both heads.
fn an_empty_or_older_store_is_truncation_until_a_restore_is_accepted(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.populate(4, 1);
    let stores = Stores::new(&t);
    stores.snapshot(&t, "older");
    let older_seq = t.tail();
    t.populate(6, 1);
    let head = signed_head(&t);
    assert_eq!(head.0, t.tail());
    stores.make_empty("empty");

    stores.stash("real");
    stores.unstash("empty");
    assert_verify_truncated(&t, &head, 0);
    assert_everything_refuses_truncation(&t, &head, 0);

    stores.stash("empty");
    stores.unstash("older");
    assert_verify_truncated(&t, &head, older_seq);
    assert_everything_refuses_truncation(&t, &head, older_seq);

    // The real store back: intact, and the first append records the episode.
    stores.stash("older");
    stores.unstash("real");
    assert_verify_intact(&t);
    assert!(run(&t, &["user", "list"]).status.success());
    let episodes = exported(&t, "audit.head.mismatch");
    assert_eq!(episodes.len(), 1, "{episodes:?}");
    let episode = details(&episodes[0]);
    assert_eq!(episode["first"]["kind"], "truncated", "{episode}");
    assert_eq!(episode["first"]["store_seq"], 0, "{episode}");
    assert_eq!(episode["last"]["store_seq"], older_seq, "{episode}");
    assert_eq!(episode["last"]["head_seq"], head.0, "{episode}");
    assert_verify_intact(&t);

    // The older copy, accepted on purpose.
    let head = signed_head(&t);
    stores.stash("real");
    stores.unstash("older");
    let output = run(
        &t,
        &[
            "audit",
            "accept-restore",
            "--reason",
            "restored from Monday's backup",
        ],
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(
        text.contains(&format!("seq {}, hash {}", head.0, head.1)),
        "{text}"
    );
    assert!(text.contains(&format!("ends at seq {older_seq}")), "{text}");
    assert_verify_intact(&t);
    assert!(run(&t, &["user", "list"]).status.success());
    let accepted = exported(&t, "audit.restore.accepted");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let restore = details(&accepted[0]);
    assert_eq!(restore["old_head"]["seq"], head.0, "{restore}");
    assert_eq!(restore["old_head"]["hash"], head.1, "{restore}");
    assert_eq!(restore["store"]["seq"], older_seq, "{restore}");
    assert_eq!(
        restore["reason"], "restored from Monday's backup",
        "{restore}"
    );
    // The episode comes just before it, in the older copy's continued chain.
    assert_eq!(accepted[0]["seq"], older_seq + 2, "{accepted:?}");
    assert_eq!(exported(&t, "audit.head.mismatch").len(), 1);

    // Nothing left to accept.
    let output = run(&t, &["audit", "accept-restore", "--reason", "again"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("there is no restore to accept"),
        "{}",
        stderr(&output)
    );
}

/// `init` on an initialised box whose store is gone refuses; `--accept-empty-store` starts
/// over on purpose and records the old head.
fn init_makes_an_empty_store_only_when_told_and_records_it(backend: Backend) {
    let t = TestAppliance::new(backend);
    t.populate(3, 1);
    let stores = Stores::new(&t);
    let head = signed_head(&t);
    stores.stash("away");
    if backend == Backend::Postgres {
        // The administrator makes a new, empty database in its place.
        admin(&format!("CREATE DATABASE {}", stores.real));
    }
    let output = run(&t, &["init"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the log holds records up to seq {}", head.0)),
        "{err}"
    );
    let output = run(&t, &["init", "--accept-empty-store"]);
    assert_eq!(output.status.code(), Some(2), "needs a reason");
    if backend == Backend::Sqlite {
        assert!(!stores.in_place());
    }

    let output = run(
        &t,
        &[
            "init",
            "--accept-empty-store",
            "--reason",
            "disk replaced, no backup",
        ],
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(
        text.contains(&format!(
            "the old head said seq {} (hash {})",
            head.0, head.1
        )),
        "{text}"
    );
    assert_verify_intact(&t);
    let accepted = exported(&t, "audit.restore.accepted");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let restore = details(&accepted[0]);
    assert_eq!(restore["how"], "init --accept-empty-store", "{restore}");
    assert_eq!(restore["old_head"]["seq"], head.0, "{restore}");
    assert_eq!(restore["store"]["seq"], 0, "{restore}");
    // Run again at the next boot, init finds the store and changes nothing of the sort.
    let output = run(&t, &["init"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(exported(&t, "audit.restore.accepted").len(), 1);
}

on_both_backends!(
    a_moved_store_is_refused_and_the_episode_stays_in_the_log,
    an_empty_or_older_store_is_truncation_until_a_restore_is_accepted,
    init_makes_an_empty_store_only_when_told_and_records_it,
);
