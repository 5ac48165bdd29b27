//! A consistent copy of a live database with SQLite's online backup API: every page in one
//! step, under one read transaction. In WAL mode that never blocks the server's writers, and
//! the copy is the database as of one instant, whatever is written meanwhile.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::DbError;

/// Copies the database at `source` (in use or not) to a new file `target`, then checks the
/// copy (`PRAGMA quick_check`).
pub fn copy_database(source: &Path, target: &Path) -> Result<(), DbError> {
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    from.busy_timeout(Duration::from_secs(5))?;
    let mut to = Connection::open(target)?;
    {
        let backup = Backup::new(&from, &mut to)?;
        // One step copies every page; `Busy`/`Locked` means another connection held a lock
        // for a moment (a checkpoint), so it is tried again.
        let mut waits = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                _ if waits >= 500 => {
                    return Err(DbError::Task(
                        "the database stayed locked for 5 seconds; try again".into(),
                    ));
                }
                _ => {
                    waits += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    check(&to)
}

/// `quick_check` of a database file: `Ok` when SQLite finds it sound.
pub fn check_file(path: &Path) -> Result<(), DbError> {
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    check(&connection)
}

fn check(connection: &Connection) -> Result<(), DbError> {
    let verdict: String = connection.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(DbError::Task(format!(
            "the database copy is damaged: {verdict}"
        )));
    }
    Ok(())
}
