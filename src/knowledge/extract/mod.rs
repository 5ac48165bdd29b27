//! Text extraction: a document's bytes in, a list of headings and paragraphs out.
//!
//! Parsers of untrusted files can panic, loop or allocate without bound, so the server never runs
//! them itself: [`crate::knowledge::sandbox`] runs [`extract`] in a child process (`companero
//! extract`) under memory, CPU-time and wall-clock limits.

mod docx;
mod html;
mod markdown;
mod pdf;

use serde::{Deserialize, Serialize};

pub use docx::zip_is_word;

use super::sniff::{DocumentKind, decode_text};

/// Limits on one extraction, configurable by the creator running the server.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ExtractLimits {
    pub max_pages: usize,
    /// Largest decompressed size of a part inside a .docx (guards against zip bombs).
    pub max_part_bytes: u64,
    /// Deepest element nesting in XML/HTML.
    pub max_depth: usize,
}

impl Default for ExtractLimits {
    fn default() -> ExtractLimits {
        ExtractLimits {
            max_pages: 2000,
            max_part_bytes: 100 * 1024 * 1024,
            max_depth: 256,
        }
    }
}

/// A heading or a paragraph, in reading order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub text: String,
    /// `Some(1..=6)` for headings.
    pub heading: Option<u8>,
    /// 1-based page, for paged formats.
    pub page: Option<u32>,
}

impl Block {
    pub fn paragraph(text: impl Into<String>, page: Option<u32>) -> Block {
        Block {
            text: text.into(),
            heading: None,
            page,
        }
    }

    pub fn heading(level: u8, text: impl Into<String>) -> Block {
        Block {
            text: text.into(),
            heading: Some(level.clamp(1, 6)),
            page: None,
        }
    }
}

/// What extraction found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extracted {
    pub blocks: Vec<Block>,
    pub pages: Option<u32>,
    /// A title found inside the document (HTML `<title>`, first heading), if any.
    pub title: Option<String>,
}

/// Why a document could not be read. Messages are for the creator who uploaded it.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
pub enum ExtractError {
    #[error(
        "this PDF is password-protected; remove the password (for example by printing it to a new PDF) and upload it again"
    )]
    EncryptedPdf,
    #[error(
        "this is a password-protected Office file or an old Word .doc; open it in Word, remove the password and save it as .docx"
    )]
    EncryptedOrLegacyWord,
    #[error(
        "this PDF has no text layer; it looks like a scan or images of text. Run it through OCR (text recognition) or upload a text version"
    )]
    NoTextLayer,
    #[error("no text was found in this file")]
    NoText,
    #[error("the file is damaged or not a valid {kind} ({detail})")]
    Corrupt { kind: String, detail: String },
    #[error(
        "the document has {pages} pages; this server accepts at most {max}. Split it into smaller files"
    )]
    TooManyPages { pages: usize, max: usize },
    #[error(
        "a part of this Word file unpacks to more than {max_mb} MB; it may be a zip bomb or hold huge embedded data"
    )]
    PartTooLarge { max_mb: u64 },
    #[error(
        "the document's structure is nested more than {max} levels deep; save it again from its editor"
    )]
    TooDeep { max: usize },
    #[error(
        "reading the file took longer than {seconds} s; it may be damaged or too complex. Try splitting it"
    )]
    TimedOut { seconds: u64 },
    #[error("reading the file needed more memory than allowed; it may be damaged or too large")]
    OutOfMemory,
    #[error("the reader failed on this file ({0}); it may be damaged")]
    ReaderFailed(String),
    /// Not a type we read, found out only inside the file (a zip that is not Word).
    #[error("{0}")]
    Unsupported(String),
}

/// Extracts `bytes` as `kind`. Runs in the sandboxed child process; may panic on hostile input.
pub fn extract(
    kind: DocumentKind,
    bytes: &[u8],
    limits: &ExtractLimits,
) -> Result<Extracted, ExtractError> {
    let mut extracted = match kind {
        DocumentKind::Pdf => pdf::extract(bytes, limits)?,
        DocumentKind::Docx => docx::extract(bytes, limits)?,
        DocumentKind::Html => html::extract(&text_of(bytes)?, limits)?,
        DocumentKind::Markdown => markdown::extract(&text_of(bytes)?),
        DocumentKind::Text => markdown::extract_plain(&text_of(bytes)?),
    };
    extracted
        .blocks
        .retain(|block| !block.text.trim().is_empty());
    if extracted.blocks.iter().all(|b| b.heading.is_some()) {
        return Err(match kind {
            DocumentKind::Pdf => ExtractError::NoTextLayer,
            _ => ExtractError::NoText,
        });
    }
    if extracted.title.is_none() {
        extracted.title = extracted
            .blocks
            .iter()
            .find(|b| b.heading.is_some())
            .map(|b| b.text.clone());
    }
    Ok(extracted)
}

fn text_of(bytes: &[u8]) -> Result<String, ExtractError> {
    decode_text(bytes).ok_or_else(|| ExtractError::Corrupt {
        kind: "text file".into(),
        detail: "it contains binary data".into(),
    })
}

/// Collapses runs of whitespace to single spaces and trims.
pub(crate) fn squash_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_of_headings_only_has_no_text() {
        let error = extract(
            DocumentKind::Markdown,
            b"# Only\n## Headings\n",
            &ExtractLimits::default(),
        )
        .unwrap_err();
        assert_eq!(error, ExtractError::NoText);
    }
}
