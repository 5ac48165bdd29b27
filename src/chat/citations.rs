//! Citation alignment: small models cite wrongly, so after generation every sentence is checked
//! against the passages and its markers are kept, fixed, added or dropped.
//!
//! A sentence is supported by a passage when enough of its content words (lower-cased, stemmed
//! to their first five letters, without stop words) occur in two consecutive sentences of the
//! passage, or when fewer do but the sentence's embedding is close to the passage's. Lines in
//! code blocks are left as written and never cited. Markers the model wrote are kept when
//! their passage supports the sentence; otherwise the best supporting passage is cited; a
//! sentence nothing supports gets no marker. Markers are renumbered in order of first use.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::inference::embed::cosine;
use crate::knowledge::chunk::sentences;
use crate::knowledge::search::SearchHit;

/// Share of a sentence's content words found in a passage that counts as support by itself.
pub const LEXICAL_SUPPORT: f32 = 0.5;
/// With at least [`LEXICAL_FLOOR`] word overlap, this cosine between sentence and passage also
/// counts as support (paraphrases).
pub const SEMANTIC_SUPPORT: f32 = 0.6;
pub const LEXICAL_FLOOR: f32 = 0.25;
/// Sentences with fewer content words ("Sure!", "Great question.") are not claims.
const MIN_CLAIM_WORDS: usize = 3;

/// A citation as stored with the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Citation {
    /// The number used in the text, `[marker]`.
    pub marker: usize,
    pub document_id: String,
    pub document_title: String,
    pub page: Option<i64>,
    pub heading_path: String,
    /// The passage's sentence that best supports the cited text.
    pub snippet: String,
    pub chunk_id: i64,
}

/// The answer with aligned markers.
#[derive(Debug, Clone, PartialEq)]
pub struct Aligned {
    pub text: String,
    pub citations: Vec<Citation>,
    /// Supported claims / claims, in [0, 1]; 0 when there is no claim.
    pub support: f32,
    /// Markers the model wrote whose passage supports their sentence / markers it wrote.
    pub model_markers_correct: Option<f32>,
}

/// Embeddings for the semantic check: one per sentence of the answer (in [`claims`] order) and
/// one per passage.
pub struct Embeddings {
    pub sentences: Vec<Vec<f32>>,
    pub passages: Vec<Vec<f32>>,
}

/// The answer's prose sentences with the model's markers removed, in the order [`align`]
/// visits them; for embedding.
pub fn claims(answer: &str) -> Vec<String> {
    split(answer)
        .into_iter()
        .filter(|s| !s.code)
        .map(|s| s.text)
        .collect()
}

/// A piece of the answer: a sentence of prose, or a line inside a code block.
struct Sentence {
    text: String,
    /// What followed it in the answer (spaces, line breaks), kept so layout survives.
    trailing: String,
    /// 0-based passage indices the model cited.
    cited: Vec<usize>,
    /// Inside a fenced code block: copied as written, never cited.
    code: bool,
}

fn split(answer: &str) -> Vec<Sentence> {
    let mut in_code = false;
    let mut out = Vec::new();
    for range in sentences(answer) {
        let piece = &answer[range];
        let core = piece.trim_end();
        let trailing = piece[core.len()..].to_string();
        let fences = core.matches("```").count();
        let code = in_code || fences > 0;
        if fences % 2 == 1 {
            in_code = !in_code;
        }
        let (text, cited) = if code {
            (core.to_string(), Vec::new())
        } else {
            strip_markers(core)
        };
        out.push(Sentence {
            text,
            trailing,
            cited,
            code,
        });
    }
    out
}

/// Removes `[1]`, `[1, 2]`, `[1][3]` markers; returns the text and the 0-based indices.
fn strip_markers(sentence: &str) -> (String, Vec<usize>) {
    let mut text = String::with_capacity(sentence.len());
    let mut cited = Vec::new();
    let mut rest = sentence;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        let inside = &rest[open + 1..close];
        let numbers: Option<Vec<usize>> = inside
            .split(',')
            .map(|n| n.trim().parse::<usize>().ok())
            .collect();
        match numbers {
            Some(numbers) if !inside.trim().is_empty() => {
                text.push_str(rest[..open].trim_end_matches(' '));
                cited.extend(numbers.into_iter().filter(|&n| n > 0).map(|n| n - 1));
            }
            _ => text.push_str(&rest[..=close]),
        }
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    (text.trim().to_string(), cited)
}

