//! Hybrid retrieval: BM25 (SQLite FTS5) and vector similarity (usearch), fused per query in
//! which dense similarity leads and lexical evidence adjusts; then, when one runs, a
//! cross-encoder reorders the best candidates.
//!
//! Fusion: every candidate from either list is scored by both methods (its exact cosine comes
//! from the vector stored in SQLite), and each side is normalised per query as a z-score over
//! its own candidates. The fused score is `cosine + w · σ_dense · z_bm25`: ordering by it is
//! ordering by `z_dense + w · z_bm25`, and it stays in cosine units, so relevance thresholds
//! keep their meaning. Why per query: BM25 divided by the best match (the earlier fusion) gave
//! the lexical top hit a fixed boost however mediocre it was, and at thousands of passages,
//! where the dense scores of the top candidates lie close together, that boost pushed wrong
//! passages first. Here the boost is a share of the query's own dense spread, and a lexical
//! match counts by how far it stands out from the other lexical matches. Reciprocal rank fusion
//! let a weak lexical ranking drag a strong dense one down on every set we measured.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};

use super::index::{VectorIndexes, vector_from_blob};
use super::{Knowledge, KnowledgeError};
use crate::auth::TenantScope;
use crate::inference::embed::{EmbedKind, cosine};

/// Candidates taken from each method before fusion. At 10,000 passages 100 beat 50 on every
/// metric of scripts/eval-retrieval; the extra cost is reading up to 100 stored vectors.
const CANDIDATES: usize = 100;
/// Weight of the lexical evidence, in standard deviations of the query's dense scores per
/// standard deviation of its BM25 scores (chosen on scripts/eval-retrieval at 1,800 and 10,000
/// passages; see docs/architecture.md).
pub const DEFAULT_LEXICAL_WEIGHT: f32 = 0.2;

/// How the two rankings are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    /// Weight of BM25's z-score against the dense one (see the module's comment).
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

