//! The store: diesel over SQLite (embedded default) or PostgreSQL, behind one
//! `MultiConnection` type, with an r2d2 pool and migrations embedded per backend.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{Config, StoreTarget};
use crate::error::{Result, StoreError};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgresql");

/// An arbitrary, fixed key for the PostgreSQL advisory lock that serialises migrations.
const PG_MIGRATION_LOCK: i64 = 0x504c_414e_5447_4154;

#[allow(missing_debug_implementations)] // the connections inside have no Debug
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// Runs the same diesel expression on whichever concrete connection `conn` holds.
/// For the few queries (batched inserts, streaming loads) that `MultiConnection` does not
/// carry itself, or carries slowly.
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::DbConnection::Sqlite($c) => $body,
            $crate::store::DbConnection::Postgres($c) => $body,
        }
    };
}
/// Inside the core, the macro is named by its floor: `use crate::store::on_backend`.
pub(crate) use on_backend;

/// Run first inside a transaction that reads and then writes: on SQLite it takes the write
/// lock before anything is read, waiting `busy_timeout` for it like any write. Otherwise the
/// transaction reads under a snapshot and, if another connection commits first, its first
/// write fails at once with "database is locked" (SQLite cannot move a reader's snapshot
/// forward), which no timeout waits out. PostgreSQL locks rows as it writes: nothing to do.
pub fn lock_for_writing(conn: &mut DbConnection) -> Result<()> {
    if let DbConnection::Sqlite(c) = conn {
        // A write that changes no row still takes the lock.
        c.batch_execute("DELETE FROM __diesel_schema_migrations WHERE 0")?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

/// Opens connections for the pool; the backend comes from the URL's scheme, never a guess.
#[derive(Debug, Clone)]
pub struct StoreManager {
    target: StoreTarget,
    busy_timeout_ms: u32,
    /// Only `plantgate init` (and test harnesses that stand in for it) may create the
    /// SQLite file; everything else opens it `mode=rw`, so a missing file stays missing.
    create: bool,
}

impl ManageConnection for StoreManager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        match &self.target {
            StoreTarget::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&sqlite_uri(path, self.create))
                    .map_err(diesel::r2d2::Error::ConnectionError)?;
                // WAL lets readers run beside the writer; FULL makes every commit survive
                // power loss, not only a killed process. Temporary tables and sorts stay in
                // memory, so no service needs a writable temporary directory for them.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                     PRAGMA temp_store = MEMORY;",
                    self.busy_timeout_ms
                ))
                .map_err(diesel::r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
            StoreTarget::Postgres(url) => PgConnection::establish(url)
                .map(DbConnection::Postgres)
                .map_err(diesel::r2d2::Error::ConnectionError),
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

pub type StoreConnection = PooledConnection<StoreManager>;

/// The shared source of truth. Cheap to clone: clones share one pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool<StoreManager>,
    target: StoreTarget,
}

impl Store {
    /// Opens an existing Plantgate store, failing at once (not after a pool timeout) when
    /// the database cannot be reached, and with [`StoreError::Missing`] when it does not
    /// exist or holds no Plantgate tables. Never creates anything. Does not migrate: see
    /// [`Store::migrate`]. Services open through `audit::continuity::open_store`, which also
    /// notes a missing store on a box whose audit head vouches for records.
    pub fn open(config: &Config) -> Result<Store> {
        Store::connect(config, false)
    }

    /// Opens the store, creating the SQLite file when there is none and accepting an empty
    /// PostgreSQL database. Only `plantgate init` (first boot) calls this, and test
    /// harnesses that stand in for it; migrate afterwards.
    pub fn create(config: &Config) -> Result<Store> {
        Store::connect(config, true)
    }

