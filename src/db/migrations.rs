//! Schema migrations: the SQL files in `migrations/`, embedded into the binary.
//!
//! Files are named `NNNN_description.sql` and applied in version order, each in its own
//! transaction together with its row in `schema_migrations`. A database that has a version this
//! binary does not know was written by a newer Compañero and is refused rather than guessed at.

use std::borrow::Cow;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

#[derive(rust_embed::RustEmbed)]
#[folder = "migrations/"]
#[include = "*.sql"]
struct MigrationFiles;

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "this database has schema version {database}, but this companero only knows up to \
         version {known}: it was written by a newer Compañero. Upgrade companero, or restore a \
         backup made by this version."
    )]
    NewerDatabase { database: i64, known: i64 },
    #[error(
        "migration {version} is recorded as '{recorded}' but this companero calls it '{embedded}'; \
         the database does not belong to this build"
    )]
    Mismatch {
        version: i64,
        recorded: String,
        embedded: String,
    },
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i64,
        name: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    sql: Cow<'static, [u8]>,
}

/// A migration and, when applied, the time it was applied.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    pub version: i64,
    pub name: String,
    pub applied_at: Option<String>,
}

/// The migrations compiled into this binary, in version order.
pub fn embedded() -> Vec<Migration> {
    let mut migrations: Vec<Migration> = MigrationFiles::iter()
        .map(|file| {
            let (version, name) = parse_file_name(&file)
                .unwrap_or_else(|| panic!("migration file {file} is not named NNNN_name.sql"));
            let sql = MigrationFiles::get(&file).expect("listed file exists").data;
            Migration { version, name, sql }
        })
        .collect();
    migrations.sort_by_key(|m| m.version);
    migrations
}

fn parse_file_name(file: &str) -> Option<(i64, String)> {
    let stem = file.strip_suffix(".sql")?;
    let (number, name) = stem.split_once('_')?;
    Some((number.parse().ok()?, name.to_string()))
}

/// The newest schema version this binary knows.
pub fn latest_version() -> i64 {
    embedded().last().map_or(0, |m| m.version)
}

/// Lists every known migration with its applied time, checking that the database is not newer.
pub fn status(connection: &Connection) -> Result<Vec<MigrationStatus>, MigrationError> {
    let applied = applied(connection)?;
    let known = embedded();
    check_compatible(&applied, &known)?;
    Ok(known
        .into_iter()
        .map(|m| MigrationStatus {
            applied_at: applied
                .iter()
                .find(|a| a.version == m.version)
                .and_then(|a| a.applied_at.clone()),
            version: m.version,
            name: m.name,
        })
        .collect())
}

/// Applies every pending migration in order; returns those it applied.
pub fn apply(connection: &mut Connection) -> Result<Vec<MigrationStatus>, MigrationError> {
    ensure_table(connection)?;
    let applied_before = applied(connection)?;
    let known = embedded();
    check_compatible(&applied_before, &known)?;
    let mut newly_applied = Vec::new();
    for migration in known {
        if applied_before
            .iter()
            .any(|a| a.version == migration.version)
        {
            continue;
        }
        let failed = |source| MigrationError::Failed {
            version: migration.version,
            name: migration.name.clone(),
            source,
        };
        let sql = std::str::from_utf8(&migration.sql)
            .map_err(|e| failed(rusqlite::Error::Utf8Error(0, e)))?;
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql).map_err(failed)?;
        let applied_at: String = tx.query_row(
            "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2) RETURNING applied_at",
            rusqlite::params![migration.version, migration.name],
            |row| row.get(0),
        )?;
        tx.commit()?;
        tracing::info!(version = migration.version, name = %migration.name, "applied migration");
        newly_applied.push(MigrationStatus {
            version: migration.version,
            name: migration.name,
            applied_at: Some(applied_at),
        });
    }
    Ok(newly_applied)
}

fn ensure_table(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         )",
    )
}

fn applied(connection: &Connection) -> Result<Vec<MigrationStatus>, MigrationError> {
    let exists: Option<i64> = connection
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let mut statement = connection
        .prepare("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")?;
    let rows = statement.query_map([], |row| {
        Ok(MigrationStatus {
            version: row.get(0)?,
            name: row.get(1)?,
            applied_at: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn check_compatible(
    applied: &[MigrationStatus],
    known: &[Migration],
) -> Result<(), MigrationError> {
    let latest_known = known.last().map_or(0, |m| m.version);
    if let Some(newest) = applied.iter().map(|a| a.version).max()
        && newest > latest_known
    {
        return Err(MigrationError::NewerDatabase {
            database: newest,
            known: latest_known,
        });
    }
    for record in applied {
        if let Some(migration) = known.iter().find(|m| m.version == record.version)
            && migration.name != record.name
        {
            return Err(MigrationError::Mismatch {
                version: record.version,
                recorded: record.name.clone(),
                embedded: migration.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_well_named_and_unique() {
        let migrations = embedded();
        assert!(!migrations.is_empty());
        for pair in migrations.windows(2) {
            assert!(
                pair[0].version < pair[1].version,
                "duplicate version {}",
                pair[1].version
            );
        }
    }

    #[test]
    fn apply_is_idempotent_and_status_reports_applied() {
        let mut connection = Connection::open_in_memory().unwrap();
        let before = status(&connection).unwrap();
        assert!(before.iter().all(|m| m.applied_at.is_none()));
        let first = apply(&mut connection).unwrap();
        assert_eq!(first.len(), embedded().len());
        assert!(apply(&mut connection).unwrap().is_empty());
        assert!(
            status(&connection)
                .unwrap()
                .iter()
                .all(|m| m.applied_at.is_some())
        );
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut connection = Connection::open_in_memory().unwrap();
        apply(&mut connection).unwrap();
        connection
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')",
                [],
            )
            .unwrap();
        let error = apply(&mut connection).unwrap_err().to_string();
        assert!(error.contains("newer Compañero"), "{error}");
        assert!(error.contains("9999"), "{error}");
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(parse_file_name("0001_init.sql"), Some((1, "init".into())));
        assert_eq!(parse_file_name("init.sql"), None);
        assert_eq!(parse_file_name("x_init.sql"), None);
    }
}
