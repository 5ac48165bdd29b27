//! The documents table and its chunks: every function takes the tenant's scope.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::KnowledgeError;
use super::chunk::Chunk;
use super::jobs;
use super::sniff::DocumentKind;
use crate::auth::TenantScope;

/// A document as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub title: String,
    pub filename: String,
    pub kind: DocumentKind,
    pub size_bytes: i64,
    pub sha256: String,
    pub collection: Option<String>,
    pub tags: Vec<String>,
    /// `queued`, `processing`, `ready` or `failed`.
    pub status: String,
    /// 0 to 1 while processing; 1 when ready.
    pub progress: f64,
    /// Why it failed, for people.
    pub error: Option<String>,
    pub page_count: Option<i64>,
    pub chunk_count: i64,
    pub created_at: String,
    pub updated_at: String,
    pub ingested_at: Option<String>,
}

const COLUMNS: &str = "id, title, filename, kind, size_bytes, sha256, collection, tags, status, \
     progress, error, page_count, chunk_count, created_at, updated_at, ingested_at";

fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<DocumentView> {
    let kind: String = r.get(3)?;
    let tags: String = r.get(7)?;
    Ok(DocumentView {
        id: r.get(0)?,
        title: r.get(1)?,
        filename: r.get(2)?,
        kind: DocumentKind::parse(&kind).unwrap_or(DocumentKind::Text),
        size_bytes: r.get(4)?,
        sha256: r.get(5)?,
        collection: r.get(6)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        status: r.get(8)?,
        progress: r.get(9)?,
        error: r.get(10)?,
        page_count: r.get(11)?,
        chunk_count: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
        ingested_at: r.get(15)?,
    })
}

/// What an upload records before ingestion starts.
pub struct NewDocument {
    pub id: String,
    pub title: String,
    pub filename: String,
    pub kind: DocumentKind,
    pub size_bytes: u64,
    pub sha256: String,
    pub collection: Option<String>,
    pub tags: Vec<String>,
}

/// Records the document and queues its ingestion, in one transaction, if it fits the tenant's
/// storage quota (`default_quota_bytes` unless the owner set the tenant's own).
pub fn create(
    c: &mut Connection,
    scope: &TenantScope,
    new: &NewDocument,
    default_quota_bytes: Option<u64>,
) -> Result<DocumentView, KnowledgeError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    super::quota::of(&*tx, scope, default_quota_bytes)?.admit(new.size_bytes)?;
    tx.execute(
        "INSERT INTO documents (id, tenant_id, title, filename, kind, size_bytes, sha256, \
         collection, tags, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued')",
        params![
            new.id,
            scope.tenant_id(),
            new.title,
            new.filename,
            new.kind.as_str(),
            new.size_bytes as i64,
            new.sha256,
            new.collection,
            serde_json::to_string(&new.tags).expect("tags serialise"),
        ],
    )?;
    jobs::enqueue(&tx, Some(scope.tenant_id()), jobs::INGEST, &new.id)?;
    let document = get(&tx, scope, &new.id)?;
    tx.commit()?;
    Ok(document)
}

pub fn get(c: &Connection, scope: &TenantScope, id: &str) -> Result<DocumentView, KnowledgeError> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM documents WHERE tenant_id = ?1 AND id = ?2"),
        params![scope.tenant_id(), id],
        view,
    )
    .optional()?
    .ok_or(KnowledgeError::NotFound)
}

/// Filters and paging for the document list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Page size, 1 to 100 [default: 50].
    pub limit: Option<u32>,
    /// Documents to skip [default: 0].
    pub offset: Option<u32>,
    pub collection: Option<String>,
    pub tag: Option<String>,
    /// `queued`, `processing`, `ready` or `failed`.
    pub status: Option<String>,
    /// Words in the title or file name.
    pub q: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentPage {
    pub documents: Vec<DocumentView>,
    /// Documents matching the filters, over all pages.
    pub total: i64,
    pub limit: u32,
    pub offset: u32,
}

