//! Hybrid retrieval: BM25 (SQLite FTS5) and vector similarity (usearch), fused by a weighted
//! sum in which dense similarity leads and lexical evidence adjusts.
//!
//! Why not reciprocal rank fusion: on our evaluation set (scripts/eval-retrieval) RRF let a weak
//! lexical ranking drag a strong dense one down. Here every candidate from either list is scored
//! by both methods (its exact cosine comes from the vector stored in SQLite), so fusion compares
//! scores, not ranks, and a passage found only lexically still gets its true dense score.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};

use super::index::{VectorIndexes, vector_from_blob};
use super::{Knowledge, KnowledgeError};
use crate::auth::TenantScope;
use crate::inference::embed::{EmbedKind, cosine};

/// Candidates taken from each method before fusion.
fn candidate_depth() -> usize { std::env::var("RESEARCH_K").ok().and_then(|v| v.parse().ok()).unwrap_or(50) }

// RESEARCH ONLY (not to be committed): every candidate's scores, for offline fusion sweeps.
fn research_dump(c: &Connection, query: &str, candidates: &HashMap<i64, Scores>) {
    let Ok(path) = std::env::var("RESEARCH_DUMP") else { return };
    let mut rows = Vec::new();
    for (id, s) in candidates {
        let heading: String = c.query_row("SELECT heading_path FROM chunks WHERE id = ?1", [id], |r| r.get(0)).unwrap_or_default();
        let len: i64 = c.query_row("SELECT length(text) FROM chunks WHERE id = ?1", [id], |r| r.get(0)).unwrap_or_default();
        rows.push(serde_json::json!({"id": id, "dense": s.dense, "lexical": s.lexical, "heading": heading, "len": len}));
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    writeln!(f, "{}", serde_json::json!({"query": query, "candidates": rows})).unwrap();
}
/// Weight of the normalised BM25 score against the cosine similarity (chosen on the
/// evaluation set; see docs/architecture.md).
pub const DEFAULT_LEXICAL_WEIGHT: f32 = 0.15;

/// How the two rankings are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    /// Weight of BM25 (normalised to the best candidate) against cosine similarity.
    pub lexical_weight: f32,
    /// Results below this fused score are dropped (lexical mode has no absolute scale: it
    /// keeps every match).
    pub min_score: f32,
}

/// How a configured cross-encoder reorders hybrid search's best candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RerankSettings {
    /// Candidates reordered per search (fewer when the budget holds fewer).
    pub candidates: usize,
    /// Longest a search waits for the reranker before it keeps the retrieval order.
    pub budget: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// BM25 and vectors combined, then reordered by the reranker when one runs [default].
    #[default]
    Hybrid,
    /// Vectors only.
    Vector,
    /// BM25 only.
    Lexical,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SearchRequest {
    pub query: String,
    /// Results to return, 1 to 50 [default: 10].
    pub limit: Option<usize>,
    #[serde(default)]
    pub mode: SearchMode,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// Retrieval relevance in [0, 1]; higher is better.
    pub score: f32,
    /// The reranker's relevance logit, when it reordered this result (results it reordered come
    /// first, by this score).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank_score: Option<f32>,
    pub text: String,
    pub chunk_id: i64,
    pub document_id: String,
    pub document_title: String,
    pub filename: String,
    pub page: Option<i64>,
    pub heading_path: String,
    pub char_start: i64,
    pub char_end: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchHit>,
}

/// Scores of one candidate.
#[derive(Debug, Clone, Copy, Default)]
struct Scores {
    dense: Option<f32>,
    lexical: f32,
}

