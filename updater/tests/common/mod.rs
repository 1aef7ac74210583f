//! Test support: a fresh, initialised appliance per test on either backend.
//!
//! The appliance half is appliance/tests/common/mod.rs, adapted: a test crate cannot import
//! another crate's test helpers, and that module names the `plantgate` binary at compile time.
//!
//! SQLite gets a temp directory. PostgreSQL gets a new database cloned from a template
//! that is migrated once per migration set, on the server at `TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). An unreachable server fails the
//! test loudly: the PostgreSQL half of the suite never passes by skipping.
#![allow(dead_code)] // each test binary uses part of this

pub mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use appliance::config::Config;
use appliance::keys::SigningKey;
use appliance::{Actor, Appliance};
use diesel::{Connection, PgConnection, RunQueryDsl};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named test function on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Postgres) } )*
        }
    };
}

pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for_database(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn admin_connection() -> PgConnection {
    PgConnection::establish(&admin_url()).unwrap_or_else(|err| {
        panic!(
            "\n\n*** PostgreSQL is not reachable at {} ({err}).\n*** The PostgreSQL tests cannot run. \
             Run scripts/test, which starts PostgreSQL, or set TEST_POSTGRES_URL.\n",
            admin_url()
        )
    })
}

/// A database name unique to this migration set, so a changed migration gets a new template.
fn template_name() -> String {
    let mut fingerprint = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/migrations/postgresql");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("migrations dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        for file in ["up.sql", "down.sql"] {
            fingerprint.extend(std::fs::read(dir.join(file)).unwrap_or_default());
        }
    }
    format!(
        "plantgate_template_{}",
        &hex::encode(openssl::sha::sha256(&fingerprint))[..12]
    )
}

fn create_postgres_database() -> String {
    let mut admin = admin_connection();
    let template = template_name();
    // One test process builds the template; the others wait on the lock and find it made.
    diesel::sql_query("SELECT pg_advisory_lock(7231)")
        .execute(&mut admin)
        .expect("lock");
    let exists: i64 = diesel::sql_query(format!(
        "SELECT 1 AS one FROM pg_database WHERE datname = '{template}'"
    ))
    .load::<One>(&mut admin)
    .expect("query pg_database")
    .len() as i64;
    if exists == 0 {
        diesel::sql_query(format!("CREATE DATABASE {template}"))
            .execute(&mut admin)
            .expect("create template");
        let mut config = Config::default();
        config.store.url = Some(url_for_database(&template));
        appliance::Store::open(&config)
            .expect("open template")
            .migrate()
            .expect("migrate template");
    }
    diesel::sql_query("SELECT pg_advisory_unlock(7231)")
        .execute(&mut admin)
        .expect("unlock");

    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "plantgate_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let mut last_err = None;
    for _ in 0..20 {
        // Cloning fails while another session is connected to the template; that is brief.
        match diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
        {
            Ok(_) => return name,
            Err(err) => last_err = Some(err),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("cannot create test database {name}: {last_err:?}");
}

#[derive(diesel::QueryableByName)]
struct One {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    #[allow(dead_code)]
    one: i32,
}

/// An initialised appliance in its own data directory and its own database.
pub struct TestAppliance {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub app: Appliance,
    postgres_database: Option<String>,
}

impl TestAppliance {
    pub fn new(backend: Backend) -> TestAppliance {
        TestAppliance::with_settings(backend, "")
    }

    /// `extra` is TOML appended to the generated config (sections such as `[audit]` are
    /// merged by name, so put top-level keys only before any section).
    pub fn with_settings(backend: Backend, extra_audit: &str) -> TestAppliance {
        let dir = tempfile::tempdir().expect("tempdir");
        let postgres_database = (backend == Backend::Postgres).then(create_postgres_database);
        let mut toml = format!(
            "data_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        );
        if let Some(db) = &postgres_database {
            toml.push_str(&format!("[store]\nurl = {:?}\n", url_for_database(db)));
        }
        toml.push_str(&format!("[audit]\n{extra_audit}\n"));
        let config_path = dir.path().join("plantgate.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let config = Config::load(Some(&config_path)).expect("valid test config");
        config.prepare_data_dir().expect("data dir");
        SigningKey::generate(&config.keys_dir()).expect("signing key");
        let app = Appliance::open(config, &test_actor()).expect("open appliance");
        TestAppliance {
            backend,
            dir,
            config_path,
            app,
            postgres_database,
        }
    }

    pub fn conn(&self) -> appliance::store::StoreConnection {
        self.app.store.conn().expect("store connection")
    }
}

impl Drop for TestAppliance {
    fn drop(&mut self) {
        if let Some(db) = &self.postgres_database {
            let mut admin = admin_connection();
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut admin);
        }
    }
}

pub fn test_actor() -> Actor {
    Actor::System("test".into())
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
