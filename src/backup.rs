//! Backups of a data directory, and restoring one (`companero backup`, `companero restore`,
//! `serve --backup-dir`).
//!
//! An archive is one ZIP file: the database (copied with SQLite's online backup API, so it can
//! be taken while the server runs), the keys, the original documents, and `manifest.json` with
//! each file's size and SHA-256. Channel credentials are inside the database, still sealed;
//! `keys/` holds what unseals them, so an archive must be kept as safe as the data directory.
//! Models are only named (they are downloaded again), and the vector index is left out (the
//! server rebuilds it from the database).
//!
//! A restore checks every file against the manifest before anything is moved into place, and
//! refuses a damaged archive or a data directory that is in use.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::ZipWriter;
use zip::write::SimpleFileOptions;

/// The archive format this build writes and reads.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const DATABASE: &str = "companero.db";
/// Folders of the data directory that go into an archive, whole.
const FOLDERS: [&str; 2] = ["keys", "originals"];

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The Compañero version that wrote it.
    pub version: String,
    pub created_at: chrono::DateTime<Utc>,
    pub files: Vec<ManifestFile>,
    /// Models the data directory had: not in the archive, downloaded (or imported) again.
    pub models: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a backup wrote.
#[derive(Debug)]
pub struct BackupSummary {
    pub files: usize,
    pub bytes: u64,
}

/// Writes an archive of the data directory `root` to `target` (through `<target>.part`, renamed
/// when complete: an interrupted backup never leaves a file that looks whole).
pub fn backup(root: &Path, target: &Path) -> anyhow::Result<BackupSummary> {
    let database = crate::data_dir::database_path(root);
    if !database.exists() {
        bail!("{} holds no database: nothing to back up", root.display());
    }
    let part = part_path(target);
    let result = write_archive(root, &database, &part);
    match result {
        Ok(summary) => {
            std::fs::rename(&part, target)
                .with_context(|| format!("cannot write {}", target.display()))?;
            Ok(summary)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&part);
            Err(error)
        }
    }
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

fn write_archive(root: &Path, database: &Path, part: &Path) -> anyhow::Result<BackupSummary> {
    // The database first: a document uploaded later is simply not in this backup.
    let staging = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(
            part.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("cannot create a temporary folder beside the archive")?;
    let copy = staging.path().join(DATABASE);
    crate::db::backup::copy_database(database, &copy).context("cannot copy the database")?;
    let file = File::create(part).with_context(|| format!("cannot create {}", part.display()))?;
    let mut zip = ZipWriter::new(BufWriter::new(file)).set_auto_large_file();
    let mut files = vec![add_file(&mut zip, DATABASE, &copy)?];
    for folder in FOLDERS {
        for (name, path) in walk(&root.join(folder), folder)? {
            // An original deleted since the database copy is not needed by it.
            match add_file(&mut zip, &name, &path) {
                Ok(entry) => files.push(entry),
                Err(_) if !path.exists() => continue,
                Err(error) => return Err(error),
            }
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        version: crate::VERSION.to_string(),
        created_at: Utc::now(),
        models: model_names(&root.join("models")),
        files,
    };
    zip.start_file(MANIFEST, options())?;
    serde_json::to_writer_pretty(&mut zip, &manifest)?;
    let summary = BackupSummary {
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.bytes).sum(),
    };
    let mut writer = zip.finish()?;
    writer.flush()?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(summary)
}

fn options() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o600)
}

/// Streams one file into the archive, hashing it on the way.
fn add_file(
    zip: &mut ZipWriter<BufWriter<File>>,
    name: &str,
    path: &Path,
) -> anyhow::Result<ManifestFile> {
    let mut source = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    zip.start_file(name, options())?;
    let (bytes, sha256) = copy_hashing(&mut source, zip)?;
    Ok(ManifestFile {
        path: name.to_string(),
        bytes,
        sha256,
    })
}

