//! What kind of document an upload is, decided from its bytes (never from its name).

use serde::{Deserialize, Serialize};

/// The document types the knowledge base reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DocumentKind {
    Pdf,
    /// Word (.docx). Old binary .doc and password-protected Office files share a container
    /// format; they are accepted here and fail in extraction with an explanation.
    Docx,
    Html,
    Markdown,
    Text,
}

impl DocumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Pdf => "pdf",
            DocumentKind::Docx => "docx",
            DocumentKind::Html => "html",
            DocumentKind::Markdown => "markdown",
            DocumentKind::Text => "text",
        }
    }

    pub fn parse(text: &str) -> Option<DocumentKind> {
        [
            DocumentKind::Pdf,
            DocumentKind::Docx,
            DocumentKind::Html,
            DocumentKind::Markdown,
            DocumentKind::Text,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// The media type the original is served back with.
    pub fn media_type(self) -> &'static str {
        match self {
            DocumentKind::Pdf => "application/pdf",
            DocumentKind::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            DocumentKind::Html => "text/html; charset=utf-8",
            DocumentKind::Markdown => "text/markdown; charset=utf-8",
            DocumentKind::Text => "text/plain; charset=utf-8",
        }
    }
}

/// Compound File Binary: legacy .doc/.xls and encrypted OOXML.
const CFB_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// Formats people upload by mistake, named so the refusal can say what the file is.
const KNOWN_BINARIES: &[(&[u8], &str)] = &[
    (b"\x89PNG", "a PNG image"),
    (b"\xFF\xD8\xFF", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "an audio, video or WebP file"),
    (b"\x1F\x8B", "a gzip archive"),
    (b"7z\xBC\xAF", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7FELF", "a program"),
    (b"MZ", "a Windows program"),
    (b"{\\rtf", "a Rich Text (.rtf) file"),
];

/// What the refusals suggest instead.
const SUPPORTED: &str = "upload a PDF, Word (.docx), HTML, Markdown or plain-text file";

/// The refusal of a file that is `what` (e.g. "a PNG image").
pub fn unsupported(what: &str) -> String {
    format!("this is {what}; {SUPPORTED}")
}

/// Whether `bytes` start like a zip archive. A zip is taken as Word by [`sniff`]; which kind of
/// archive it really is (Word, Excel, ...) is decided by reading its central directory, which
/// only the sandboxed reader does (`Sandbox::check_zip`).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Decides the kind of `bytes` from their first bytes and, for text, their encoding; or
/// explains (for the creator) why it is not one we read. Never parses a container format.
pub fn sniff(bytes: &[u8]) -> Result<DocumentKind, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    // The PDF header may follow up to 1 KiB of junk.
    if find(&bytes[..bytes.len().min(1024)], b"%PDF-").is_some() {
        return Ok(DocumentKind::Pdf);
    }
    if bytes.starts_with(CFB_MAGIC) || is_zip(bytes) {
        return Ok(DocumentKind::Docx);
    }
    if let Some((_, what)) = KNOWN_BINARIES
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
    {
        return Err(unsupported(what));
    }
    let Some(text) = decode_text(bytes) else {
        return Err(unsupported("not a document we can read (binary data)"));
    };
    Ok(classify_text(&text))
}

/// Text in UTF-8 (with or without BOM), UTF-16 with BOM, or, failing those, Windows-1252 when
/// the bytes look like text. `None` for binary data.
pub fn decode_text(bytes: &[u8]) -> Option<String> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return String::from_utf8(rest.to_vec()).ok();
    }
    for (bom, little_endian) in [(b"\xFF\xFE", true), (b"\xFE\xFF", false)] {
        if let Some(rest) = bytes.strip_prefix(bom) {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|pair| {
                    if little_endian {
                        u16::from_le_bytes([pair[0], pair[1]])
                    } else {
                        u16::from_be_bytes([pair[0], pair[1]])
                    }
                })
                .collect();
            return String::from_utf16(&units).ok();
        }
    }
    let looks_binary = |text: &str| {
        let controls = text
            .chars()
            .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{0C}'))
            .count();
        text.contains('\0') || controls * 100 > text.chars().count().max(1)
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => (!looks_binary(text)).then(|| text.to_string()),
        Err(_) => {
            let text: String = bytes.iter().map(|&b| windows_1252(b)).collect();
            (!looks_binary(&text)).then_some(text)
        }
    }
}

/// Windows-1252, the usual encoding of text files that are not UTF-8.
fn windows_1252(byte: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž',
        '\u{8F}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}',
        'ž', 'Ÿ',
    ];
    match byte {
        0x80..=0x9F => HIGH[(byte - 0x80) as usize],
        _ => byte as char,
    }
}

/// HTML, Markdown or plain text, from how the text begins and what it uses.
fn classify_text(text: &str) -> DocumentKind {
    let head: String = text
        .trim_start()
        .chars()
        .take(2048)
        .collect::<String>()
        .to_lowercase();
    if head.starts_with("<!doctype html")
        || head.starts_with("<html")
        || (head.starts_with("<?xml") && head.contains("<html"))
        || ["<head", "<body", "<p>", "<div", "<h1", "<article"]
            .iter()
            .any(|tag| head.starts_with(tag))
    {
        return DocumentKind::Html;
    }
    let mut signals = 0;
    let mut in_fence = false;
    for line in text.lines().take(400) {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            signals += 1;
            continue;
        }
        if in_fence {
            continue;
        }
        let heading = trimmed.starts_with('#')
            && trimmed.trim_start_matches('#').starts_with(' ')
            && trimmed.len() - trimmed.trim_start_matches('#').len() <= 6;
        let link = trimmed.contains("](") && trimmed.contains('[');
        let emphasis = trimmed.contains("**") || trimmed.contains("__");
        if heading || link || emphasis {
            signals += 1;
        }
    }
    if signals >= 2 {
        DocumentKind::Markdown
    } else {
        DocumentKind::Text
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_bytes() {
        assert_eq!(sniff(b"%PDF-1.7\n..."), Ok(DocumentKind::Pdf));
        assert_eq!(
            sniff(b"<!DOCTYPE html><html><body><p>Hi</p></body></html>"),
            Ok(DocumentKind::Html)
        );
        assert_eq!(
            sniff(b"# Title\n\nSome **bold** text and a [link](x).\n"),
            Ok(DocumentKind::Markdown)
        );
        assert_eq!(
            sniff(b"Just a note.\n\nWith two paragraphs."),
            Ok(DocumentKind::Text)
        );
        assert_eq!(sniff(CFB_MAGIC), Ok(DocumentKind::Docx));
    }

    #[test]
    fn binaries_and_empty_files_are_refused_with_a_reason() {
        assert!(
            sniff(b"\x89PNG\r\n\x1a\n....")
                .unwrap_err()
                .contains("PNG image")
        );
        assert!(sniff(b"").unwrap_err().contains("empty"));
        assert!(
            sniff(&[0u8, 1, 2, 3, 0, 0, 7, 8])
                .unwrap_err()
                .contains("binary")
        );
    }

    #[test]
    fn legacy_encodings_are_decoded() {
        assert_eq!(
            decode_text(b"caf\xe9 \x93quoted\x94").unwrap(),
            "café “quoted”"
        );
        assert_eq!(decode_text(b"\xFF\xFEh\0i\0").unwrap(), "hi");
    }
}