/// Aligns the markers of `answer` with `passages` (numbered from 1 in the prompt).
pub fn align(answer: &str, passages: &[SearchHit], embeddings: Option<&Embeddings>) -> Aligned {
    let windows: Vec<Vec<Window>> = passages.iter().map(|p| windows(&p.text)).collect();
    let mut used: Vec<usize> = Vec::new();
    let mut snippets: Vec<String> = Vec::new();
    let mut out = String::new();
    let (mut claims, mut supported) = (0usize, 0usize);
    let (mut model_markers, mut model_markers_right) = (0usize, 0usize);
    let mut prose_index = 0;
    for sentence in split(answer) {
        if sentence.code {
            out.push_str(&sentence.text);
            out.push_str(&sentence.trailing);
            continue;
        }
        let i = prose_index;
        prose_index += 1;
        let words = content_words(&sentence.text);
        // Per passage: the support score (0 = none) and the window of it that supports.
        let scores: Vec<(f32, usize)> = windows
            .iter()
            .enumerate()
            .map(|(p, passage_windows)| {
                let (best, lexical) = passage_windows
                    .iter()
                    .enumerate()
                    .map(|(w, window)| (w, overlap(&words, &window.words)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or((0, 0.0));
                let semantic = embeddings
                    .and_then(|e| Some(cosine(e.sentences.get(i)?, e.passages.get(p)?)))
                    .unwrap_or(0.0);
                let supports = lexical >= LEXICAL_SUPPORT
                    || (lexical >= LEXICAL_FLOOR && semantic >= SEMANTIC_SUPPORT);
                (if supports { lexical + semantic } else { 0.0 }, best)
            })
            .collect();
        let supports = |p: usize| scores.get(p).is_some_and(|(s, _)| *s > 0.0);
        for &p in &sentence.cited {
            model_markers += 1;
            if supports(p) {
                model_markers_right += 1;
            }
        }
        let mut chosen: Vec<usize> = sentence
            .cited
            .iter()
            .copied()
            .filter(|&p| supports(p))
            .collect();
        chosen.dedup();
        if chosen.is_empty()
            && let Some((best, _)) = scores
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| *s > 0.0)
                .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
        {
            chosen.push(best);
        }
        if words.len() >= MIN_CLAIM_WORDS {
            claims += 1;
            if !chosen.is_empty() {
                supported += 1;
            }
        }
        let mut markers = String::new();
        for p in chosen {
            let marker = match used.iter().position(|&u| u == p) {
                Some(position) => position + 1,
                None => {
                    used.push(p);
                    snippets.push(snippet(&windows[p][scores[p].1].text));
                    used.len()
                }
            };
            markers.push_str(&format!("[{marker}]"));
        }
        out.push_str(&with_markers(&sentence.text, &markers));
        out.push_str(&sentence.trailing);
    }
    let citations = used
        .iter()
        .zip(snippets)
        .enumerate()
        .map(|(i, (&p, snippet))| Citation {
            marker: i + 1,
            document_id: passages[p].document_id.clone(),
            document_title: passages[p].document_title.clone(),
            page: passages[p].page,
            heading_path: passages[p].heading_path.clone(),
            snippet,
            chunk_id: passages[p].chunk_id,
        })
        .collect();
    Aligned {
        text: out.trim_end().to_string(),
        citations,
        support: if claims == 0 {
            0.0
        } else {
            supported as f32 / claims as f32
        },
        model_markers_correct: (model_markers > 0)
            .then(|| model_markers_right as f32 / model_markers as f32),
    }
}

/// Two consecutive sentences of a passage: support must come from one place in it, not from
/// words scattered over the whole passage.
struct Window {
    text: String,
    words: HashSet<String>,
}

fn windows(passage: &str) -> Vec<Window> {
    let parts: Vec<&str> = sentences(passage)
        .into_iter()
        .map(|r| passage[r].trim())
        .filter(|s| !s.is_empty())
        .collect();
    if parts.len() <= 1 {
        return vec![Window {
            text: passage.trim().to_string(),
            words: content_words(passage),
        }];
    }
    parts
        .windows(2)
        .map(|pair| {
            let text = format!("{} {}", pair[0], pair[1]);
            Window {
                words: content_words(&text),
                text,
            }
        })
        .collect()
}

/// "Drink water." + "[1]" → "Drink water [1]."
fn with_markers(sentence: &str, markers: &str) -> String {
    if markers.is_empty() {
        return sentence.to_string();
    }
    match sentence.char_indices().last() {
        Some((i, c)) if matches!(c, '.' | '!' | '?' | ':' | ';') => {
            format!("{} {markers}{}", sentence[..i].trim_end(), c)
        }
        _ => format!("{sentence} {markers}"),
    }
}

/// A quote of at most 300 characters.
fn snippet(text: &str) -> String {
    let mut snippet: String = text.chars().take(300).collect();
    if snippet.len() < text.len() {
        snippet.push('…');
    }
    snippet
}

fn overlap(sentence: &HashSet<String>, passage: &HashSet<String>) -> f32 {
    if sentence.is_empty() {
        return 0.0;
    }
    sentence.intersection(passage).count() as f32 / sentence.len() as f32
}

/// Lower-cased words of three letters or more, cut to five letters (a crude stemmer that makes
/// "sleeping" match "sleep"), without stop words.
pub fn content_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .map(|w| w.chars().take(5).collect())
        .collect()
}