impl Knowledge {
    /// The passages of the tenant's ready documents that best answer `request.query`.
    pub async fn search(
        &self,
        scope: &TenantScope,
        request: SearchRequest,
    ) -> Result<SearchResults, KnowledgeError> {
        let query = request.query.trim().to_string();
        if query.is_empty() || query.chars().count() > 2000 {
            return Err(KnowledgeError::Invalid(
                "the query needs 1 to 2000 characters".into(),
            ));
        }
        let limit = request.limit.unwrap_or(10);
        if !(1..=50).contains(&limit) {
            return Err(KnowledgeError::Invalid("limit must be 1 to 50".into()));
        }
        let mode = request.mode;
        // Lexical search works without an embedder; hybrid degrades to it while one loads.
        let embedded = match mode {
            SearchMode::Lexical => None,
            SearchMode::Vector => Some(self.embed_query(scope, &query).await?),
            SearchMode::Hybrid => self.embed_query(scope, &query).await.ok(),
        };
        let reranker = (mode == SearchMode::Hybrid && embedded.is_some())
            .then(|| self.inner.inference.reranker())
            .flatten();
        let rerank = self.inner.settings.rerank;
        let fetch = match reranker {
            Some(_) => limit.max(rerank.candidates),
            None => limit,
        };
        let indexes = self.inner.indexes.clone();
        let fusion = self.inner.settings.fusion;
        let (scope_for_db, query_for_db) = (scope.clone(), query.clone());
        let mut results = self
            .inner
            .db
            .read(move |c| {
                search_blocking(
                    c,
                    &indexes,
                    &scope_for_db,
                    &query_for_db,
                    mode,
                    embedded.as_ref(),
                    fusion,
                    fetch,
                )
            })
            .await?;
        if let Some(reranker) = reranker {
            let head = results.len().min(rerank.candidates);
            let passages = results[..head].iter().map(|h| h.text.clone()).collect();
            match reranker
                .rerank(scope.tenant_id(), &query, passages, rerank.budget)
                .await
            {
                Ok(scores) => reorder(&mut results, &scores),
                Err(skipped) => {
                    tracing::debug!(?skipped, "search kept the retrieval order");
                    metrics::counter!("knowledge_rerank_skipped_total",
                        "reason" => format!("{skipped:?}").to_lowercase())
                    .increment(1);
                }
            }
        }
        results.truncate(limit);
        Ok(SearchResults { results })
    }

    async fn embed_query(
        &self,
        scope: &TenantScope,
        query: &str,
    ) -> Result<(String, Vec<f32>), KnowledgeError> {
        let engine = self.query_embedder(scope).await?;
        let mut vectors = engine
            .embed(scope.tenant_id(), vec![query.to_string()], EmbedKind::Query)
            .await?;
        Ok((engine.key(), vectors.pop().unwrap_or_default()))
    }
}

/// The search itself, given the query's embedding (`(embedder key, vector)`) when there is
/// one; blocking. `companero bench index` times this.
#[allow(clippy::too_many_arguments)]
pub fn search_blocking(
    c: &Connection,
    indexes: &VectorIndexes,
    scope: &TenantScope,
    query: &str,
    mode: SearchMode,
    embedded: Option<&(String, Vec<f32>)>,
    fusion: Fusion,
    limit: usize,
) -> Result<Vec<SearchHit>, KnowledgeError> {
    let candidates = candidates(c, indexes, scope, query, mode, embedded)?;
    research_dump(c, query, &candidates);
    let ranked = rank(candidates, mode, fusion, limit);
    Ok(hydrate(c, scope, &ranked)?)
}

fn candidates(
    c: &Connection,
    indexes: &VectorIndexes,
    scope: &TenantScope,
    query: &str,
    mode: SearchMode,
    embedded: Option<&(String, Vec<f32>)>,
) -> Result<HashMap<i64, Scores>, KnowledgeError> {
    let mut scores: HashMap<i64, Scores> = HashMap::new();
    if mode != SearchMode::Vector {
        for (id, score) in lexical(c, scope, query, candidate_depth())? {
            scores.entry(id).or_default().lexical = score;
        }
    }
    if let Some((embedder, vector)) = embedded
        && mode != SearchMode::Lexical
    {
        for (id, similarity) in indexes.search(c, scope, embedder, vector, candidate_depth())? {
            scores.entry(id).or_default().dense = Some(similarity);
        }
        // Lexical-only candidates get their exact cosine from the stored vectors.
        let unscored: Vec<i64> = scores
            .iter()
            .filter(|(_, s)| s.dense.is_none())
            .map(|(id, _)| *id)
            .collect();
        for (id, stored) in stored_vectors(c, scope, embedder, &unscored)? {
            if let Some(entry) = scores.get_mut(&id) {
                entry.dense = Some(cosine(vector, &stored));
            }
        }
    }
    Ok(scores)
}

