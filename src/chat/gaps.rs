//! Knowledge gaps: questions the coach could not answer from the knowledge base, grouped by
//! similarity for the dashboard, and resolved when the team answers them.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Chat, ChatError};
use crate::auth::{TenantScope, new_id};
use crate::inference::embed::EmbedKind;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KnowledgeGap {
    pub id: String,
    /// The question, with personal data masked.
    pub question: String,
    /// The best retrieval score it got (0 to 1).
    pub best_score: f64,
    pub conversation_id: Option<String>,
    pub created_at: String,
    /// When the team answered it; null while open.
    pub resolved_at: Option<String>,
    /// The document that answers it, when one was named.
    pub document_id: Option<String>,
}

/// Similar open questions, the most asked first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GapGroup {
    /// The group's most recent wording.
    pub question: String,
    /// Every wording in the group, most recent first.
    pub questions: Vec<String>,
    pub count: usize,
    pub gap_ids: Vec<String>,
    pub last_asked_at: String,
    pub best_score: f64,
}

pub fn record(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    message_id: &str,
    question: &str,
    best_score: f64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO knowledge_gaps (id, tenant_id, conversation_id, message_id, question, best_score) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![new_id(), scope.tenant_id(), conversation_id, message_id, question, best_score],
    )?;
    Ok(())
}

/// The most recent gaps, open ones only unless `include_resolved`.
pub fn list(
    c: &Connection,
    scope: &TenantScope,
    limit: u32,
    include_resolved: bool,
) -> rusqlite::Result<Vec<KnowledgeGap>> {
    let mut statement = c.prepare_cached(
        "SELECT id, question, best_score, conversation_id, created_at, resolved_at, document_id \
         FROM knowledge_gaps WHERE tenant_id = ?1 AND (?3 OR resolved_at IS NULL) \
         ORDER BY created_at DESC, rowid DESC LIMIT ?2",
    )?;
    statement
        .query_map(
            params![scope.tenant_id(), limit.clamp(1, 500), include_resolved],
            |r| {
                Ok(KnowledgeGap {
                    id: r.get(0)?,
                    question: r.get(1)?,
                    best_score: r.get(2)?,
                    conversation_id: r.get(3)?,
                    created_at: r.get(4)?,
                    resolved_at: r.get(5)?,
                    document_id: r.get(6)?,
                })
            },
        )?
        .collect()
}

/// Marks the tenant's gaps answered (by `document_id` when given); returns how many changed.
pub fn resolve(
    c: &Connection,
    scope: &TenantScope,
    ids: &[String],
    document_id: Option<&str>,
) -> rusqlite::Result<usize> {
    let mut changed = 0;
    for id in ids {
        changed += c.execute(
            "UPDATE knowledge_gaps SET resolved_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
             document_id = ?3 WHERE tenant_id = ?1 AND id = ?2 AND resolved_at IS NULL",
            params![scope.tenant_id(), id, document_id],
        )?;
    }
    Ok(changed)
}

/// Embedding similarity above which two questions are one group.
const SAME_QUESTION_COSINE: f32 = 0.8;
/// Without an embedder: the share of shared words above which two questions are one group.
const SAME_QUESTION_WORDS: f32 = 0.5;

impl Chat {
    /// Open gaps grouped by meaning (embeddings when the embedder is ready, shared words when
    /// not), the most asked first.
    pub async fn gap_groups(
        &self,
        scope: &TenantScope,
        limit: u32,
    ) -> Result<Vec<GapGroup>, ChatError> {
        let scope_moved = scope.clone();
        let gaps = self
            .db
            .call(move |c| Ok::<_, ChatError>(list(c, &scope_moved, limit, false)?))
            .await?;
        let texts: Vec<String> = gaps.iter().map(|g| g.question.clone()).collect();
        let vectors = match self.inference.embedder() {
            Ok(engine) if !texts.is_empty() => engine
                .embed(scope.tenant_id(), texts.clone(), EmbedKind::Query)
                .await
                .ok(),
            _ => None,
        };
        let same = |a: usize, b: usize| match &vectors {
            Some(v) => cosine(&v[a], &v[b]) >= SAME_QUESTION_COSINE,
            None => word_overlap(&texts[a], &texts[b]) >= SAME_QUESTION_WORDS,
        };
        // Greedy: each gap joins the first group whose first member it resembles.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for i in 0..gaps.len() {
            match groups.iter_mut().find(|g| same(g[0], i)) {
                Some(group) => group.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mut out: Vec<GapGroup> = groups
            .into_iter()
            .map(|members| GapGroup {
                question: gaps[members[0]].question.clone(),
                questions: members.iter().map(|&i| gaps[i].question.clone()).collect(),
                count: members.len(),
                gap_ids: members.iter().map(|&i| gaps[i].id.clone()).collect(),
                last_asked_at: gaps[members[0]].created_at.clone(),
                best_score: members
                    .iter()
                    .map(|&i| gaps[i].best_score)
                    .fold(0.0, f64::max),
            })
            .collect();
        out.sort_by_key(|group| std::cmp::Reverse(group.count));
        Ok(out)
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    dot / (norm(a) * norm(b))
}

/// Shared words over all words (Jaccard), case and punctuation ignored.
fn word_overlap(a: &str, b: &str) -> f32 {
    let words = |text: &str| -> std::collections::HashSet<String> {
        text.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 2)
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (words(a), words(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(&b).count() as f32 / union as f32
}

#[cfg(test)]
mod tests {
    #[test]
    fn similar_wordings_overlap() {
        let same = super::word_overlap("Do you ship to Canada?", "Can you ship to Canada");
        let other = super::word_overlap("Do you ship to Canada?", "What is the price of coaching?");
        assert!(same >= super::SAME_QUESTION_WORDS, "{same}");
        assert!(other < super::SAME_QUESTION_WORDS, "{other}");
    }
}
