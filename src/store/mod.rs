//! The SQLite store: one database file in the state directory, WAL mode, versioned migrations.
//!
//! Owns the connection and the schema. Every module reaches SQLite through [`Store::call`]
//! (async callers; runs on the blocking pool) or [`Store::with_conn`] (already-blocking callers).
//! The connection sits behind a std mutex that is never held across an `.await`.
//!
//! Durability: `synchronous=FULL` in WAL mode, so a transaction that returned from `COMMIT` has
//! reached the disk and survives a kill -9 or a power cut (tested in `tests/store.rs`).
//!
//! Memory: the page cache is capped at 1 MiB (`cache_size=-1024`, SQLite's default is 2 MB);
//! the daemon's working set (sessions, grants index pages, the outbox head) fits easily, and
//! the cap is part of the memory budget in docs/PERFORMANCE.md. No mmap (`mmap_size=0`, the
//! default), so the file's pages are not counted in the resident set.

mod migrations;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

pub use migrations::{MIGRATIONS, Migration, SCHEMA_VERSION};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "sitegate.db";

/// How long a statement waits for a lock held by another connection (the CLI tools open the same
/// file while the daemon runs).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection (rusqlite's default is 16).
const STATEMENT_CACHE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database `{path}`: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this binary understands ({supported}); \
         install a newer sitegate or restore a backup made by this version"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("migration {version} (`{name}`) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database full: no space left for the write")]
    Full,
    #[error("database task ended unexpectedly")]
    TaskFailed,
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps SQLITE_FULL (disk full) to its own variant so callers can report it clearly.
    fn classify(e: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return StoreError::Full;
            }
        }
        StoreError::Sqlite(e)
    }
}

/// Shared handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    /// Fired (from SQLite's update hook) on every row inserted into the outbox.
    outbox_inserted: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir` and runs pending migrations.
    pub fn open_in(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open(&state_dir.join(DB_FILE))
    }

    /// Opens (creating if needed) the database file at `path` and runs pending migrations.
    /// Refuses a database whose schema is newer than this binary.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // journal_mode answers with the mode in force; WAL needs a real file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode = %mode, "database is not in WAL mode");
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA trusted_schema=OFF;
             PRAGMA cache_size=-1024;",
        )
        .map_err(open_err)?;
        migrate(&mut conn)?;
        // Statements of the hot paths (session lookup, audit append, outbox insert, meta) are
        // prepared once and kept (`prepare_cached`): parsing SQL was 17 % of the instructions of
        // the command bench (callgrind, docs/PERFORMANCE.md).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let outbox_inserted = Arc::new(tokio::sync::Notify::new());
        {
            let n = outbox_inserted.clone();
            conn.update_hook(Some(
                move |action: rusqlite::hooks::Action, _db: &str, table: &str, _row: i64| {
                    if action == rusqlite::hooks::Action::SQLITE_INSERT && table == "outbox" {
                        n.notify_one();
                    }
                },
            ));
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_path_buf()),
            outbox_inserted,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notified when a row was inserted into the outbox through this handle's connection (in
    /// any transaction, by any module), so the MQTT drain reads it without polling. The insert
    /// runs while the connection is locked, so a read started after the notification sees the
    /// row once its transaction committed (or not at all if it rolled back).
    pub fn outbox_inserted(&self) -> &tokio::sync::Notify {
        &self.outbox_inserted
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll back
        // on drop), so a poisoned mutex is safe to keep using.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the connection on the current thread. For code that is already blocking
    /// (CLI tools, start-up, the blocking pool).
    pub fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        f(&mut conn).map_err(|e| match e {
            StoreError::Sqlite(inner) => StoreError::classify(inner),
            other => other,
        })
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.with_conn(f))
            .await
            .map_err(|_| StoreError::TaskFailed)?
    }

    /// Reads a value from the `meta` key/value table.
    pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Writes a value into the `meta` key/value table (inside the caller's transaction if any).
    pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with_conn(|c| current_version(c))
    }
}

/// Opens the database of `state_dir` read-only, for a look that must never create, migrate or
/// change it (`check-config`, run as root, must not leave files the service user cannot write).
/// `Ok(None)` when there is no database. Without a `-wal` file (no daemon has it open) the file
/// is opened `immutable`, so no `-shm` or `-wal` is made either. `Err` when it cannot be read,
/// or its schema is not this binary's.
pub fn open_read_only(state_dir: &Path) -> Result<Option<Connection>, StoreError> {
    use rusqlite::OpenFlags;
    let path = state_dir.join(DB_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let open_err = |source| StoreError::Open {
        path: path.clone(),
        source,
    };
    // A URI path: `%`, `?` and `#` are escaped, everything else is taken as is.
    let mut uri = String::from("file:");
    for c in path.display().to_string().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    if !Path::new(&wal).exists() {
        uri.push_str("&immutable=1");
    }
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let found = current_version(&conn)?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "schema {found}, this binary reads schema {SCHEMA_VERSION}"
        )));
    }
    Ok(Some(conn))
}

fn current_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

/// Runs every migration newer than the database, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at_ms INTEGER NOT NULL
         )",
    )?;
    let found = current_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        let wrap = |source| StoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(wrap)?;
        tx.execute_batch(m.sql).map_err(wrap)?;
        let now = crate::clock::unix_ms(time::OffsetDateTime::now_utc());
        tx.execute(
            "INSERT INTO schema_migrations(version, name, applied_at_ms) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now],
        )
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied database migration"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "migration {} out of order", m.name);
        }
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
    }

    #[test]
    fn open_creates_wal_database_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = s
            .with_conn(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(s);
        let s = Store::open_in(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.with_conn(|c| {
            c.execute(
                "INSERT INTO schema_migrations(version, name, applied_at_ms) VALUES (?1, 'future', 0)",
                [SCHEMA_VERSION + 1],
            )?;
            Ok(())
        })
        .unwrap();
        drop(s);
        let err = Store::open_in(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }));
        assert!(err.to_string().contains("newer than this binary"));
    }

    #[test]
    fn meta_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        s.with_conn(|c| {
            Store::meta_set(c, "k", "1")?;
            Store::meta_set(c, "k", "2")?;
            assert_eq!(Store::meta_get(c, "k")?.as_deref(), Some("2"));
            assert_eq!(Store::meta_get(c, "missing")?, None);
            Ok(())
        })
        .unwrap();
    }
}