/// Puts the first `scores.len()` results in the reranker's order, ahead of the rest.
fn reorder(results: &mut [SearchHit], scores: &[f32]) {
    let head = &mut results[..scores.len()];
    for (hit, score) in head.iter_mut().zip(scores) {
        hit.rerank_score = Some((score * 1000.0).round() / 1000.0);
    }
    let mut keyed: Vec<(f32, SearchHit)> = scores.iter().copied().zip(head.iter().cloned()).collect();
    // Stable: ties keep the retrieval order.
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (slot, (_, hit)) in head.iter_mut().zip(keyed) {
        *slot = hit;
    }
}

/// Orders candidates by the mode's score and keeps the relevant ones.
fn rank(
    candidates: HashMap<i64, Scores>,
    mode: SearchMode,
    fusion: Fusion,
    limit: usize,
) -> Vec<(i64, f32)> {
    let best_lexical = candidates
        .values()
        .map(|s| s.lexical)
        .fold(0.0f32, f32::max);
    let mut ranked: Vec<(i64, f32)> = candidates
        .into_iter()
        .map(|(id, s)| {
            let lexical = if best_lexical > 0.0 {
                s.lexical / best_lexical
            } else {
                0.0
            };
            let score = match (mode, s.dense) {
                (SearchMode::Lexical, _) | (SearchMode::Hybrid, None) => lexical,
                (SearchMode::Vector, dense) => dense.unwrap_or(0.0),
                (SearchMode::Hybrid, Some(dense)) => {
                    (dense + fusion.lexical_weight * lexical) / (1.0 + fusion.lexical_weight)
                }
            };
            (id, score.clamp(0.0, 1.0))
        })
        .filter(|(_, score)| mode == SearchMode::Lexical || *score >= fusion.min_score)
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(limit);
    ranked
}

/// BM25 over the tenant's chunks: (chunk id, score > 0, higher is better).
fn lexical(
    c: &Connection,
    scope: &TenantScope,
    query: &str,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, f32)>> {
    let Some(expression) = fts_query(query) else {
        return Ok(Vec::new());
    };
    let mut statement = c.prepare_cached(
        "SELECT chunks_fts.rowid, bm25(chunks_fts, 1.0, 0.5) FROM chunks_fts \
         JOIN chunks ON chunks.id = chunks_fts.rowid \
         JOIN documents ON documents.id = chunks.document_id AND documents.status = 'ready' \
         WHERE chunks_fts MATCH ?1 AND chunks.tenant_id = ?2 \
         ORDER BY bm25(chunks_fts, 1.0, 0.5) LIMIT ?3",
    )?;
    statement
        .query_map(
            rusqlite::params![expression, scope.tenant_id(), limit as i64],
            |r| Ok((r.get::<_, i64>(0)?, -(r.get::<_, f64>(1)? as f32))),
        )?
        .collect()
}

/// The query's words as an FTS5 expression: any of them, each quoted (so no word is read as
/// an operator), without the commonest English words.
fn fts_query(query: &str) -> Option<String> {
    let mut words: Vec<String> = Vec::new();
    for word in query
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
    {
        if word.chars().count() < 2 || STOPWORDS.contains(&word.as_str()) || words.contains(&word) {
            continue;
        }
        words.push(word);
    }
    (!words.is_empty()).then(|| {
        words
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" OR ")
    })
}

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from",
    "how", "i", "if", "in", "is", "it", "its", "me", "my", "of", "on", "or", "should", "so",
    "that", "the", "their", "there", "this", "to", "was", "what", "when", "where", "which", "who",
    "why", "will", "with", "would", "you", "your", "we", "our", "there", "any", "about", "into",
    "get", "use", "using", "have", "has",
];

