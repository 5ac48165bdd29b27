//! The model catalog: named models with where to get them (`models/catalog.toml`, compiled in).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

const CATALOG: &str = include_str!("../../models/catalog.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedder,
    /// A cross-encoder that reorders retrieval's best candidates (optional).
    Reranker,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedder => "embedder",
            ModelKind::Reranker => "reranker",
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    pub kind: ModelKind,
    #[serde(default)]
    pub default: bool,
    pub description: String,
    /// Hugging Face repository the files come from.
    pub repo: Option<String>,
    /// PyPI package that carries the files instead (the test models).
    pub pypi: Option<String>,
    pub files: Vec<String>,
    #[serde(default)]
    pub optional: Vec<String>,
    pub architecture: String,
    pub size_mb: u64,
    pub license: String,
    /// Verified hashes, by file name.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Catalog {
    models: Vec<CatalogEntry>,
}

pub fn entries() -> &'static [CatalogEntry] {
    static ENTRIES: OnceLock<Vec<CatalogEntry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        toml::from_str::<Catalog>(CATALOG)
            .expect("models/catalog.toml is valid (checked by a test)")
            .models
    })
}

pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    entries().iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

/// The model used when none is configured (a reranker runs only when asked for: it falls back
/// to the first in the catalog for hints).
pub fn default_for(kind: ModelKind) -> &'static CatalogEntry {
    let of_kind = || entries().iter().filter(move |e| e.kind == kind);
    of_kind()
        .find(|e| e.default)
        .or_else(|| of_kind().next())
        .expect("the catalog has a model of each kind (checked by a test)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_parses_and_has_one_default_per_kind() {
        assert!(entries().iter().any(|e| e.kind == ModelKind::Reranker));
        for kind in [ModelKind::Chat, ModelKind::Embedder] {
            let defaults: Vec<_> = entries()
                .iter()
                .filter(|e| e.kind == kind && e.default)
                .collect();
            assert_eq!(defaults.len(), 1, "{kind}");
        }
        for entry in entries() {
            assert!(
                entry.repo.is_some() != entry.pypi.is_some(),
                "{}: one source",
                entry.name
            );
            for (file, hash) in &entry.sha256 {
                assert!(
                    entry.files.contains(file),
                    "{}: hash for unknown {file}",
                    entry.name
                );
                assert_eq!(hash.len(), 64, "{}", entry.name);
            }
            if entry.kind == ModelKind::Chat {
                assert!(
                    entry.files.iter().any(|f| f.ends_with(".gguf")),
                    "{}",
                    entry.name
                );
            }
        }
        assert!(find("QWEN2.5-1.5B-INSTRUCT").is_some());
    }
}
