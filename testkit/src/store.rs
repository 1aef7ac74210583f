//! A fresh, initialised appliance per test on either backend, for every crate's tests.
//!
//! SQLite gets a temp directory. PostgreSQL gets a new database cloned from a template
//! that is migrated once per migration set, on the server at `TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). An unreachable server fails the
//! test loudly: the PostgreSQL half of the suite never passes by skipping.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use appliance::config::Config;
use appliance::{Actor, Appliance, AuditEvent, DbConnection};
use diesel::{Connection, PgConnection, RunQueryDsl};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
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
        appliance::Store::create(&config)
            .expect("create template")
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
    // A deadline, not a count of tries: on a busy machine many tests clone at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
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

/// A fresh PostgreSQL database, cloned from the migrated template, for a test that runs
/// its own processes against it (the portal's tests). Dropped, with any connections still
/// open, when this is dropped.
#[derive(Debug)]
pub struct PostgresDatabase {
    name: String,
}

impl PostgresDatabase {
    pub fn create() -> PostgresDatabase {
        PostgresDatabase {
            name: create_postgres_database(),
        }
    }

    /// A new, empty PostgreSQL database with none of Plantgate's tables: what a store that
    /// was never initialised, or was lost, looks like to the services.
    pub fn create_empty() -> PostgresDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "plantgate_empty_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin_connection())
            .expect("create empty database");
        PostgresDatabase { name }
    }

    /// How many tables the database holds in any schema but the system's.
    pub fn table_count(&self) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = PgConnection::establish(&self.url()).expect("connect");
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_catalog.pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        )
        .get_result::<Count>(&mut conn)
        .expect("count tables")
        .n
    }

    /// The URL for `store.url`.
    pub fn url(&self) -> String {
        url_for_database(&self.name)
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let mut admin = admin_connection();
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin);
    }
}

/// A device `serial` of `kind` registered now at `site` by the test actor, not behind a
/// gateway.
pub fn register_device(
    app: &Appliance,
    site: appliance::ids::SiteId,
    serial: &str,
    kind: appliance::devices::DeviceKind,
) -> appliance::devices::Device {
    let request = appliance::devices::DeviceRequest {
        serial: serial.into(),
        kind,
        site,
        gateway: None,
        model: None,
    };
    appliance::devices::Device::register(
        &app.audit,
        &test_actor(),
        &request,
        appliance::time::now_us(),
    )
    .expect("register device")
    .0
}

#[derive(diesel::QueryableByName)]
struct One {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    #[allow(dead_code)]
    one: i32,
}

/// An initialised appliance in its own data directory and its own database.
#[derive(Debug)]
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
        appliance::provision::keys(&config).expect("keys");
        let app = Appliance::create(config, &test_actor()).expect("create appliance");
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

    /// A new organisation `name`, created now by the test actor.
    pub fn organisation(&self, name: &str) -> appliance::models::Organisation {
        appliance::models::Organisation::create(
            &self.app.audit,
            &test_actor(),
            name,
            appliance::time::now_us(),
        )
        .expect("organisation")
    }

    /// A new site `name` of `organisation`, without a location, created now by the test actor.
    pub fn site(
        &self,
        organisation: appliance::models::OrganisationId,
        name: &str,
    ) -> appliance::models::Site {
        appliance::models::Site::create(
            &self.app.audit,
            &test_actor(),
            organisation,
            name,
            "",
            appliance::time::now_us(),
        )
        .expect("site")
    }

    /// Appends `n` events, `batch` per transaction.
    pub fn populate(&self, n: usize, batch: usize) {
        let events: Vec<_> = (0..n)
            .map(|i| {
                AuditEvent::new(Actor::System("test".into()), "test.event.recorded")
                    .source(format!("10.0.0.{}", i % 250))
                    .target(format!("device:{i}"))
                    .details(serde_json::json!({ "n": i, "note": "cycle count 4711" }))
            })
            .collect();
        for batch in events.chunks(batch) {
            self.app.audit.record_all(batch.to_vec()).expect("append");
        }
    }

    /// Runs SQL straight against the store, bypassing the library: what an attacker with
    /// file or database access could do. The append-only triggers are dropped first, as
    /// such an attacker would.
    pub fn tamper(&self, statements: &[String]) {
        let mut conn = self.conn();
        let drop_triggers = match self.backend {
            Backend::Sqlite => {
                "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;"
            }
            Backend::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER USER;",
        };
        use diesel::connection::SimpleConnection;
        let conn: &mut DbConnection = &mut conn;
        conn.batch_execute(drop_triggers).expect("drop triggers");
        for sql in statements {
            conn.batch_execute(sql)
                .unwrap_or_else(|err| panic!("{sql}: {err}"));
        }
    }

    /// The tail sequence number.
    pub fn tail(&self) -> i64 {
        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        audit_log
            .select(diesel::dsl::max(seq))
            .first::<Option<i64>>(&mut *self.conn())
            .expect("tail")
            .unwrap_or(0)
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

/// A data directory with its keys made (as `plantgate init` makes them) but no store:
/// SQLite has no file, PostgreSQL an empty database. For tests that a service refuses to
/// start on a missing store rather than create an empty one.
#[derive(Debug)]
pub struct WithoutStore {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub database: Option<PostgresDatabase>,
}

impl WithoutStore {
    /// `extra` is TOML appended to the generated config (top-level keys, then sections).
    pub fn new(backend: Backend, extra: &str) -> WithoutStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = (backend == Backend::Postgres).then(PostgresDatabase::create_empty);
        let mut toml = format!(
            "data_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        );
        toml.push_str(extra);
        if let Some(db) = &database {
            toml.push_str(&format!("\n[store]\nurl = {:?}\n", db.url()));
        }
        let config_path = dir.path().join("plantgate.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let config = Config::load(Some(&config_path)).expect("valid test config");
        config.prepare_data_dir().expect("data dir");
        appliance::provision::keys(&config).expect("keys");
        WithoutStore {
            dir,
            config_path,
            database,
        }
    }

    /// Runs `cmd`, which must stop within 30 s, exit non-zero, say the store is missing (or
    /// not a Plantgate store) and what to do, and create no store.
    pub fn assert_refused(&self, cmd: &mut std::process::Command) {
        use std::process::Stdio;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} still runs without its store");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let output = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{cmd:?} succeeded: {stderr}");
        let problem = if self.database.is_some() {
            "is not a Plantgate store"
        } else {
            "is missing"
        };
        assert!(
            stderr.contains("the store")
                && stderr.contains(problem)
                && stderr.contains("restore it from backup")
                && stderr.contains("plantgate init"),
            "{cmd:?}: {stderr}"
        );
        let db = self.dir.path().join("data/plantgate.db");
        assert!(!db.exists(), "{cmd:?} created {}", db.display());
        if let Some(database) = &self.database {
            assert_eq!(database.table_count(), 0, "{cmd:?} created tables");
        }
    }
}