fn stored_vectors(
    c: &Connection,
    scope: &TenantScope,
    embedder: &str,
    ids: &[i64],
) -> rusqlite::Result<Vec<(i64, Vec<f32>)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; ids.len()].join(", ");
    let mut statement = c.prepare(&format!(
        "SELECT chunk_id, vector FROM chunk_vectors \
         WHERE tenant_id = ? AND embedder = ? AND chunk_id IN ({marks})"
    ))?;
    let mut values: Vec<rusqlite::types::Value> = vec![
        scope.tenant_id().to_string().into(),
        embedder.to_string().into(),
    ];
    values.extend(ids.iter().map(|&id| rusqlite::types::Value::Integer(id)));
    statement
        .query_map(params_from_iter(values), |r| {
            Ok((r.get(0)?, vector_from_blob(&r.get::<_, Vec<u8>>(1)?)))
        })?
        .collect()
}

/// The ranked chunks with their text and document, from SQLite and scoped to the tenant: a
/// stale index entry for a deleted chunk simply finds nothing here.
fn hydrate(
    c: &Connection,
    scope: &TenantScope,
    ranked: &[(i64, f32)],
) -> rusqlite::Result<Vec<SearchHit>> {
    let mut statement = c.prepare_cached(
        "SELECT c.text, c.document_id, d.title, d.filename, c.page, c.heading_path, \
                c.char_start, c.char_end \
         FROM chunks c JOIN documents d ON d.id = c.document_id \
         WHERE c.id = ?1 AND c.tenant_id = ?2 AND d.status = 'ready'",
    )?;
    let mut hits = Vec::with_capacity(ranked.len());
    for &(id, score) in ranked {
        let mut rows = statement.query(rusqlite::params![id, scope.tenant_id()])?;
        if let Some(r) = rows.next()? {
            hits.push(SearchHit {
                score: (score * 1000.0).round() / 1000.0,
                rerank_score: None,
                text: r.get(0)?,
                chunk_id: id,
                document_id: r.get(1)?,
                document_title: r.get(2)?,
                filename: r.get(3)?,
                page: r.get(4)?,
                heading_path: r.get(5)?,
                char_start: r.get(6)?,
                char_end: r.get(7)?,
            });
        }
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_become_safe_fts_expressions() {
        assert_eq!(
            fts_query("How do I reset my password?").as_deref(),
            Some("\"reset\" OR \"password\"")
        );
        assert_eq!(
            fts_query("\"; DROP TABLE x -- NEAR(a b)").as_deref(),
            Some("\"drop\" OR \"table\" OR \"near\"")
        );
        assert_eq!(fts_query("the a of"), None);
    }

    #[test]
    fn hybrid_keeps_dense_order_unless_lexical_evidence_is_strong() {
        let mut candidates = HashMap::new();
        candidates.insert(
            1,
            Scores {
                dense: Some(0.80),
                lexical: 0.0,
            },
        );
        candidates.insert(
            2,
            Scores {
                dense: Some(0.78),
                lexical: 10.0,
            },
        );
        candidates.insert(
            3,
            Scores {
                dense: Some(0.10),
                lexical: 9.0,
            },
        );
        let fusion = Fusion {
            lexical_weight: 0.3,
            min_score: 0.2,
        };
        let ranked = rank(candidates, SearchMode::Hybrid, fusion, 10);
        let order: Vec<i64> = ranked.iter().map(|(id, _)| *id).collect();
        assert_eq!(order, [2, 1, 3]);
    }
}