    fn connect(config: &Config, create: bool) -> Result<Store> {
        let target = config.store_target()?;
        let missing = |problem: &'static str| StoreError::Missing {
            target: target.redacted(),
            problem,
        };
        if let StoreTarget::Sqlite(path) = &target
            && !create
            && !path.is_file()
        {
            return Err(missing("is missing").into());
        }
        let manager = StoreManager {
            target: target.clone(),
            busy_timeout_ms: config.store.busy_timeout_ms,
            create,
        };
        let mut first = match manager.connect() {
            Ok(conn) => conn,
            // A dropped or renamed PostgreSQL database is a missing store, not an outage.
            Err(err) if !create && is_missing_database(&err) => {
                return Err(missing("does not exist").into());
            }
            Err(err) => {
                return Err(StoreError::Connect {
                    target: target.redacted(),
                    reason: err.to_string(),
                }
                .into());
            }
        };
        if !create && !has_migrations_table(&mut first)? {
            return Err(missing("is not a Plantgate store (it has no Plantgate tables)").into());
        }
        let pool = Pool::builder()
            .max_size(config.store.pool_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(30))
            .build_unchecked(manager);
        drop(first);
        Ok(Store { pool, target })
    }

    pub fn conn(&self) -> Result<StoreConnection> {
        Ok(self.pool.get().map_err(StoreError::Pool)?)
    }

    /// An idle connection if there is one now, without waiting: for callers that must not
    /// block, such as a TLS handshake on an event loop.
    pub fn try_conn(&self) -> Option<StoreConnection> {
        self.pool.try_get()
    }

    pub fn backend(&self) -> Backend {
        match self.target {
            StoreTarget::Sqlite(_) => Backend::Sqlite,
            StoreTarget::Postgres(_) => Backend::Postgres,
        }
    }

    /// The store's location with any password removed.
    pub fn describe(&self) -> String {
        self.target.redacted()
    }

    /// Applies pending migrations and returns their versions. Safe when several processes
    /// start at once: they take turns, and the later ones find nothing to do.
    pub fn migrate(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let applied = match (&mut *conn, &self.target) {
            (DbConnection::Sqlite(c), StoreTarget::Sqlite(path)) => {
                let lock_path = PathBuf::from(format!("{}.migrate-lock", path.display()));
                let lock = File::create(&lock_path)
                    .and_then(|file| file.lock().map(|()| file))
                    .map_err(|source| StoreError::MigrationLock {
                        path: lock_path,
                        source,
                    })?;
                let applied = c.run_pending_migrations(SQLITE_MIGRATIONS).map(|versions| {
                    versions
                        .into_iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                });
                drop(lock);
                applied
            }
            (DbConnection::Postgres(c), _) => {
                diesel::sql_query(format!("SELECT pg_advisory_lock({PG_MIGRATION_LOCK})"))
                    .execute(c)?;
                let applied = c
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|versions| {
                        versions
                            .into_iter()
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                    });
                diesel::sql_query(format!("SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})"))
                    .execute(c)?;
                applied
            }
            (DbConnection::Sqlite(_), StoreTarget::Postgres(_)) => {
                return Err(StoreError::Migration(
                    "connection does not match the store URL".into(),
                )
                .into());
            }
        };
        Ok(applied.map_err(|err| StoreError::Migration(err.to_string()))?)
    }

    /// Reverts every migration. Only tests call this, to prove that each `down` reverses its `up`.
    pub fn revert_all_migrations(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let reverted = on_backend!(&mut *conn, c => match c.revert_all_migrations(migrations_of(self.backend())) {
            Ok(versions) => Ok(versions.into_iter().map(|v| v.to_string()).collect()),
            Err(err) => Err(StoreError::Migration(err.to_string())),
        })?;
        Ok(reverted)
    }
}

fn migrations_of(backend: Backend) -> EmbeddedMigrations {
    match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    }
}

/// The `file:` URI diesel opens (it passes `SQLITE_OPEN_URI`): `mode=rw` never creates the
/// file, `mode=rwc` does.
fn sqlite_uri(path: &Path, create: bool) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3F"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str(if create { "?mode=rwc" } else { "?mode=rw" });
    uri
}

/// Whether PostgreSQL refused the connection because the named database does not exist
/// (SQLSTATE 3D000). libpq gives only the server's message text, so the text decides; with
/// any other wording the error stays "cannot open the store", which also refuses.
fn is_missing_database(err: &diesel::r2d2::Error) -> bool {
    match err {
        diesel::r2d2::Error::ConnectionError(diesel::ConnectionError::BadConnection(message)) => {
            message.contains("database") && message.contains("does not exist")
        }
        _ => false,
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Whether the database holds diesel's migrations table, that is, was ever migrated by
/// Plantgate. An empty database (or an empty file) is not a Plantgate store.
fn has_migrations_table(conn: &mut DbConnection) -> Result<bool> {
    let count = match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(
            "SELECT count(*) AS n FROM sqlite_master \
             WHERE type = 'table' AND name = '__diesel_schema_migrations'",
        )
        .get_result::<Count>(c)?,
        DbConnection::Postgres(c) => diesel::sql_query(
            "SELECT count(*) AS n FROM (SELECT to_regclass('__diesel_schema_migrations') AS t) AS r \
             WHERE r.t IS NOT NULL",
        )
        .get_result::<Count>(c)?,
    };
    Ok(count.n > 0)
}
