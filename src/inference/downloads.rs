//! Catalog models pulled from the dashboard: the list (catalog, installed, downloading) and
//! downloads in the background with their progress, for the instance owner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::catalog::{self, ModelKind};
use super::store::{HubOptions, ModelStore, PullProgress, StoreError};

/// A download's progress, in bytes of the files fetched so far.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Download {
    /// `downloading`, `installed` or `failed`.
    pub state: String,
    pub file: Option<String>,
    pub done_bytes: u64,
    /// The catalog's size estimate.
    pub total_bytes: u64,
    pub error: Option<String>,
}

/// A catalog model as the owner's screen shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelListing {
    pub name: String,
    /// `chat` or `embedder`.
    #[schema(value_type = String)]
    pub kind: ModelKind,
    pub description: String,
    pub size_mb: u64,
    pub license: String,
    pub installed: bool,
    /// Whether `serve` uses it by default for its kind.
    pub default: bool,
    /// Set while or after it was pulled from the dashboard.
    pub download: Option<Download>,
}

#[derive(Clone)]
pub struct Downloads {
    store: Arc<ModelStore>,
    hub: HubOptions,
    state: Arc<Mutex<HashMap<String, Download>>>,
}

impl Downloads {
    pub fn new(store: ModelStore, hub: HubOptions) -> Downloads {
        Downloads {
            store: Arc::new(store),
            hub,
            state: Arc::default(),
        }
    }

    pub fn list(&self) -> Vec<ModelListing> {
        let installed: Vec<String> = self
            .store
            .list()
            .into_iter()
            .map(|m| m.manifest.name)
            .collect();
        let downloads = self.state.lock().expect("downloads").clone();
        catalog::entries()
            .iter()
            .map(|entry| ModelListing {
                name: entry.name.clone(),
                kind: entry.kind,
                description: entry.description.clone(),
                size_mb: entry.size_mb,
                license: entry.license.clone(),
                installed: installed.contains(&entry.name),
                default: entry.default,
                download: downloads.get(&entry.name).cloned(),
            })
            .collect()
    }

    /// Starts pulling a catalog model in the background; its progress shows in [`Self::list`].
    pub fn pull(&self, name: &str) -> Result<(), StoreError> {
        let entry = catalog::find(name)
            .ok_or_else(|| StoreError::Invalid(format!("{name} is not in the catalog")))?;
        if self.store.get(name).is_some() {
            return Err(StoreError::AlreadyInstalled(name.to_string()));
        }
        {
            let mut state = self.state.lock().expect("downloads");
            if state.get(name).is_some_and(|d| d.state == "downloading") {
                return Err(StoreError::Invalid(format!(
                    "{name} is already downloading"
                )));
            }
            state.insert(
                name.to_string(),
                Download {
                    state: "downloading".into(),
                    file: None,
                    done_bytes: 0,
                    total_bytes: entry.size_mb * 1_000_000,
                    error: None,
                },
            );
        }
        let downloads = self.clone();
        let progress = Progress {
            name: name.to_string(),
            state: Arc::clone(&self.state),
        };
        tokio::spawn(async move {
            let result = downloads.store.pull(entry, &downloads.hub, progress).await;
            let mut state = downloads.state.lock().expect("downloads");
            if let Some(download) = state.get_mut(&entry.name) {
                match result {
                    Ok(_) => {
                        download.state = "installed".into();
                        download.done_bytes = download.done_bytes.max(download.total_bytes);
                    }
                    Err(error) => {
                        tracing::warn!(model = %entry.name, %error, "pull failed");
                        download.state = "failed".into();
                        download.error = Some(error.to_string());
                    }
                }
            }
        });
        Ok(())
    }
}

#[derive(Clone)]
struct Progress {
    name: String,
    state: Arc<Mutex<HashMap<String, Download>>>,
}

impl Progress {
    fn update(&self, change: impl FnOnce(&mut Download)) {
        if let Some(download) = self.state.lock().expect("downloads").get_mut(&self.name) {
            change(download);
        }
    }
}

impl PullProgress for Progress {
    fn started(&self, file: &str, _bytes: u64) {
        self.update(|d| d.file = Some(file.to_string()));
    }

    fn advanced(&self, bytes: u64) {
        self.update(|d| d.done_bytes += bytes);
    }

    fn finished_file(&self) {}
}