pub fn list(
    c: &Connection,
    scope: &TenantScope,
    query: &ListQuery,
) -> Result<DocumentPage, KnowledgeError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 100);
    let offset = query.offset.unwrap_or(0);
    let filter = "tenant_id = ?1 \
        AND (?2 IS NULL OR collection = ?2) \
        AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(documents.tags) WHERE value = ?3)) \
        AND (?4 IS NULL OR status = ?4) \
        AND (?5 IS NULL OR title LIKE '%' || ?5 || '%' OR filename LIKE '%' || ?5 || '%')";
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let args = params![
        scope.tenant_id(),
        query.collection,
        query.tag,
        query.status,
        q
    ];
    let total = c.query_row(
        &format!("SELECT count(*) FROM documents WHERE {filter}"),
        args,
        |r| r.get(0),
    )?;
    let mut statement = c.prepare(&format!(
        "SELECT {COLUMNS} FROM documents WHERE {filter} \
         ORDER BY created_at DESC, id LIMIT {limit} OFFSET {offset}"
    ))?;
    let documents = statement
        .query_map(args, view)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DocumentPage {
        documents,
        total,
        limit,
        offset,
    })
}

/// A change to a document's name or organisation. Absent fields stay as they are;
/// `"collection": null` takes it out of its collection.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct DocumentUpdate {
    pub title: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub collection: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

/// Distinguishes an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

pub fn update(
    c: &Connection,
    scope: &TenantScope,
    id: &str,
    change: &DocumentUpdate,
) -> Result<DocumentView, KnowledgeError> {
    let current = get(c, scope, id)?;
    let title = match &change.title {
        Some(title) => clean_title(title)?,
        None => current.title,
    };
    let collection = match &change.collection {
        Some(collection) => clean_collection(collection.as_deref())?,
        None => current.collection,
    };
    let tags = match &change.tags {
        Some(tags) => clean_tags(tags)?,
        None => current.tags,
    };
    c.execute(
        "UPDATE documents SET title = ?3, collection = ?4, tags = ?5, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        params![
            scope.tenant_id(),
            id,
            title,
            collection,
            serde_json::to_string(&tags).expect("tags serialise")
        ],
    )?;
    get(c, scope, id)
}

/// Deletes the document, its chunks and their vectors; returns the chunk ids for the index.
pub fn delete(
    c: &mut Connection,
    scope: &TenantScope,
    id: &str,
) -> Result<Vec<i64>, KnowledgeError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    get(&tx, scope, id)?;
    let ids = chunk_ids(&tx, id)?;
    tx.execute(
        "DELETE FROM jobs WHERE tenant_id = ?1 AND subject_id = ?2 AND status IN ('queued', 'done', 'failed')",
        params![scope.tenant_id(), id],
    )?;
    tx.execute(
        "DELETE FROM documents WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), id],
    )?;
    tx.commit()?;
    Ok(ids)
}

/// Queues the document for ingestion again (after a failure, or with new chunk settings).
pub fn reingest(
    c: &mut Connection,
    scope: &TenantScope,
    id: &str,
) -> Result<DocumentView, KnowledgeError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = get(&tx, scope, id)?;
    if current.status == "queued" || current.status == "processing" {
        return Err(KnowledgeError::Conflict(
            "the document is already being processed".into(),
        ));
    }
    tx.execute(
        "UPDATE documents SET status = 'queued', progress = 0, error = NULL, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), id],
    )?;
    jobs::enqueue(&tx, Some(scope.tenant_id()), jobs::INGEST, id)?;
    let document = get(&tx, scope, id)?;
    tx.commit()?;
    Ok(document)
}

/// A collection and how many documents it holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CollectionView {
    pub name: String,
    pub documents: i64,
}

pub fn collections(
    c: &Connection,
    scope: &TenantScope,
) -> Result<Vec<CollectionView>, KnowledgeError> {
    let mut statement = c.prepare(
        "SELECT collection, count(*) FROM documents WHERE tenant_id = ?1 AND collection IS NOT NULL \
         GROUP BY collection ORDER BY collection",
    )?;
    let rows = statement
        .query_map(params![scope.tenant_id()], |r| {
            Ok(CollectionView {
                name: r.get(0)?,
                documents: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

// ---- used by ingestion ----

pub(crate) fn chunk_ids(c: &Connection, document_id: &str) -> rusqlite::Result<Vec<i64>> {
    let mut statement = c.prepare_cached("SELECT id FROM chunks WHERE document_id = ?1")?;
    statement
        .query_map(params![document_id], |r| r.get(0))?
        .collect()
}

pub(crate) fn set_progress(
    c: &Connection,
    scope: &TenantScope,
    id: &str,
    status: &str,
    progress: f64,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE documents SET status = ?3, progress = ?4, error = NULL, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), id, status, progress],
    )?;
    Ok(())
}

pub(crate) fn set_failed(
    c: &Connection,
    scope: &TenantScope,
    id: &str,
    message: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE documents SET status = 'failed', progress = 0, error = ?3, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), id, message],
    )?;
    Ok(())
}

