//! Opening the database: options, connections and their pragmas, the schema, the lock file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::OutboxError;

/// How long a connection waits for a lock held by another connection.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 64;

/// What an acknowledged (committed) event survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL` (WAL): every commit is flushed to the disk before it is acknowledged, so
    /// an acknowledged event survives a power loss or an operating system crash, not only a killed
    /// process. Group commit shares each flush between every request waiting. The default.
    #[default]
    PowerLoss,
    /// `synchronous=NORMAL` (WAL): an acknowledged event survives the process being killed at any
    /// point, but the last commits before a power loss or an operating system crash may be lost.
    /// Faster on disks with slow flushes.
    ProcessCrash,
}

impl Durability {
    /// The setting's name: `full` or `normal` (SQLite's `synchronous` values).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PowerLoss => "full",
            Self::ProcessCrash => "normal",
        }
    }

    /// Parses `full` or `normal` (any case).
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(Self::PowerLoss),
            "normal" => Ok(Self::ProcessCrash),
            other => Err(format!(
                "`{other}` is not a durability setting: use `full` (acknowledged events survive a power loss; \
                 the default) or `normal` (they survive a killed process; faster)"
            )),
        }
    }
}

/// Options of [`SqliteOutbox::open`](super::SqliteOutbox::open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// At most this many unsettled (pending plus in-flight) deliveries per channel; an enqueue
    /// beyond it fails with [`OutboxError::Full`] and stores nothing. Default 1 000 000.
    pub capacity: usize,
    /// What an acknowledged event survives. Default [`Durability::PowerLoss`].
    pub durability: Durability,
    /// Delivered deliveries and their attempts are kept this long for the delivery log, then
    /// pruned (with their events once no delivery of them is left), in small steps between the
    /// writer's other work. Dead letters are kept until redriven or purged. Default 24 hours.
    pub delivered_retention: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            capacity: crate::DURABLE_CAPACITY,
            durability: Durability::default(),
            delivered_retention: crate::DEFAULT_RETENTION,
        }
    }
}

/// Keeps the connection's prepared statements for reuse. With the query planner stability
/// guarantee on, a plan never depends on the values bound: otherwise SQLite marks a statement with a
/// `LIMIT ?` or a `col = ?` it weighs to be re-prepared whenever its parameters are cleared — which
/// the statement cache does each time it takes one back — and the writer spent a quarter of its
/// time re-preparing its claims.
fn cache_statements(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// How to open connections to one database file.
#[derive(Clone, Debug)]
pub(super) struct Opener {
    pub(super) path: PathBuf,
    pub(super) durability: Durability,
}

impl Opener {
    /// The write connection: creates the file, WAL, the durability's `synchronous`.
    pub(super) fn write(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        cache_statements(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", self.durability.as_str())?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "cache_size", -16_384)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(conn)
    }

    /// A read-only connection.
    pub(super) fn read(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        cache_statements(&conn)?;
        Ok(conn)
    }
}

/// The schema, one step per file of `migrations/`, applied in order; `PRAGMA user_version` holds
/// the last step applied.
const MIGRATIONS: [(i64, &str); 6] = [
    (1, include_str!("../../migrations/0001_outbox.sql")),
    (2, include_str!("../../migrations/0002_event_uuid.sql")),
    (3, include_str!("../../migrations/0003_event_sequence.sql")),
    (
        4,
        include_str!("../../migrations/0004_trace_context_and_format.sql"),
    ),
    (5, include_str!("../../migrations/0005_live_indexes.sql")),
    (
        6,
        include_str!("../../migrations/0006_ordering_keys_in_memory.sql"),
    ),
];

/// Brings the schema up to date. Databases written by earlier versions, which recorded their
/// steps in sqlx's `_sqlx_migrations` table, continue from the steps recorded there.
pub(super) fn migrate(conn: &mut Connection, shown: &Path) -> Result<(), OutboxError> {
    let failed = |e: rusqlite::Error| {
        OutboxError::Storage(format!(
            "could not bring the schema of the SQLite outbox at {} up to date: {e}; check that the file is \
             writable and not corrupted",
            shown.display()
        ))
    };
    let mut version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(failed)?;
    if version == 0 {
        let legacy: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
                [],
                |row| row.get(0),
            )
            .map_err(failed)?;
        if legacy {
            version = conn
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
                    [],
                    |row| row.get(0),
                )
                .map_err(failed)?;
        }
    }
    let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if version > newest {
        return Err(OutboxError::Storage(format!(
            "the SQLite outbox at {} has schema version {version}, newer than this build knows ({newest}): it \
             was written by a newer version; use that version, or another file",
            shown.display()
        )));
    }
    for (step, sql) in MIGRATIONS.iter().filter(|(step, _)| *step > version) {
        let tx = conn.transaction().map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", step).map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    if version > 0
        && conn
            .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
            .map_err(failed)?
            == 0
    {
        conn.pragma_update(None, "user_version", version)
            .map_err(failed)?;
    }
    Ok(())
}

/// Takes the lock file `<path>.lock`, waiting up to [`BUSY_TIMEOUT`] for a previous writer of this
/// process (a dropped outbox finishing its queue) to let go of it.
pub(super) async fn lock_file(path: &Path) -> Result<std::fs::File, OutboxError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            OutboxError::Storage(format!(
                "could not create the lock file {} of the SQLite outbox: {e}; check that its directory \
                 is writable",
                lock_path.display()
            ))
        })?;
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OutboxError::Storage(format!(
                    "the SQLite outbox at {} is in use by another process or another open outbox \
                     (lock file {}): stop it, or use another path",
                    path.display(),
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(OutboxError::Storage(format!(
                    "could not lock {} for the SQLite outbox: {e}; check the file system supports \
                     file locks",
                    lock_path.display()
                )));
            }
        }
    }
}
