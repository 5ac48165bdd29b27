//! SQLite storage: one writing connection and a small pool of read-only ones, whose work always
//! runs on tokio's blocking threads.
//!
//! [`Db::call`] runs on the one writing connection, one call at a time in arrival order. SQLite
//! lets one writer in at a time anyway; queueing writers here instead of on the file lock spares
//! them the busy handler's sleep-and-retry (measured: the scheduler delivered 609 messages/s
//! with eight writing connections and 1,079/s with one), and the connection's page cache stays
//! warm, since no other connection of this process invalidates it. [`Db::read`] runs on the
//! pool, next to the writer, for reads that may take a while (search, analytics); its
//! connections are `query_only`, so a write sent there fails loudly instead of racing.
//!
//! Every connection uses WAL (readers never block the writer), foreign keys, a busy timeout and
//! `synchronous=NORMAL` (durable across application crashes; a power cut may lose the last
//! transactions, never corrupt the file). Code that writes should still open its transaction
//! with `TransactionBehavior::Immediate`: another process (a CLI command) may be writing too.

pub mod access;
pub mod api_usage;
pub mod backup;
pub mod channels;
pub mod coaching;
pub mod jobs;
pub mod mfa;
pub mod migrations;
pub mod privacy;
pub mod push;
pub mod retention;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

/// Called by SQLite while another connection holds the write lock: waits a little and asks to
/// try again, until [`BUSY_TIMEOUT`]. SQLite's own busy timeout sleeps in steps of up to 100 ms,
/// so a writer queued behind a 1 ms transaction could wait 10 ms or more; these short waits keep
/// concurrent writers close to the lock's real hold times.
fn wait_for_the_writer(attempt: i32) -> bool {
    // 50 µs, growing to 2 ms: about 2,500 tries make the five seconds.
    let attempt = attempt.max(0) as u64;
    let wait_us = |a: u64| (50 * (a + 1)).min(2_000);
    // The sum of the waits so far: 50 µs more each time for 40 tries, then 2 ms each.
    let waited_us = if attempt <= 40 {
        25 * attempt * (attempt + 1)
    } else {
        41_000 + (attempt - 40) * 2_000
    };
    if waited_us >= BUSY_TIMEOUT.as_micros() as u64 {
        return false;
    }
    std::thread::sleep(Duration::from_micros(wait_us(attempt)));
    true
}

/// An instant as stored: RFC 3339 in UTC with milliseconds, the format of SQLite's
/// `strftime('%Y-%m-%dT%H:%M:%fZ')`, so stored times compare as text.
pub fn instant(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Reads a stored instant (any RFC 3339 form; SQLite's `datetime()` form too).
pub fn parse_instant(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").map(|t| t.and_utc())
        })
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
}

/// How long a connection waits for another writer before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Migration(#[from] migrations::MigrationError),
    #[error("database task failed: {0}")]
    Task(String),
}

