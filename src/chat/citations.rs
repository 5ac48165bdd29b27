//! Citations and the word test behind them. Small models cite wrongly, so every sentence of
//! an answer is checked against the passages (see `faithfulness`): its markers are kept when
//! their passage supports it, otherwise the best supporting passage is cited.
//!
//! A sentence is supported by a passage by its words when enough of its content words
//! (lower-cased, stemmed to their first five letters, without stop words) occur in two
//! consecutive sentences of the passage, or when fewer do but the sentence's embedding is close
//! to the passage's. Markers are renumbered in order of first use.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Share of a sentence's content words found in a passage that counts as support by itself.
pub const LEXICAL_SUPPORT: f32 = 0.5;
/// With at least [`LEXICAL_FLOOR`] word overlap, this cosine between sentence and passage also
/// counts as support (paraphrases).
pub const SEMANTIC_SUPPORT: f32 = 0.6;
pub const LEXICAL_FLOOR: f32 = 0.25;

/// Whether a word overlap and a cosine make a passage support a sentence.
pub fn supports(lexical: f32, semantic: f32) -> bool {
    lexical >= LEXICAL_SUPPORT || (lexical >= LEXICAL_FLOOR && semantic >= SEMANTIC_SUPPORT)
}

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

/// Removes `[1]`, `[1, 2]`, `[1][3]` markers; returns the text and the 0-based indices.
pub fn strip_markers(sentence: &str) -> (String, Vec<usize>) {
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

/// "Drink water." + "[1]" → "Drink water [1]."
pub fn with_markers(sentence: &str, markers: &str) -> String {
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
pub fn snippet(text: &str) -> String {
    let mut snippet: String = text.chars().take(300).collect();
    if snippet.len() < text.len() {
        snippet.push('…');
    }
    snippet
}

pub fn overlap(sentence: &HashSet<String>, passage: &HashSet<String>) -> f32 {
    if sentence.is_empty() {
        return 0.0;
    }
    sentence.intersection(passage).count() as f32 / sentence.len() as f32
}

/// Lower-cased words of three letters or more, without stop words, crudely stemmed: a plural
/// "s", an "ing", "ed" or "ly" ending and a final "e" come off, then the word is cut to five
/// letters. So "sleeping" matches "sleep", "calls" "call", "opening" "open" and "monthly"
/// "month". Both sides of every comparison go through it, so its mistakes cancel out.
pub fn content_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

fn stem(word: &str) -> String {
    let long_enough = |stem: &str, least: usize| stem.chars().count() >= least;
    let mut stem = word;
    if let Some(s) = stem.strip_suffix('s')
        && long_enough(s, 3)
        && !s.ends_with('s')
    {
        stem = s;
    }
    for ending in ["ing", "ed"] {
        if let Some(s) = stem.strip_suffix(ending)
            && long_enough(s, 3)
        {
            stem = s;
            break;
        }
    }
    if let Some(s) = stem.strip_suffix("ly")
        && long_enough(s, 4)
    {
        stem = s;
    }
    if let Some(s) = stem.strip_suffix('e')
        && long_enough(s, 3)
    {
        stem = s;
    }
    stem.chars().take(5).collect()
}

const STOP: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "your", "with", "this", "that", "from",
    "they", "have", "has", "was", "were", "will", "would", "can", "could", "should", "about",
    "into", "than", "then", "there", "their", "what", "when", "where", "which", "who", "why",
    "how", "all", "any", "also", "its", "our", "out", "one", "may", "more", "most", "some", "such",
    "only", "other", "very", "just", "like", "does", "did", "been", "being", "these", "those",
    "here", "yes", "sure", "great", "question",
    // Spanish function words: creators write in Spanish too.
    "los", "las", "del", "que", "por", "para", "con", "una", "uno", "unos", "unas", "como", "más",
    "pero", "sus", "este", "esta", "estos", "estas", "ese", "esa", "hay", "muy", "sin", "sobre",
    "entre", "cuando", "donde", "desde", "hasta", "también", "puede", "pueden", "puedes", "puedo",
    "tu", "tus", "usted", "nuestro", "nuestra", "nos", "les", "todo", "toda", "todos", "todas",
    "qué", "cómo", "cuál", "cuándo", "dónde", "sí", "claro",
];

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(with_markers("Drink water.", "[1]"), "Drink water [1].");
    }

    #[test]
    fn word_forms_meet() {
        for (a, b) in [
            ("sleeping", "sleep"),
            ("calls", "call"),
            ("opening", "open"),
            ("raising", "raise"),
            ("monthly", "month"),
            ("refunds", "refund"),
            ("classes", "class"),
        ] {
            assert_eq!(content_words(a), content_words(b), "{a} / {b}");
        }
    }
}
