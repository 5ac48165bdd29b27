//! PDF text through `lopdf` (parsing, decryption) and `pdf-extract` (text layout per page).

use lopdf::Document;

use super::{Block, ExtractError, ExtractLimits, Extracted, squash_whitespace};

pub fn extract(bytes: &[u8], limits: &ExtractLimits) -> Result<Extracted, ExtractError> {
    let declares_encryption = bytes.windows(8).any(|w| w == b"/Encrypt");
    let mut document = Document::load_mem(bytes).map_err(|error| {
        if declares_encryption {
            ExtractError::EncryptedPdf
        } else {
            ExtractError::Corrupt {
                kind: "PDF".into(),
                detail: error.to_string(),
            }
        }
    })?;
    // Many PDFs are "encrypted" with an empty user password (only printing/copying is
    // restricted); those open fine. A real password cannot be supplied here.
    if document.is_encrypted() && document.decrypt("").is_err() {
        return Err(ExtractError::EncryptedPdf);
    }
    let pages = document.get_pages();
    if pages.len() > limits.max_pages {
        return Err(ExtractError::TooManyPages {
            pages: pages.len(),
            max: limits.max_pages,
        });
    }
    let mut extracted = Extracted {
        pages: Some(pages.len() as u32),
        title: title_of(&document),
        ..Extracted::default()
    };
    let mut failures = 0;
    for &number in pages.keys() {
        let mut text = String::new();
        let result = {
            let mut output = pdf_extract::PlainTextOutput::new(&mut text);
            pdf_extract::output_doc_page(&document, &mut output, number)
        };
        if result.is_err() {
            // One unreadable page should not lose the rest of the document.
            failures += 1;
            continue;
        }
        for paragraph in paragraphs(&text) {
            extracted
                .blocks
                .push(Block::paragraph(paragraph, Some(number)));
        }
    }
    if failures > 0 && failures == pages.len() {
        return Err(ExtractError::Corrupt {
            kind: "PDF".into(),
            detail: "no page could be read".into(),
        });
    }
    if extracted.blocks.is_empty() {
        return Err(ExtractError::NoTextLayer);
    }
    Ok(extracted)
}

/// The Info dictionary's Title, when it is a real title rather than a file name or tool default.
fn title_of(document: &Document) -> Option<String> {
    let info = document.trailer.get(b"Info").ok()?.as_reference().ok()?;
    let title = document.get_dictionary(info).ok()?.get(b"Title").ok()?;
    let text = match title {
        lopdf::Object::String(bytes, _) => lopdf::decode_text_string(title)
            .ok()
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
        _ => return None,
    };
    let text = squash_whitespace(&text);
    let looks_generated = text.is_empty()
        || text.to_lowercase().starts_with("microsoft word")
        || text.to_lowercase().ends_with(".pdf")
        || text.to_lowercase() == "untitled";
    (!looks_generated).then_some(text)
}

/// Splits a page's text into paragraphs at blank lines, joining wrapped lines and words that
/// were hyphenated across a line break.
pub(crate) fn paragraphs(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let text = squash_whitespace(current);
        if !text.is_empty() {
            out.push(text);
        }
        current.clear();
    };
    for line in page.lines() {
        let line = line.trim();
        if line.is_empty() {
            flush(&mut current);
            continue;
        }
        let joins_hyphenated = current.ends_with('-')
            && current.len() >= 2
            && current[..current.len() - 1]
                .chars()
                .last()
                .is_some_and(char::is_alphabetic)
            && line.chars().next().is_some_and(char::is_lowercase);
        if joins_hyphenated {
            current.pop();
        } else if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(line);
    }
    flush(&mut current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_lines_join_and_blank_lines_split() {
        let page = "The quick brown\nfox jumps over a hyphen-\nated word.\n\n  Second para.\n";
        assert_eq!(
            paragraphs(page),
            vec![
                "The quick brown fox jumps over a hyphenated word.",
                "Second para."
            ]
        );
    }

    #[test]
    fn garbage_is_reported_as_damaged() {
        let error = extract(b"%PDF-1.4\nthis is not a pdf", &ExtractLimits::default()).unwrap_err();
        assert!(matches!(error, ExtractError::Corrupt { .. }), "{error:?}");
    }
}
