//! The data directory: one folder that holds everything a Compañero instance owns.
//!
//! ```text
//! <data-dir>/
//!   companero.db      SQLite database (plus -wal/-shm while running)
//!   companero.lock    held by the running server; a second one on the same folder refuses to start
//!   companero.toml    optional configuration file
//!   index/            vector index files (derivable from the database)
//!   models/           downloaded or imported model files
//!   keys/             signing keys
//! ```
//!
//! The folders are created owner-only (0700): they hold keys and end users' conversations.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

const LOCK_FILE_NAME: &str = "companero.lock";
const SUBDIRECTORIES: [&str; 4] = ["index", "models", "keys", "originals"];

/// An opened data directory. While this value lives, it holds the directory's exclusive lock.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock, failing fast if another process
    /// already holds it.
    pub fn open(root: &Path) -> anyhow::Result<DataDir> {
        create_private_dir(root)?;
        let lock = take_lock(root)?;
        for name in SUBDIRECTORIES {
            create_private_dir(&root.join(name))?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database_path(&self) -> PathBuf {
        database_path(&self.root)
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// Uploaded documents, byte for byte, one folder per tenant.
    pub fn originals_dir(&self) -> PathBuf {
        self.root.join("originals")
    }
}

/// Where the database of a data directory lives (also for read-only commands that take no lock).
pub fn database_path(root: &Path) -> PathBuf {
    root.join("companero.db")
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .with_context(|| format!("cannot create data directory {}", path.display()))
}

fn take_lock(root: &Path) -> anyhow::Result<File> {
    let path = root.join(LOCK_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another process (pid {holder})")
            };
            return Err(anyhow!(
                "data directory {} is already in use by {who}. Stop that server first, or pass \
                 a different --data-dir.",
                root.display()
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // Record who holds the lock, for the message above. The lock, not this text, is what counts.
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_the_same_directory_fails_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let first = DataDir::open(&root).unwrap();
        let error = DataDir::open(&root).unwrap_err().to_string();
        assert!(error.contains("already in use"), "{error}");
        assert!(error.contains(&std::process::id().to_string()), "{error}");
        drop(first);
        DataDir::open(&root).expect("lock is released on drop");
    }

    #[cfg(unix)]
    #[test]
    fn directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let data = DataDir::open(&root).unwrap();
        for dir in [
            data.root().to_path_buf(),
            data.keys_dir(),
            data.models_dir(),
        ] {
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}
