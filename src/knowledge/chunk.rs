//! Chunking: extracted blocks into passages sized in the embedder's tokens.
//!
//! Headings and page breaks start a new chunk; headings give the chunks under them their
//! heading path. Paragraphs are
//! packed whole while they fit; a paragraph that does not fit is cut at sentence ends, and a
//! sentence that does not fit at token boundaries. Consecutive chunks of a section share up to
//! `overlap` tokens of whole sentences, so an answer that straddles a cut is still found.

use std::ops::Range;

use super::extract::Extracted;
use crate::inference::embed::TokenCounter;

/// Chunk size in embedder tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSettings {
    pub target_tokens: usize,
    pub overlap_tokens: usize,
}

/// How many tokens a text has and where to cut it; the embedder's tokenizer in production.
pub trait Tokens {
    fn count(&self, text: &str) -> usize;
    /// Byte ranges of at most `max` tokens each, covering `text` in order.
    fn split(&self, text: &str, max: usize) -> Vec<Range<usize>>;
    /// The most tokens one embedder input holds.
    fn max_input(&self) -> usize;
}

impl Tokens for TokenCounter {
    fn count(&self, text: &str) -> usize {
        TokenCounter::count(self, text)
    }
    fn split(&self, text: &str, max: usize) -> Vec<Range<usize>> {
        TokenCounter::split(self, text, max)
    }
    fn max_input(&self) -> usize {
        self.max_input
    }
}

/// A passage ready to store and embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    /// "Chapter > Section", empty when the text is under no heading.
    pub heading_path: String,
    pub page: Option<u32>,
    /// Character (not byte) offsets in [`Layout::text`].
    pub char_start: usize,
    pub char_end: usize,
    pub token_count: usize,
}

impl Chunk {
    /// What the embedder sees: the heading path gives a passage the context it lost when cut.
    pub fn embedding_input(&self) -> String {
        if self.heading_path.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n\n{}", self.heading_path, self.text)
        }
    }
}

/// The document's extracted text as one string: blocks joined by blank lines.
pub struct Layout {
    pub text: String,
    /// Byte offset of each block in `text`.
    starts: Vec<usize>,
}

impl Layout {
    pub fn new(extracted: &Extracted) -> Layout {
        let mut text = String::new();
        let mut starts = Vec::with_capacity(extracted.blocks.len());
        for block in &extracted.blocks {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            starts.push(text.len());
            text.push_str(&block.text);
        }
        Layout { text, starts }
    }
}

/// A contiguous piece of one block: a whole paragraph, a sentence, or a token window.
#[derive(Debug, Clone)]
struct Piece {
    range: Range<usize>,
    tokens: usize,
    page: Option<u32>,
}

/// Heading paths longer than this many tokens are cut, so they never crowd out the text.
const MAX_HEADING_TOKENS: usize = 48;

pub fn chunk(extracted: &Extracted, settings: ChunkSettings, tokens: &dyn Tokens) -> Vec<Chunk> {
    let layout = Layout::new(extracted);
    let chars = CharIndex::new(&layout.text);
    let mut chunker = Chunker {
        layout: &layout,
        chars: &chars,
        tokens,
        settings,
        chunks: Vec::new(),
        current: Vec::new(),
        current_tokens: 0,
        heading_path: String::new(),
        budget: 0,
    };
    let mut headings: Vec<(u8, String)> = Vec::new();
    chunker.set_headings(&headings);
    for (block, &start) in extracted.blocks.iter().zip(&layout.starts) {
        let range = start..start + block.text.len();
        if let Some(level) = block.heading {
            chunker.flush(false);
            headings.retain(|(l, _)| *l < level);
            headings.push((level, block.text.clone()));
            chunker.set_headings(&headings);
            continue;
        }
        // A chunk stays on one page, so a citation's page number is exact.
        if chunker
            .current
            .first()
            .is_some_and(|p| p.page != block.page)
        {
            chunker.flush(false);
        }
        for piece in chunker.pieces(range, block.page) {
            chunker.add(piece);
        }
    }
    chunker.flush(false);
    chunker.chunks
}

struct Chunker<'a> {
    layout: &'a Layout,
    chars: &'a CharIndex,
    tokens: &'a dyn Tokens,
    settings: ChunkSettings,
    chunks: Vec<Chunk>,
    current: Vec<Piece>,
    current_tokens: usize,
    heading_path: String,
    /// Text tokens a chunk may hold under the current heading path.
    budget: usize,
}