impl DbError {
    /// `SQLITE_BUSY`/`SQLITE_LOCKED`: another connection held the lock past the busy timeout.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// A cloneable handle to the database. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Db {
    pool: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    /// The writing connection; `None` after a call left it inside a transaction (or panicked),
    /// until the next call opens a fresh one.
    writer: Mutex<Option<Connection>>,
    /// Calls queue here, in arrival order, for their turn on the writer.
    writer_turn: Semaphore,
    /// Idle read-only connections.
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Db {
    /// Opens (creating if needed) the database file with one writing connection and at most
    /// `max_readers` read-only ones. The writer is opened here so that a bad path fails at
    /// start, not on first use.
    pub fn open(path: &Path, max_readers: usize) -> Result<Db, DbError> {
        let writer = connect(path)?;
        Ok(Db {
            pool: Arc::new(Pool {
                path: path.to_path_buf(),
                writer: Mutex::new(Some(writer)),
                writer_turn: Semaphore::new(1),
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(max_readers.max(1)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.pool.path
    }

    /// Runs `work` on the writing connection, on a blocking thread, after the calls before it.
    pub async fn call<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let _turn = self
            .pool
            .writer_turn
            .acquire()
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?;
        let pool = Arc::clone(&self.pool);
        tokio::task::spawn_blocking(move || {
            // A call whose caller went away may still be finishing: the lock waits for it.
            let mut slot = pool.writer.lock().unwrap_or_else(|e| e.into_inner());
            let mut connection = match slot.take() {
                Some(connection) => connection,
                None => connect(&pool.path).map_err(E::from)?,
            };
            let result = work(&mut connection);
            if connection.is_autocommit() {
                *slot = Some(connection);
            }
            result
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Runs a read on a read-only pooled connection, next to the writer and other reads.
    pub async fn read<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let _permit = self
            .pool
            .permits
            .acquire()
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?;
        let pool = Arc::clone(&self.pool);
        tokio::task::spawn_blocking(move || {
            let mut connection = pool.checkout().map_err(E::from)?;
            let result = work(&mut connection);
            // A connection left inside a transaction (the closure returned early) is not reused.
            if connection.is_autocommit() {
                pool.idle.lock().expect("pool lock").push(connection);
            }
            result
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }
}

impl Pool {
    fn checkout(&self) -> Result<Connection, DbError> {
        let reused = self.idle.lock().expect("pool lock").pop();
        match reused {
            Some(connection) => Ok(connection),
            None => {
                let connection = connect(&self.path)?;
                connection.pragma_update(None, "query_only", true)?;
                Ok(connection)
            }
        }
    }
}

/// Runs `work` in an immediate (writing) transaction: committed when it returns `Ok`, rolled
/// back otherwise. For decisions that must not race another writer (a cap that is checked,
/// then used).
pub fn immediate<T, E: From<DbError>>(
    c: &mut Connection,
    work: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| E::from(DbError::from(e)))?;
    let result = work(&tx)?;
    tx.commit().map_err(|e| E::from(DbError::from(e)))?;
    Ok(result)
}

/// Runs `work` atomically: inside the caller's transaction when there is one (as a
/// savepoint), in an immediate transaction of its own otherwise. For store functions that
/// write several rows and are called both on their own and inside a larger transaction.
pub fn atomically<T, E: From<rusqlite::Error>>(
    c: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    let nested = !c.is_autocommit();
    c.execute_batch(if nested {
        "SAVEPOINT atomically"
    } else {
        "BEGIN IMMEDIATE"
    })?;
    match work(c) {
        Ok(value) => {
            c.execute_batch(if nested {
                "RELEASE atomically"
            } else {
                "COMMIT"
            })?;
            Ok(value)
        }
        Err(error) => {
            let undo = if nested {
                "ROLLBACK TO atomically; RELEASE atomically"
            } else {
                "ROLLBACK"
            };
            if let Err(rollback) = c.execute_batch(undo) {
                tracing::error!(%rollback, "cannot roll back");
            }
            Err(error)
        }
    }
}

/// Opens one connection with the standard settings (for commands that need no pool).
pub fn connect(path: &Path) -> Result<Connection, DbError> {
    let mut connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_handler(Some(wait_for_the_writer))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted content is overwritten with zeros, not left in free pages (erasure must leave
    // nothing readable in the file).
    connection.pragma_update(None, "secure_delete", "ON")?;
    // Pages read through a memory map and a larger page cache: without them every statement
    // re-reads its pages with a system call each (a tenth of the scheduler's time, measured).
    connection.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
    connection.pragma_update(None, "cache_size", -16_000)?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queue_on_one_connection_and_reads_are_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("t.db"), 4).unwrap();
        let (journal, foreign_keys, synchronous): (String, i64, i64) = db
            .call(|c| {
                c.query_row(
                    "SELECT * FROM pragma_journal_mode, pragma_foreign_keys, pragma_synchronous",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(foreign_keys, 1);
        assert_eq!(synchronous, 1, "NORMAL");

        // Many concurrent writers queue on the busy timeout instead of failing.
        db.call(|c| {
            c.execute_batch("CREATE TABLE n(v INTEGER)")
                .map_err(DbError::from)
        })
        .await
        .unwrap();
        let writers = (0..16).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.call(move |c| {
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    tx.execute("INSERT INTO n VALUES (?1)", [i])?;
                    tx.commit().map_err(DbError::from)
                })
                .await
            })
        });
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let count: i64 = db
            .call(|c| {
                c.query_row("SELECT count(*) FROM n", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(count, 16);

        // Reads run on read-only connections: a write sent there fails instead of racing.
        let seen: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM n", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(seen, 16, "a read sees what was written before it");
        let write = db
            .read(|c| {
                c.execute("INSERT INTO n VALUES (0)", [])
                    .map_err(DbError::from)
            })
            .await;
        assert!(write.is_err(), "a read-only connection refuses a write");
        assert!(db.pool.idle.lock().unwrap().len() <= 4);
    }
}
