//! Vector search: one usearch HNSW index per tenant and embedder, persisted under `index/`.
//!
//! The index is a cache of `chunk_vectors` in SQLite. Before an index is first used it is
//! checked against SQLite (same size, every key present) and rebuilt from SQLite when it is
//! missing or differs, so a crash between a SQLite write and an index save cannot make search
//! point at deleted text. Search results are also joined back to SQLite by the caller.
//!
//! Per-tenant indexes rather than one filtered index: isolation holds by construction (a
//! tenant's search never visits another tenant's vectors), small tenants get exact-quality
//! graphs, and `companero bench index` measured the memory of 1,000 small tenants as acceptable
//! (see docs/architecture.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::auth::TenantScope;

/// How vectors are stored in the index. f16 halves memory with no measurable recall loss on
/// our retrieval set; exact f32 vectors stay in SQLite.
pub const QUANTIZATION: ScalarKind = ScalarKind::F16;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector index: {0}")]
    Usearch(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("vector index file: {0}")]
    Io(#[from] std::io::Error),
}

impl From<cxx::Exception> for IndexError {
    fn from(e: cxx::Exception) -> IndexError {
        IndexError::Usearch(e.what().to_string())
    }
}

/// An open index, shared by the searches and writes of its tenant.
type SharedIndex = Arc<Mutex<Index>>;

/// All tenants' indexes, opened on first use, by (tenant id, embedder key).
#[derive(Clone)]
pub struct VectorIndexes {
    dir: PathBuf,
    open: Arc<Mutex<HashMap<(String, String), SharedIndex>>>,
    /// When each index was last written, and whether it has changed since. Writing a large
    /// index after every batch would make ingestion quadratic; a stale file is safe (it is
    /// checked against SQLite when loaded) and only costs a rebuild.
    saves: Arc<Mutex<HashMap<(String, String), SaveState>>>,
}

#[derive(Debug, Clone, Copy)]
struct SaveState {
    at: std::time::Instant,
    dirty: bool,
}

/// An index with unsaved additions is written at most this often while it keeps changing.
const SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Creates an empty index with our settings.
pub fn new_index(dimensions: usize, quantization: ScalarKind) -> Result<Index, IndexError> {
    let options = IndexOptions {
        dimensions,
        metric: MetricKind::Cos,
        quantization,
        connectivity: 16,
        expansion_add: 128,
        expansion_search: 64,
        multi: false,
    };
    Ok(Index::new(&options)?)
}

/// Adds vectors, growing capacity geometrically (usearch needs room reserved before adds).
pub fn add_all(index: &Index, items: &[(i64, Vec<f32>)]) -> Result<(), IndexError> {
    let needed = index.size() + items.len();
    if needed > index.capacity() {
        index.reserve(needed.max(index.capacity() * 2).max(64))?;
    }
    for (key, vector) in items {
        if index.contains(*key as u64) {
            index.remove(*key as u64)?;
        }
        index.add(*key as u64, vector)?;
    }
    Ok(())
}

impl VectorIndexes {
    pub fn new(dir: PathBuf) -> VectorIndexes {
        VectorIndexes {
            dir,
            open: Arc::default(),
            saves: Arc::default(),
        }
    }

    fn path(&self, tenant: &str, embedder: &str) -> PathBuf {
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        self.dir
            .join(safe(tenant))
            .join(format!("{}.usearch", safe(embedder)))
    }

    /// The tenant's index for `embedder`, loaded and checked against SQLite on first use.
    /// Blocking: call from a blocking thread.
    fn get(
        &self,
        c: &Connection,
        tenant: &str,
        embedder: &str,
        dimensions: usize,
    ) -> Result<SharedIndex, IndexError> {
        let key = (tenant.to_string(), embedder.to_string());
        if let Some(index) = self.open.lock().expect("indexes").get(&key) {
            return Ok(Arc::clone(index));
        }
        let index = Arc::new(Mutex::new(
            self.load_or_rebuild(c, tenant, embedder, dimensions)?,
        ));
        let mut open = self.open.lock().expect("indexes");
        Ok(Arc::clone(open.entry(key).or_insert(index)))
    }

    fn load_or_rebuild(
        &self,
        c: &Connection,
        tenant: &str,
        embedder: &str,
        dimensions: usize,
    ) -> Result<Index, IndexError> {
        let path = self.path(tenant, embedder);
        let mut statement = c.prepare_cached(
            "SELECT chunk_id FROM chunk_vectors WHERE tenant_id = ?1 AND embedder = ?2",
        )?;
        let expected: Vec<i64> = statement
            .query_map(params![tenant, embedder], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if path.exists() {
            let index = new_index(dimensions, QUANTIZATION)?;
            let loaded = index.load(&path.to_string_lossy()).is_ok()
                && index.dimensions() == dimensions
                && index.size() == expected.len()
                && expected.iter().all(|&id| index.contains(id as u64));
            if loaded {
                return Ok(index);
            }
            tracing::warn!(path = %path.display(), "vector index differs from the database; rebuilding it");
        }
        let index = new_index(dimensions, QUANTIZATION)?;
        index.reserve(expected.len().max(64))?;
        let mut statement = c.prepare_cached(
            "SELECT chunk_id, vector FROM chunk_vectors WHERE tenant_id = ?1 AND embedder = ?2",
        )?;
        let mut rows = statement.query(params![tenant, embedder])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let blob: Vec<u8> = row.get(1)?;
            index.add(id as u64, &vector_from_blob(&blob))?;
        }
        if !expected.is_empty() {
            save(&index, &path)?;
        }
        Ok(index)
    }

