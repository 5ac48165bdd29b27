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
//!   originals/        uploaded documents, byte for byte
//!   setup-token       the one-time token that registers the first account (until one exists)
//! ```
//!
//! Everything in it is owner-only (folders 0700, files 0600), whichever command created it:
//! every command starts with a private umask ([`use_private_umask`]), and opening the folder
//! tightens what an older version or another tool left readable, with a warning.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

const LOCK_FILE_NAME: &str = "companero.lock";
const SUBDIRECTORIES: [&str; 5] = ["index", "models", "keys", "originals", "exports"];

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
        let fixed = tighten_permissions(root);
        if fixed > 0 {
            tracing::warn!(data_dir = %root.display(), fixed, "{TIGHTENED}");
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

    /// Exports waiting to be downloaded (`<tenant>/<end user or "tenant">/<export>.zip`).
    pub fn exports_dir(&self) -> PathBuf {
        self.root.join("exports")
    }

    /// Uploaded documents, byte for byte, one folder per tenant.
    pub fn originals_dir(&self) -> PathBuf {
        self.root.join("originals")
    }
}

/// The file that holds the set-up token while the instance has no account.
pub fn setup_token_path(root: &Path) -> PathBuf {
    root.join("setup-token")
}

/// New files and folders of this process are owner-only (0600/0700), whoever creates them:
/// SQLite's database, WAL and journal files, keys, uploads, models.
pub fn use_private_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// What [`tighten_permissions`] says when it changed something.
pub const TIGHTENED: &str =
    "files or folders in the data directory were readable by other users; made them owner-only";

/// Makes everything under `root` owner-only; returns how many entries were readable by others.
pub fn tighten_permissions(root: &Path) -> usize {
    #[cfg(not(unix))]
    let fixed = 0;
    #[cfg(unix)]
    let fixed = {
        use std::os::unix::fs::PermissionsExt;
        let mut fixed = 0usize;
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let Ok(metadata) = fs::symlink_metadata(&path) else {
                continue;
            };
            if metadata.file_type().is_symlink() {
                continue;
            }
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                // Others lose every bit; the owner keeps theirs (a folder needs all three).
                let tightened = if metadata.is_dir() {
                    0o700
                } else {
                    mode & 0o700
                };
                if fs::set_permissions(&path, fs::Permissions::from_mode(tightened)).is_ok() {
                    fixed += 1;
                }
            }
            if metadata.is_dir()
                && let Ok(entries) = fs::read_dir(&path)
            {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
        fixed
    };
    fixed
}

/// Where the database of a data directory lives (also for read-only commands that take no lock).
pub fn database_path(root: &Path) -> PathBuf {
    root.join("companero.db")
}

/// Who holds the data directory's lock (a running server), if anyone. Takes no lock.
pub fn in_use(root: &Path) -> anyhow::Result<Option<String>> {
    let path = root.join(LOCK_FILE_NAME);
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
        return Ok(None); // no lock file: never served
    };
    match file.try_lock() {
        Ok(()) => {
            file.unlock()?;
            Ok(None)
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Ok(Some(match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("another process (pid {pid})"),
            }))
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot check the lock {}", path.display()))
        }
    }
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