const STOP: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "your", "with", "this", "that", "from",
    "they", "have", "has", "was", "were", "will", "would", "can", "could", "should", "about",
    "into", "than", "then", "there", "their", "what", "when", "where", "which", "who", "why",
    "how", "all", "any", "also", "its", "our", "out", "one", "may", "more", "most", "some", "such",
    "only", "other", "very", "just", "like", "does", "did", "been", "being", "these", "those",
    "here", "yes", "sure", "great", "question",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: i64, text: &str) -> SearchHit {
        SearchHit {
            score: 0.8,
            text: text.into(),
            chunk_id: id,
            document_id: format!("doc{id}"),
            document_title: format!("Doc {id}"),
            filename: "f.txt".into(),
            page: Some(id),
            heading_path: String::new(),
            char_start: 0,
            char_end: 0,
        }
    }

    fn passages() -> Vec<SearchHit> {
        vec![
            passage(
                1,
                "Refunds are paid within 14 days of the request, to the original card.",
            ),
            passage(
                2,
                "Keep the bedroom cool, around 18 degrees, and dark for better sleep.",
            ),
        ]
    }

    #[test]
    fn wrong_markers_are_fixed_missing_ones_added_and_unsupported_ones_dropped() {
        let answer = "Refunds are paid within 14 days [2]. Keep your bedroom cool and dark. \
                      The moon is made of cheese [1]. Sure!";
        let aligned = align(answer, &passages(), None);
        assert_eq!(
            aligned.text,
            "Refunds are paid within 14 days [1]. Keep your bedroom cool and dark [2]. \
             The moon is made of cheese. Sure!"
        );
        assert_eq!(aligned.citations.len(), 2);
        assert_eq!(aligned.citations[0].document_id, "doc1");
        assert_eq!(aligned.citations[1].document_id, "doc2");
        assert!(aligned.citations[1].snippet.contains("18 degrees"));
        // Three claims, two supported; both model markers were wrong.
        assert!((aligned.support - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(aligned.model_markers_correct, Some(0.0));
    }

    #[test]
    fn code_blocks_and_line_breaks_survive_alignment() {
        let answer =
            "Refunds are paid within 14 days.\n\n```python\nrefund(days=14) [1]\n```\nDone.";
        let aligned = align(answer, &passages(), None);
        assert_eq!(
            aligned.text,
            "Refunds are paid within 14 days [1].\n\n```python\nrefund(days=14) [1]\n```\nDone."
        );
        assert_eq!(aligned.citations.len(), 1);
    }

    #[test]
    fn marker_forms_are_recognised() {
        assert_eq!(
            strip_markers("Yes [1, 2][3]."),
            ("Yes.".into(), vec![0, 1, 2])
        );
        assert_eq!(
            strip_markers("Array [i] stays"),
            ("Array [i] stays".into(), vec![])
        );
    }
}