impl Chunker<'_> {
    fn set_headings(&mut self, headings: &[(u8, String)]) {
        let path = headings
            .iter()
            .map(|(_, text)| text.as_str())
            .collect::<Vec<_>>()
            .join(" > ");
        let mut path_tokens = if path.is_empty() {
            0
        } else {
            self.tokens.count(&path) + 2
        };
        self.heading_path = path;
        if path_tokens > MAX_HEADING_TOKENS {
            let keep = self
                .tokens
                .split(&self.heading_path, MAX_HEADING_TOKENS)
                .into_iter()
                .next()
                .unwrap_or(0..0);
            self.heading_path.truncate(keep.end);
            path_tokens = MAX_HEADING_TOKENS + 2;
        }
        let room = self.tokens.max_input().saturating_sub(path_tokens);
        self.budget = self.settings.target_tokens.min(room).max(16);
    }

    /// `range` of the layout cut into pieces that each fit the budget.
    fn pieces(&self, range: Range<usize>, page: Option<u32>) -> Vec<Piece> {
        let text = &self.layout.text[range.clone()];
        let tokens = self.tokens.count(text);
        if tokens <= self.budget {
            return vec![Piece {
                range,
                tokens,
                page,
            }];
        }
        let mut pieces = Vec::new();
        for sentence in sentences(text) {
            let sentence_text = &text[sentence.clone()];
            let count = self.tokens.count(sentence_text);
            let absolute = range.start + sentence.start..range.start + sentence.end;
            if count <= self.budget {
                pieces.push(Piece {
                    range: absolute,
                    tokens: count,
                    page,
                });
                continue;
            }
            for window in self.tokens.split(sentence_text, self.budget) {
                let piece = absolute.start + window.start..absolute.start + window.end;
                let count = self.tokens.count(&self.layout.text[piece.clone()]);
                pieces.push(Piece {
                    range: piece,
                    tokens: count,
                    page,
                });
            }
        }
        pieces
    }

    fn add(&mut self, piece: Piece) {
        if !self.current.is_empty() && self.current_tokens + piece.tokens > self.budget {
            self.flush(true);
            // Overlap cannot push the new chunk over budget.
            while !self.current.is_empty() && self.current_tokens + piece.tokens > self.budget {
                let dropped = self.current.remove(0);
                self.current_tokens -= dropped.tokens;
            }
        }
        self.current_tokens += piece.tokens;
        self.current.push(piece);
    }

    /// Emits the current chunk. With `keep_overlap`, its last pieces (up to the overlap) stay
    /// to begin the next chunk.
    fn flush(&mut self, keep_overlap: bool) {
        let (Some(first), Some(last)) = (self.current.first(), self.current.last()) else {
            return;
        };
        let range = first.range.start..last.range.end;
        let text = self.layout.text[range.clone()].to_string();
        self.chunks.push(Chunk {
            token_count: self.tokens.count(&text),
            text,
            heading_path: self.heading_path.clone(),
            page: first.page,
            char_start: self.chars.of(range.start),
            char_end: self.chars.of(range.end),
        });
        let mut kept = Vec::new();
        let mut kept_tokens = 0;
        if keep_overlap {
            for piece in self.current.iter().rev() {
                if kept_tokens + piece.tokens > self.settings.overlap_tokens
                    || kept.len() + 1 == self.current.len()
                {
                    break;
                }
                kept_tokens += piece.tokens;
                kept.push(piece.clone());
            }
            kept.reverse();
        }
        self.current = kept;
        self.current_tokens = kept_tokens;
    }
}

/// Sentence ranges: cuts after `.`, `!`, `?` (and their CJK forms) followed by whitespace, and
/// at line breaks. The ranges cover the text.
pub(crate) fn sentences(text: &str) -> Vec<Range<usize>> {
    split_after(text, |c, next_is_space| {
        matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '\n') && next_is_space
    })
}

/// Ranges that cover `text`, each ending after a character for which `ends(character, whether
/// whitespace or the end follows)` holds, with the whitespace after it.
pub(crate) fn split_after(text: &str, ends: impl Fn(char, bool) -> bool) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        let next_is_space = chars.peek().is_none_or(|(_, next)| next.is_whitespace());
        if ends(c, next_is_space) {
            let mut end = index + c.len_utf8();
            while let Some(&(i, next)) = chars.peek() {
                if !next.is_whitespace() {
                    break;
                }
                end = i + next.len_utf8();
                chars.next();
            }
            if end > start {
                ranges.push(start..end);
            }
            start = end;
        }
    }
    if start < text.len() {
        ranges.push(start..text.len());
    }
    ranges
}