/// Reciprocal rank fusion of result lists for one question read several ways (alone, and with
/// the conversation before it): a passage scores the sum of 1 / (60 + rank) over the lists it
/// is in, and keeps its best retrieval score. Ties keep the earlier list's order. One list is
/// returned as it is, cut to `limit`.
pub fn fuse_ranks(lists: Vec<Vec<SearchHit>>, limit: usize) -> Vec<SearchHit> {
    const K: f32 = 60.0;
    let mut fused: Vec<(f32, SearchHit)> = Vec::new();
    for list in lists {
        for (rank, hit) in list.into_iter().enumerate() {
            let share = 1.0 / (K + rank as f32 + 1.0);
            match fused.iter_mut().find(|(_, h)| h.chunk_id == hit.chunk_id) {
                Some((score, kept)) => {
                    *score += share;
                    kept.score = kept.score.max(hit.score);
                }
                None => fused.push((share, hit)),
            }
        }
    }
    // A stable sort: equal sums keep the order the lists gave.
    fused.sort_by(|a, b| b.0.total_cmp(&a.0));
    fused.into_iter().take(limit).map(|(_, hit)| hit).collect()
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
        // BM25 runs on a reader while the embedder reads the query: neither waits for the other.
        let (scope_for_db, query_for_db) = (scope.clone(), query.clone());
        let lexical = self.inner.db.read(move |c| {
            Ok::<_, KnowledgeError>(lexical_side(c, &scope_for_db, &query_for_db, mode)?)
        });
        // Lexical search works without an embedder; hybrid degrades to it while one loads.
        let embedding = async {
            Ok::<_, KnowledgeError>(match mode {
                SearchMode::Lexical => None,
                SearchMode::Vector => Some(self.embed_query(scope, &query).await?),
                SearchMode::Hybrid => self.embed_query(scope, &query).await.ok(),
            })
        };
        let (lexical, embedded) = tokio::join!(lexical, embedding);
        let (lexical, embedded) = (lexical?, embedded?);
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
        let scope_for_db = scope.clone();
        let mut results = self
            .inner
            .db
            .read(move |c| {
                rank_and_read(
                    c,
                    &indexes,
                    &scope_for_db,
                    mode,
                    lexical,
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
    let lexical = lexical_side(c, scope, query, mode)?;
    rank_and_read(c, indexes, scope, mode, lexical, embedded, fusion, limit)
}

/// The mode's BM25 candidates: (chunk id, score), none in vector mode.
fn lexical_side(
    c: &Connection,
    scope: &TenantScope,
    query: &str,
    mode: SearchMode,
) -> rusqlite::Result<Vec<(i64, f32)>> {
    match mode {
        SearchMode::Vector => Ok(Vec::new()),
        SearchMode::Lexical | SearchMode::Hybrid => lexical(c, scope, query, CANDIDATES),
    }
}

/// Everything after BM25: the dense candidates, fusion, and the passages' text.
#[allow(clippy::too_many_arguments)]
fn rank_and_read(
    c: &Connection,
    indexes: &VectorIndexes,
    scope: &TenantScope,
    mode: SearchMode,
    lexical: Vec<(i64, f32)>,
    embedded: Option<&(String, Vec<f32>)>,
    fusion: Fusion,
    limit: usize,
) -> Result<Vec<SearchHit>, KnowledgeError> {
    let dense = embedded.filter(|_| mode != SearchMode::Lexical);
    let candidates = candidates(c, indexes, scope, lexical, dense)?;
    let ranked = rank(candidates, mode, fusion, limit);
    Ok(hydrate(c, scope, &ranked)?)
}

/// BM25's candidates and, given the query's embedding, the index's: each with both scores.
fn candidates(
    c: &Connection,
    indexes: &VectorIndexes,
    scope: &TenantScope,
    lexical: Vec<(i64, f32)>,
    embedded: Option<&(String, Vec<f32>)>,
) -> Result<HashMap<i64, Scores>, KnowledgeError> {
    let mut scores: HashMap<i64, Scores> = HashMap::new();
    for (id, score) in lexical {
        scores.entry(id).or_default().lexical = score;
    }
    if let Some((embedder, vector)) = embedded {
        for (id, similarity) in indexes.search(c, scope, embedder, vector, CANDIDATES)? {
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
    // Stable: ties keep the retrieval order.
    head.sort_by(|a, b| {
        b.rerank_score
            .unwrap_or(0.0)
            .total_cmp(&a.rerank_score.unwrap_or(0.0))
    });
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
    // Dense statistics over the CANDIDATES best cosines (the index's own list, give or take a
    // lexical-only passage); lexical statistics over the passages BM25 matched.
    let mut dense: Vec<f32> = candidates.values().filter_map(|s| s.dense).collect();
    dense.sort_by(|a, b| b.total_cmp(a));
    dense.truncate(CANDIDATES);
    let dense = Spread::of(&dense).deviation;
    let matched: Vec<f32> = candidates
        .values()
        .map(|s| s.lexical)
        .filter(|&l| l > 0.0)
        .collect();
    let lexical = Spread::of(&matched);
    let mut ranked: Vec<(i64, f32)> = candidates
        .into_iter()
        .map(|(id, s)| {
            let score = match (mode, s.dense) {
                (SearchMode::Lexical, _) | (SearchMode::Hybrid, None) => {
                    if best_lexical > 0.0 {
                        s.lexical / best_lexical
                    } else {
                        0.0
                    }
                }
                (SearchMode::Vector, cosine) => cosine.unwrap_or(0.0),
                (SearchMode::Hybrid, Some(cosine)) => {
                    cosine + fusion.lexical_weight * dense * lexical.z(s.lexical)
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

/// Fewer scores than this say too little about a side's spread: it then adds nothing.
const MIN_SPREAD_SAMPLES: usize = 3;
/// Differences under this share of the mean score do not count as standing out: when every
/// passage matched about as well, a z-score would magnify noise.
const MIN_RELATIVE_DEVIATION: f32 = 0.1;

/// Mean and standard deviation of one side's candidate scores.
#[derive(Debug, Clone, Copy)]
struct Spread {
    mean: f32,
    deviation: f32,
    samples: usize,
}

impl Spread {
    fn of(values: &[f32]) -> Spread {
        let n = values.len().max(1) as f32;
        let mean = values.iter().sum::<f32>() / n;
        let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        Spread {
            mean,
            deviation: variance.sqrt(),
            samples: values.len(),
        }
    }

    /// How many deviations `value` lies above the mean (a passage BM25 did not match counts as
    /// a score of 0: with the query's words OR-ed, not being among the best matches is evidence
    /// too); 0 when there are too few scores to spread, so such a side adds nothing.
    fn z(&self, value: f32) -> f32 {
        let deviation = self.deviation.max(MIN_RELATIVE_DEVIATION * self.mean.abs());
        if self.samples >= MIN_SPREAD_SAMPLES && deviation > 1e-6 {
            (value - self.mean) / deviation
        } else {
            0.0
        }
    }
}

/// BM25 over the tenant's chunks: (chunk id, score > 0, higher is better), best first.
///
/// Why two steps: BM25 is computed for every passage that contains one of the query's words
/// (thousands at 50,000 passages), and joining each of them to its chunk and document to check
/// tenant and status cost more than the scoring itself. So FTS5 ranks alone first, over a
/// window a few times the limit, and only that window is checked. When the check leaves too
/// few (other tenants' or unready passages crowded the window), the joined query answers
/// instead, so the result is always exactly the tenant's best `limit`.
fn lexical(
    c: &Connection,
    scope: &TenantScope,
    query: &str,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, f32)>> {
    let Some(expression) = fts_query(query) else {
        return Ok(Vec::new());
    };
    let window = limit * LEXICAL_WINDOW;
    let mut statement = c.prepare_cached(
        "SELECT ranked.rowid, ranked.score, \
                chunks.tenant_id IS ?2 AND documents.status IS 'ready' \
         FROM (SELECT rowid, bm25(chunks_fts, 1.0, 0.5) AS score FROM chunks_fts \
               WHERE chunks_fts MATCH ?1 ORDER BY score LIMIT ?3) AS ranked \
         LEFT JOIN chunks ON chunks.id = ranked.rowid \
         LEFT JOIN documents ON documents.id = chunks.document_id \
         ORDER BY ranked.score",
    )?;
    let mut seen = 0;
    let mut ours = Vec::with_capacity(limit);
    let mut rows = statement.query(rusqlite::params![
        expression,
        scope.tenant_id(),
        window as i64
    ])?;
    // Rows are joined as they are read: stop once the tenant's `limit` are in.
    while ours.len() < limit
        && let Some(r) = rows.next()?
    {
        seen += 1;
        if r.get::<_, bool>(2)? {
            ours.push((r.get::<_, i64>(0)?, -(r.get::<_, f64>(1)? as f32)));
        }
    }
    if ours.len() == limit || seen < window {
        return Ok(ours);
    }
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

/// How many times `limit` passages FTS5 ranks before the tenant check (see `lexical`): room for
/// a few unready or other tenants' passages at little cost, since FTS5 keeps only the window.
const LEXICAL_WINDOW: usize = 3;

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

    /// A database with tenant "busy" holding `busy` passages that match "alpha" strongly, and
    /// tenant "quiet" holding four weaker matches, one of them in a document still processing.
    fn two_tenants(busy: usize) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = crate::db::connect(&dir.path().join("t.db")).unwrap();
        crate::db::migrations::apply(&mut c).unwrap();
        c.execute_batch(
            "INSERT INTO tenants (id, name) VALUES ('busy', 'Busy'), ('quiet', 'Quiet');
             INSERT INTO documents (id, tenant_id, title, filename, kind, size_bytes, sha256, status)
             VALUES ('b', 'busy', 'B', 'b.txt', 'text', 0, '', 'ready'),
                    ('q', 'quiet', 'Q', 'q.txt', 'text', 0, '', 'ready'),
                    ('p', 'quiet', 'P', 'p.txt', 'text', 0, '', 'processing');",
        )
        .unwrap();
        let mut insert = c
            .prepare(
                "INSERT INTO chunks (tenant_id, document_id, ordinal, text, char_start, char_end, \
                 token_count) VALUES (?1, ?2, ?3, ?4, 0, 0, 10)",
            )
            .unwrap();
        // Passages without the word keep its BM25 weight (IDF) positive.
        for ordinal in 0..busy + 60 {
            let text = if ordinal < busy {
                "alpha alpha alpha"
            } else {
                "omega"
            };
            insert
                .execute(rusqlite::params!["busy", "b", ordinal as i64, text])
                .unwrap();
        }
        let quiet = [
            ("q", "alpha beta gamma delta"),
            ("q", "alpha beta gamma delta epsilon zeta"),
            ("p", "alpha alpha beta"),
            ("q", "alpha beta gamma delta epsilon zeta eta theta iota"),
        ];
        for (ordinal, (document, text)) in quiet.into_iter().enumerate() {
            insert
                .execute(rusqlite::params!["quiet", document, ordinal as i64, text])
                .unwrap();
        }
        drop(insert);
        (dir, c)
    }

    fn texts(c: &Connection, hits: &[(i64, f32)]) -> Vec<String> {
        hits.iter()
            .map(|(id, _)| {
                c.query_row("SELECT text FROM chunks WHERE id = ?1", [id], |r| r.get(0))
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn lexical_search_finds_a_tenants_best_matches_behind_another_tenants() {
        // Busy's 40 passages fill the whole window FTS5 ranks first (3 x 10), so quiet's
        // passages are only found by the joined query: best first, the unready one left out.
        let (_dir, c) = two_tenants(40);
        let quiet = lexical(&c, &TenantScope::new("quiet".into()), "alpha?", 10).unwrap();
        assert_eq!(
            texts(&c, &quiet),
            [
                "alpha beta gamma delta",
                "alpha beta gamma delta epsilon zeta",
                "alpha beta gamma delta epsilon zeta eta theta iota"
            ]
        );
        assert!(quiet.windows(2).all(|w| w[0].1 >= w[1].1 && w[1].1 > 0.0));
        let busy = lexical(&c, &TenantScope::new("busy".into()), "alpha", 10).unwrap();
        assert_eq!(busy.len(), 10);
        assert!(texts(&c, &busy).iter().all(|t| t == "alpha alpha alpha"));
    }

    #[test]
    fn lexical_search_keeps_only_the_tenants_ready_passages_of_a_short_window() {
        // Everything fits in the window: the tenant check alone decides.
        let (_dir, c) = two_tenants(2);
        let quiet = lexical(&c, &TenantScope::new("quiet".into()), "alpha", 10).unwrap();
        assert_eq!(quiet.len(), 3);
        assert!(!texts(&c, &quiet).contains(&"alpha alpha beta".to_string()));
        let busy = lexical(&c, &TenantScope::new("busy".into()), "alpha", 10).unwrap();
        assert_eq!(texts(&c, &busy), ["alpha alpha alpha", "alpha alpha alpha"]);
    }

    fn hit(chunk_id: i64, score: f32) -> SearchHit {
        SearchHit {
            score,
            rerank_score: None,
            text: format!("passage {chunk_id}"),
            chunk_id,
            document_id: "d".into(),
            document_title: "D".into(),
            filename: "d.md".into(),
            page: None,
            heading_path: String::new(),
            char_start: 0,
            char_end: 0,
        }
    }

    #[test]
    fn fused_lists_favour_passages_both_readings_find() {
        // Alone the question finds 1, 2, 3; with its context 3, 4, 1. Passages in both lists
        // lead; 2 (second alone) beats 4 (second with context) on the tie; each keeps its best
        // retrieval score.
        let alone = vec![hit(1, 0.5), hit(2, 0.4), hit(3, 0.3)];
        let joined = vec![hit(3, 0.8), hit(4, 0.7), hit(1, 0.6)];
        let fused = fuse_ranks(vec![alone.clone(), joined], 4);
        let order: Vec<i64> = fused.iter().map(|h| h.chunk_id).collect();
        assert_eq!(order, [1, 3, 2, 4]);
        assert_eq!(fused[0].score, 0.6);
        assert_eq!(fused[1].score, 0.8);
        // One list comes back as it was, cut to the limit.
        let one: Vec<i64> = fuse_ranks(vec![alone], 2)
            .iter()
            .map(|h| h.chunk_id)
            .collect();
        assert_eq!(one, [1, 2]);
    }

    fn scores(dense: f32, lexical: f32) -> Scores {
        Scores {
            dense: Some(dense),
            lexical,
        }
    }

    #[test]
    fn lexical_evidence_moves_a_passage_by_a_share_of_the_dense_spread() {
        let fusion = Fusion {
            lexical_weight: 0.2,
            min_score: 0.2,
        };
        // Dense scores spread by about 0.05; passage 2 is a little behind 1 on meaning but the
        // only strong lexical match: it moves ahead. Passage 3 matches words only, far from the
        // meaning: it does not jump the others.
        let mut candidates: HashMap<i64, Scores> = HashMap::from([
            (1, scores(0.80, 2.0)),
            (2, scores(0.79, 12.0)),
            (3, scores(0.60, 11.0)),
            (4, scores(0.74, 2.5)),
            (5, scores(0.70, 3.0)),
        ]);
        let order = |c: HashMap<i64, Scores>| -> Vec<i64> {
            rank(c, SearchMode::Hybrid, fusion, 10)
                .iter()
                .map(|(id, _)| *id)
                .collect()
        };
        assert_eq!(order(candidates.clone()), [2, 1, 4, 5, 3]);
        // A mediocre best lexical match (everything matched about as well) changes nothing:
        // the boost follows how far a match stands out, not which one is best.
        for (id, s) in candidates.iter_mut() {
            s.lexical = 5.0 + *id as f32 * 0.01;
        }
        assert_eq!(order(candidates), [1, 2, 4, 5, 3]);
        // Two lexical matches say too little: dense order.
        let few = HashMap::from([
            (1, scores(0.80, 0.0)),
            (2, scores(0.78, 9.0)),
            (3, scores(0.5, 8.9)),
        ]);
        assert_eq!(order(few), [1, 2, 3]);
    }
}
