//! SQLite storage: a small connection pool whose work always runs on tokio's blocking threads.
//!
//! Every connection uses WAL (readers never block the writer), foreign keys, a busy timeout and
//! `synchronous=NORMAL` (durable across application crashes; a power cut may lose the last
//! transactions, never corrupt the file). Code that writes should open its transaction with
//! `TransactionBehavior::Immediate`, so that two writers queue on the busy timeout instead of one
//! failing when it upgrades a read lock.

pub mod access;
pub mod coaching;
pub mod jobs;
pub mod migrations;
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
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Db {
    /// Opens (creating if needed) the database file with at most `max_connections` connections.
    /// The first connection is opened here so that a bad path fails at start, not on first use.
    pub fn open(path: &Path, max_connections: usize) -> Result<Db, DbError> {
        let first = connect(path)?;
        Ok(Db {
            pool: Arc::new(Pool {
                path: path.to_path_buf(),
                idle: Mutex::new(vec![first]),
                permits: Semaphore::new(max_connections.max(1)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.pool.path
    }

    /// Runs `work` with a pooled connection on a blocking thread, never on the async runtime.
    pub async fn call<T, E, F>(&self, work: F) -> Result<T, E>
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
            None => connect(&self.path),
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
    async fn connections_have_the_pragmas_and_are_reused() {
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
        assert!(db.pool.idle.lock().unwrap().len() <= 4);
    }
}
