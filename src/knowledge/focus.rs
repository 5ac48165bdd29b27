//! Sentence focus: the passages an answer is written from, ordered by the sentence in each
//! that best matches the question as well as by the whole passage.
//!
//! Why: a passage that holds several facts ("How a week works": the one-to-one session's
//! length, the group session's day, the check-in deadline, rescheduling) has an embedding that
//! is the average of them all, so a question about one of them finds a passage about a
//! neighbouring topic closer. The small model quotes the first passage it is given, so the
//! order matters more than the set. Scoring each passage as the mean of its retrieval score
//! and its best sentence's cosine put the answering passage first for 36 of 40 in-scope
//! questions of `scripts/bench-answers`, against 29 in retrieval order (see
//! docs/architecture.md, "Measured").
//!
//! It runs on the few passages of an answer only (one embedder call for a few dozen
//! sentences), not in `/search`, whose latency budget is a few milliseconds. A reranker's
//! order, where one ran, is kept: a cross-encoder reads the pair and knows better.

use super::Knowledge;
use super::search::SearchHit;
use crate::auth::TenantScope;
use crate::inference::embed::{EmbedKind, cosine};

/// Share of the best sentence's cosine in a passage's focus score (the rest is its retrieval
/// score). 0.3 to 0.5 gave the same top passages on the answers benchmark; 0.2 and 0.6 fewer.
const SENTENCE_WEIGHT: f32 = 0.5;
/// Sentences read per passage: a passage is at most a few hundred tokens, so this bounds the
/// cost without cutting real ones.
const MAX_SENTENCES: usize = 16;
/// Shorter pieces (a heading's number, "Yes.") say too little to be matched alone.
const MIN_SENTENCE_CHARS: usize = 16;

impl Knowledge {
    /// `passages` reordered by focus (stable: equal scores keep the retrieval order). Unchanged
    /// when there is nothing to reorder, a reranker ordered them, or the embedder is busy.
    pub async fn focus(
        &self,
        scope: &TenantScope,
        question: &str,
        mut passages: Vec<SearchHit>,
    ) -> Vec<SearchHit> {
        if passages.len() < 2 || passages.iter().any(|p| p.rerank_score.is_some()) {
            return passages;
        }
        let split: Vec<Vec<String>> = passages.iter().map(|p| sentences(&p.text)).collect();
        match self.best_sentences(scope, question, &split).await {
            Ok(best) => {
                let mut scored: Vec<(f32, SearchHit)> = best
                    .into_iter()
                    .zip(passages)
                    .map(|(sentence, hit)| (focus_score(hit.score, sentence), hit))
                    .collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                passages = scored.into_iter().map(|(_, hit)| hit).collect();
            }
            Err(error) => tracing::debug!(%error, "answer passages kept their retrieval order"),
        }
        passages
    }

    /// For each passage, the cosine of its best sentence to the question (`None`: no sentence
    /// long enough).
    async fn best_sentences(
        &self,
        scope: &TenantScope,
        question: &str,
        split: &[Vec<String>],
    ) -> Result<Vec<Option<f32>>, super::KnowledgeError> {
        let engine = self.query_embedder(scope).await?;
        let tenant = scope.tenant_id();
        let query = engine
            .embed(tenant, vec![question.to_string()], EmbedKind::Query)
            .await?
            .pop()
            .unwrap_or_default();
        let vectors = engine
            .embed(tenant, split.concat(), EmbedKind::Document)
            .await?;
        let mut vectors = vectors.iter();
        Ok(split
            .iter()
            .map(|sentences| {
                vectors
                    .by_ref()
                    .take(sentences.len())
                    .map(|v| cosine(&query, v))
                    .reduce(f32::max)
            })
            .collect())
    }
}

fn focus_score(retrieval: f32, best_sentence: Option<f32>) -> f32 {
    match best_sentence {
        Some(sentence) => (1.0 - SENTENCE_WEIGHT) * retrieval + SENTENCE_WEIGHT * sentence,
        // A passage too short to split is its own best sentence.
        None => retrieval,
    }
}

/// A passage's sentences and list items: split after `.`, `!` or `?` followed by a space, and
/// at line breaks.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        for (i, &(at, c)) in chars.iter().enumerate() {
            let ends = matches!(c, '.' | '!' | '?')
                && chars
                    .get(i + 1)
                    .is_some_and(|&(_, next)| next.is_whitespace());
            if ends {
                out.push(line[start..at + c.len_utf8()].trim().to_string());
                start = at + c.len_utf8();
            }
        }
        out.push(line[start..].trim().to_string());
    }
    out.retain(|s| s.chars().count() >= MIN_SENTENCE_CHARS);
    out.truncate(MAX_SENTENCES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_split_into_sentences_and_list_items() {
        let text = "Every week has three parts:\n\n1. A one-to-one session, lasting 45 minutes.\n\
                    2. A group session on Wednesday at 19:00.\nYour check-in is due by 20:00. \
                    Your coach replies by Wednesday. Yes.";
        assert_eq!(
            sentences(text),
            vec![
                "Every week has three parts:",
                // The list's numbers are too short to stand alone.
                "A one-to-one session, lasting 45 minutes.",
                "A group session on Wednesday at 19:00.",
                "Your check-in is due by 20:00.",
                "Your coach replies by Wednesday.",
            ]
        );
        // A decimal point or an abbreviation without a space after it does not split.
        assert_eq!(
            sentences("It costs €29.50 per month."),
            vec!["It costs €29.50 per month."]
        );
    }

    #[test]
    fn a_passage_whose_best_sentence_matches_goes_ahead_of_a_closer_average() {
        // Retrieval put the neighbouring topic first (0.57 against 0.55); the answering
        // passage's best sentence matches far better (0.80 against 0.60).
        let neighbour = focus_score(0.57, Some(0.60));
        let answering = focus_score(0.55, Some(0.80));
        assert!(answering > neighbour);
        assert_eq!(focus_score(0.4, None), 0.4);
    }
}