/// Byte offset → character offset, in O(log n).
struct CharIndex {
    /// Byte offsets of every 64th character.
    marks: Vec<usize>,
    text: String,
}

impl CharIndex {
    fn new(text: &str) -> CharIndex {
        let marks = text
            .char_indices()
            .step_by(64)
            .map(|(byte, _)| byte)
            .collect();
        CharIndex {
            marks,
            text: text.to_string(),
        }
    }

    fn of(&self, byte: usize) -> usize {
        let mark = self.marks.partition_point(|&m| m <= byte).saturating_sub(1);
        let from = self.marks.get(mark).copied().unwrap_or(0);
        mark * 64 + self.text[from..byte].chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::extract::Block;

    /// One token per whitespace-separated word.
    struct Words(usize);
    impl Tokens for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
        fn split(&self, text: &str, max: usize) -> Vec<Range<usize>> {
            let mut ranges = Vec::new();
            let mut start = 0;
            let mut words = 0;
            for (i, c) in text.char_indices() {
                let at_word =
                    !c.is_whitespace() && (i == 0 || text[..i].ends_with(char::is_whitespace));
                if at_word {
                    if words == max {
                        ranges.push(start..i);
                        start = i;
                        words = 0;
                    }
                    words += 1;
                }
            }
            ranges.push(start..text.len());
            ranges
        }
        fn max_input(&self) -> usize {
            self.0
        }
    }

    fn doc(blocks: Vec<Block>) -> Extracted {
        Extracted {
            blocks,
            ..Extracted::default()
        }
    }

    #[test]
    fn headings_split_chunks_and_name_them() {
        let extracted = doc(vec![
            Block::heading(1, "Sleep"),
            Block::paragraph("Go to bed early.", None),
            Block::heading(2, "Naps"),
            Block::paragraph("Keep naps short.", None),
            Block::heading(1, "Food"),
            Block::paragraph("Eat plants.", None),
        ]);
        let settings = ChunkSettings {
            target_tokens: 100,
            overlap_tokens: 0,
        };
        let chunks = chunk(&extracted, settings, &Words(512));
        let shape: Vec<_> = chunks
            .iter()
            .map(|c| (c.heading_path.as_str(), c.text.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                ("Sleep", "Go to bed early."),
                ("Sleep > Naps", "Keep naps short."),
                ("Food", "Eat plants.")
            ]
        );
        let layout = Layout::new(&extracted);
        for c in &chunks {
            let slice: String = layout
                .text
                .chars()
                .skip(c.char_start)
                .take(c.char_end - c.char_start)
                .collect();
            assert_eq!(slice, c.text, "offsets point at the chunk's text");
        }
    }

    #[test]
    fn long_text_is_cut_within_budget_with_overlap() {
        let sentence = |i: usize| format!("Sentence number {i} says something useful here.");
        let paragraph: Vec<String> = (0..40).map(sentence).collect();
        let extracted = doc(vec![Block::paragraph(paragraph.join(" "), Some(3))]);
        let settings = ChunkSettings {
            target_tokens: 30,
            overlap_tokens: 8,
        };
        let chunks = chunk(&extracted, settings, &Words(512));
        assert!(chunks.len() > 5);
        for pair in chunks.windows(2) {
            assert!(pair[0].token_count <= 30);
            assert_eq!(pair[0].page, Some(3));
            // The next chunk starts with the previous one's last sentence.
            let last_sentence = pair[0].text.rsplit(". ").next().unwrap();
            assert!(
                pair[1]
                    .text
                    .starts_with(last_sentence.trim_end_matches('.'))
            );
        }
        // Every sentence made it into some chunk.
        for i in 0..40 {
            assert!(chunks.iter().any(|c| c.text.contains(&sentence(i))));
        }
    }

    #[test]
    fn the_embedder_limit_wins_over_the_setting() {
        let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let extracted = doc(vec![Block::paragraph(words.join(" "), None)]);
        let settings = ChunkSettings {
            target_tokens: 1000,
            overlap_tokens: 0,
        };
        let chunks = chunk(&extracted, settings, &Words(25));
        assert!(chunks.iter().all(|c| c.token_count <= 25));
        assert_eq!(chunks.len(), 4);
    }
}