    /// Adds vectors already committed to SQLite. The file is written when the last write is
    /// older than [`SAVE_INTERVAL`], and by [`VectorIndexes::flush`].
    pub fn add(
        &self,
        c: &Connection,
        scope: &TenantScope,
        embedder: &str,
        dimensions: usize,
        items: &[(i64, Vec<f32>)],
    ) -> Result<(), IndexError> {
        let tenant = scope.tenant_id();
        let shared = self.get(c, tenant, embedder, dimensions)?;
        let index = shared.lock().expect("index");
        add_all(&index, items)?;
        let key = (tenant.to_string(), embedder.to_string());
        let due = {
            let mut saves = self.saves.lock().expect("saves");
            let state = saves.entry(key.clone()).or_insert(SaveState {
                at: std::time::Instant::now() - SAVE_INTERVAL,
                dirty: false,
            });
            state.dirty = true;
            state.at.elapsed() >= SAVE_INTERVAL
        };
        if due {
            self.save_index(&key, &index)?;
        }
        Ok(())
    }

    /// Writes the tenant's index for `embedder` if it has unsaved changes.
    pub fn flush(&self, scope: &TenantScope, embedder: &str) -> Result<(), IndexError> {
        let key = (scope.tenant_id().to_string(), embedder.to_string());
        let dirty = self
            .saves
            .lock()
            .expect("saves")
            .get(&key)
            .is_some_and(|s| s.dirty);
        let shared = self.open.lock().expect("indexes").get(&key).cloned();
        if let (true, Some(shared)) = (dirty, shared) {
            let index = shared.lock().expect("index");
            self.save_index(&key, &index)?;
        }
        Ok(())
    }

    fn save_index(&self, key: &(String, String), index: &Index) -> Result<(), IndexError> {
        save(index, &self.path(&key.0, &key.1))?;
        self.saves.lock().expect("saves").insert(
            key.clone(),
            SaveState {
                at: std::time::Instant::now(),
                dirty: false,
            },
        );
        Ok(())
    }

    /// Removes chunks (already deleted from SQLite) from every open index of the tenant and
    /// drops the files of indexes not open, which are then rebuilt on next use.
    pub fn remove(&self, scope: &TenantScope, ids: &[i64]) -> Result<(), IndexError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tenant = scope.tenant_id();
        let open: Vec<(String, SharedIndex)> = self
            .open
            .lock()
            .expect("indexes")
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, e), index)| (e.clone(), Arc::clone(index)))
            .collect();
        for (embedder, index) in open {
            let index = index.lock().expect("index");
            for &id in ids {
                index.remove(id as u64)?;
            }
            self.save_index(&(tenant.to_string(), embedder), &index)?;
        }
        Ok(())
    }

    /// The `limit` nearest chunks to `query`, as (chunk id, cosine similarity).
    pub fn search(
        &self,
        c: &Connection,
        scope: &TenantScope,
        embedder: &str,
        query: &[f32],
        limit: usize,
    ) -> Result<Vec<(i64, f32)>, IndexError> {
        let index = self.get(c, scope.tenant_id(), embedder, query.len())?;
        let index = index.lock().expect("index");
        if index.size() == 0 {
            return Ok(Vec::new());
        }
        let matches = index.search(query, limit)?;
        Ok(matches
            .keys
            .iter()
            .zip(&matches.distances)
            .map(|(&key, &distance)| (key as i64, 1.0 - distance))
            .collect())
    }

    /// Memory held by the open indexes, as usearch accounts it.
    pub fn memory_bytes(&self) -> usize {
        self.open
            .lock()
            .expect("indexes")
            .values()
            .map(|index| index.lock().expect("index").memory_usage())
            .sum()
    }

    /// Forgets every index of a deleted tenant, and their files.
    pub fn drop_tenant(&self, tenant: &str) -> Result<(), IndexError> {
        self.open
            .lock()
            .expect("indexes")
            .retain(|(t, _), _| t != tenant);
        if let Some(dir) = self.path(tenant, "any").parent()
            && dir.exists()
        {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// Forgets a tenant's indexes for other embedders (after re-embedding) and their files.
    pub fn drop_others(&self, tenant: &str, keep_embedder: &str) -> Result<(), IndexError> {
        self.open
            .lock()
            .expect("indexes")
            .retain(|(t, e), _| t != tenant || e == keep_embedder);
        let keep = self.path(tenant, keep_embedder);
        if let Some(dir) = keep.parent()
            && dir.exists()
        {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path != keep {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }
}

/// Writes the index beside its final path and renames it into place, so a crash mid-save
/// leaves the previous file (which the start-up check then repairs if needed).
fn save(index: &Index, path: &Path) -> Result<(), IndexError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("usearch.tmp");
    index.save(&temporary.to_string_lossy())?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

pub fn vector_to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn vector_from_blob(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_vectors_come_first() {
        let index = new_index(3, QUANTIZATION).unwrap();
        add_all(
            &index,
            &[
                (1, vec![1.0, 0.0, 0.0]),
                (2, vec![0.0, 1.0, 0.0]),
                (3, vec![0.7, 0.7, 0.0]),
            ],
        )
        .unwrap();
        let matches = index.search(&[1.0f32, 0.1, 0.0], 2).unwrap();
        assert_eq!(matches.keys, vec![1, 3]);
        assert_eq!(
            vector_from_blob(&vector_to_blob(&[1.5, -2.0])),
            vec![1.5, -2.0]
        );
    }
}