fn copy_hashing(source: &mut impl Read, target: &mut impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = source.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        target.write_all(&buffer[..n])?;
        bytes += n as u64;
    }
    Ok((bytes, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `folder`, named `<prefix>/<relative path>` with `/` separators; files
/// being uploaded (`originals/.incoming`) are left out.
fn walk(folder: &Path, prefix: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    if !folder.is_dir() {
        return Ok(found);
    }
    let mut pending = vec![(folder.to_path_buf(), prefix.to_string())];
    while let Some((dir, name)) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name == ".incoming" {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((path, format!("{name}/{file_name}")));
            } else if kind.is_file() {
                found.push((format!("{name}/{file_name}"), path));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn model_names(models: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Restores `archive` into the data directory `root`. Every file is checked against the
/// manifest in a staging folder first; nothing in `root` changes unless all of them match.
/// An existing data directory with data is replaced only with `force`, and is moved aside
/// (`<root>.before-restore-<time>`), never deleted.
pub fn restore(archive: &Path, root: &Path, force: bool) -> anyhow::Result<Manifest> {
    if let Some(holder) = crate::data_dir::in_use(root)? {
        bail!(
            "data directory {} is in use by {holder}: stop that server before restoring into it",
            root.display()
        );
    }
    let occupied = root.is_dir() && std::fs::read_dir(root)?.next().is_some();
    if occupied && !force {
        bail!(
            "data directory {} already holds data; restore into an empty directory, or pass \
             --force to move the current one aside and replace it",
            root.display()
        );
    }
    let parent = root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(parent)
        .context("cannot create a staging folder beside the data directory")?;
    let manifest = unpack_checked(archive, staging.path()).map_err(|e| {
        anyhow!(
            "the archive {} is damaged or not a backup: {e:#}",
            archive.display()
        )
    })?;
    for name in ["index", "models", "exports"] {
        std::fs::create_dir_all(staging.path().join(name))?;
    }
    crate::data_dir::tighten_permissions(staging.path());
    if occupied {
        let aside = PathBuf::from(format!(
            "{}.before-restore-{}",
            root.display(),
            Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::rename(root, &aside)
            .with_context(|| format!("cannot move {} aside", root.display()))?;
        eprintln!(
            "the previous data directory was moved to {}",
            aside.display()
        );
    } else if root.is_dir() {
        std::fs::remove_dir(root)?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, root)
        .with_context(|| format!("cannot move the restored data into {}", root.display()))?;
    Ok(manifest)
}

/// Unpacks every file the manifest lists into `into`, checking sizes and hashes; refuses
/// entries the manifest does not list and paths that would leave `into`.
fn unpack_checked(archive: &Path, into: &Path) -> anyhow::Result<Manifest> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file).context("not a ZIP archive")?;
    let manifest: Manifest = {
        let entry = zip.by_name(MANIFEST).context("it has no manifest.json")?;
        serde_json::from_reader(entry).context("its manifest.json cannot be read")?
    };
    if manifest.format != FORMAT {
        bail!(
            "it is in format {}, this build reads format {FORMAT}",
            manifest.format
        );
    }
    if !manifest.files.iter().any(|f| f.path == DATABASE) {
        bail!("it holds no database");
    }
    for i in 0..zip.len() {
        let name = zip.by_index(i)?.name()?.to_string();
        if name != MANIFEST && !manifest.files.iter().any(|f| f.path == name) {
            bail!("{name} is not in the manifest");
        }
    }
    for listed in &manifest.files {
        let relative = safe_relative(&listed.path)?;
        let target = into.join(&relative);
        std::fs::create_dir_all(target.parent().expect("a file has a folder"))?;
        let mut entry = zip
            .by_name(&listed.path)
            .with_context(|| format!("{} is missing", listed.path))?;
        let mut out = File::create(&target)?;
        let (bytes, sha256) = copy_hashing(&mut entry, &mut out)
            .with_context(|| format!("{} cannot be read", listed.path))?;
        if bytes != listed.bytes || sha256 != listed.sha256 {
            bail!("{} does not match its hash in the manifest", listed.path);
        }
        out.sync_all()?;
    }
    crate::db::backup::check_file(&into.join(DATABASE)).context("its database")?;
    Ok(manifest)
}

/// A manifest path as a relative path that stays inside the data directory.
fn safe_relative(path: &str) -> anyhow::Result<PathBuf> {
    let relative = PathBuf::from(path);
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain || path.is_empty() {
        bail!("{path:?} is not a plain relative path");
    }
    Ok(relative)
}

/// Scheduled backups (`serve --backup-dir`): one archive every `every` into `dir`, named by
/// time, keeping the newest `keep`.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub dir: PathBuf,
    pub every: Duration,
    pub keep: usize,
}

impl Schedule {
    /// Runs until `shutdown`; the first backup is taken one period after start.
    pub async fn run(self, root: PathBuf, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            let (schedule, root) = (self.clone(), root.clone());
            let outcome = tokio::task::spawn_blocking(move || schedule.take(&root)).await;
            match outcome {
                Ok(Ok(path)) => tracing::info!(archive = %path.display(), "backup written"),
                Ok(Err(error)) => tracing::error!(error = %format!("{error:#}"), "backup failed"),
                Err(error) => tracing::error!(%error, "backup failed"),
            }
        }
    }

    /// Takes one backup now, then removes the oldest beyond `keep`.
    pub fn take(&self, root: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let name = format!("companero-{}.zip", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
        let path = self.dir.join(name);
        backup(root, &path)?;
        let mut archives: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("companero-") && n.ends_with(".zip"))
            })
            .collect();
        archives.sort();
        let excess = archives.len().saturating_sub(self.keep.max(1));
        for old in &archives[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_data_directory_are_refused() {
        assert!(safe_relative("originals/t/doc").is_ok());
        assert!(safe_relative("../etc/passwd").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
    }

    #[test]
    fn the_schedule_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("keys")).unwrap();
        std::fs::write(root.join("keys/k"), b"key").unwrap();
        crate::db::connect(&crate::data_dir::database_path(&root))
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let schedule = Schedule {
            dir: tmp.path().join("backups"),
            every: Duration::from_secs(1),
            keep: 2,
        };
        let taken: Vec<_> = (0..3).map(|_| schedule.take(&root).unwrap()).collect();
        let left: Vec<_> = std::fs::read_dir(&schedule.dir)
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(left.len(), 2);
        assert!(!taken[0].exists() && taken[2].exists());
    }
}