pub(crate) fn set_ready(c: &Connection, scope: &TenantScope, id: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE documents SET status = 'ready', progress = 1, error = NULL, \
         chunk_count = (SELECT count(*) FROM chunks WHERE document_id = ?2), \
         ingested_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), id],
    )?;
    Ok(())
}

/// Chunks written per transaction: a large document must not hold SQLite's single writer for
/// seconds, which every other tenant's writes would wait behind.
const CHUNKS_PER_TRANSACTION: usize = 256;

/// Replaces the document's chunks (and so their vectors); returns the new ids in order and
/// the old ids (for the index). The document is `processing` meanwhile, and search reads only
/// ready documents, so nobody sees it half written; an interrupted run is redone from the
/// start (the old chunks are deleted first).
pub(crate) fn replace_chunks(
    c: &mut Connection,
    scope: &TenantScope,
    document_id: &str,
    chunks: &[Chunk],
    pages: Option<u32>,
    found_title: Option<&str>,
) -> rusqlite::Result<(Vec<i64>, Vec<i64>)> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let old = chunk_ids(&tx, document_id)?;
    tx.execute(
        "DELETE FROM chunks WHERE tenant_id = ?1 AND document_id = ?2",
        params![scope.tenant_id(), document_id],
    )?;
    tx.commit()?;
    let mut ids = Vec::with_capacity(chunks.len());
    for (batch, part) in chunks.chunks(CHUNKS_PER_TRANSACTION).enumerate() {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO chunks (tenant_id, document_id, ordinal, text, heading_path, page, \
                 char_start, char_end, token_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (offset, chunk) in part.iter().enumerate() {
                insert.execute(params![
                    scope.tenant_id(),
                    document_id,
                    (batch * CHUNKS_PER_TRANSACTION + offset) as i64,
                    chunk.text,
                    chunk.heading_path,
                    chunk.page,
                    chunk.char_start as i64,
                    chunk.char_end as i64,
                    chunk.token_count as i64,
                ])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
    }
    // A title found inside the document replaces one made from the file name, never one the
    // creator typed.
    c.execute(
        "UPDATE documents SET page_count = ?3, \
         title = CASE WHEN ?4 IS NOT NULL AND title = filename THEN ?4 ELSE title END \
         WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), document_id, pages, found_title],
    )?;
    Ok((ids, old))
}

pub(crate) fn store_vectors(
    c: &mut Connection,
    scope: &TenantScope,
    embedder: &str,
    items: &[(i64, Vec<f32>)],
) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO chunk_vectors (chunk_id, embedder, tenant_id, vector) \
             SELECT id, ?2, tenant_id, ?3 FROM chunks WHERE id = ?1 AND tenant_id = ?4",
        )?;
        for (id, vector) in items {
            insert.execute(params![
                id,
                embedder,
                super::index::vector_to_blob(vector),
                scope.tenant_id()
            ])?;
        }
    }
    tx.commit()
}

// ---- input checks ----

pub fn clean_title(title: &str) -> Result<String, KnowledgeError> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > 300 {
        return Err(KnowledgeError::Invalid(
            "a title needs 1 to 300 characters".into(),
        ));
    }
    Ok(title.to_string())
}

pub fn clean_collection(collection: Option<&str>) -> Result<Option<String>, KnowledgeError> {
    match collection.map(str::trim) {
        None | Some("") => Ok(None),
        Some(name) if name.chars().count() > 100 => Err(KnowledgeError::Invalid(
            "a collection name has at most 100 characters".into(),
        )),
        Some(name) => Ok(Some(name.to_string())),
    }
}

pub fn clean_tags(tags: &[String]) -> Result<Vec<String>, KnowledgeError> {
    let mut clean: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.trim();
        if tag.is_empty() {
            continue;
        }
        if tag.chars().count() > 50 {
            return Err(KnowledgeError::Invalid(
                "a tag has at most 50 characters".into(),
            ));
        }
        if !clean.iter().any(|t| t == tag) {
            clean.push(tag.to_string());
        }
    }
    if clean.len() > 30 {
        return Err(KnowledgeError::Invalid(
            "a document has at most 30 tags".into(),
        ));
    }
    Ok(clean)
}
