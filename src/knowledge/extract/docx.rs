//! Word (.docx): `word/document.xml` inside the zip, read with `quick-xml`. Paragraph styles named
//! `Title` or `Heading N` become headings.

use std::io::Read;

use quick_xml::events::{BytesStart, Event};

use super::{Block, ExtractError, ExtractLimits, Extracted, squash_whitespace};

const CFB_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0];

pub fn extract(bytes: &[u8], limits: &ExtractLimits) -> Result<Extracted, ExtractError> {
    if bytes.starts_with(CFB_MAGIC) {
        return Err(ExtractError::EncryptedOrLegacyWord);
    }
    let corrupt = |detail: String| ExtractError::Corrupt {
        kind: "Word document".into(),
        detail,
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| corrupt(format!("not a readable zip: {e}")))?;
    if let Some(what) = other_office_file(&archive) {
        return Err(ExtractError::Unsupported(
            crate::knowledge::sniff::unsupported(what),
        ));
    }
    let xml =
        read_part(&mut archive, "word/document.xml", limits.max_part_bytes).map_err(
            |e| match e {
                PartError::TooLarge => ExtractError::PartTooLarge {
                    max_mb: limits.max_part_bytes / (1024 * 1024),
                },
                PartError::Unreadable(detail) => corrupt(detail),
            },
        )?;
    let blocks = paragraphs(&xml, limits.max_depth).map_err(|e| match e {
        XmlError::TooDeep => ExtractError::TooDeep {
            max: limits.max_depth,
        },
        XmlError::Invalid(detail) => corrupt(detail),
    })?;
    Ok(Extracted {
        blocks,
        pages: None,
        title: None,
    })
}

/// For the upload check: `Ok` for a Word document (or an archive too damaged to tell, which
/// the Word reader then reports), else the refusal naming what the archive is.
pub fn zip_is_word(bytes: &[u8]) -> Result<(), String> {
    match zip::ZipArchive::new(std::io::Cursor::new(bytes)) {
        Ok(archive) => match other_office_file(&archive) {
            Some(what) => Err(crate::knowledge::sniff::unsupported(what)),
            None => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

/// What a zip archive without `word/document.xml` is, named for the creator.
fn other_office_file(archive: &zip::ZipArchive<std::io::Cursor<&[u8]>>) -> Option<&'static str> {
    let has = |name: &str| archive.file_names().any(|n| n.is_ok_and(|n| n == name));
    if has("word/document.xml") {
        None
    } else if has("xl/workbook.xml") {
        Some("an Excel workbook")
    } else if has("ppt/presentation.xml") {
        Some("a PowerPoint presentation")
    } else if has("content.xml") {
        Some("an OpenDocument file (save it as .docx)")
    } else {
        Some("a ZIP archive")
    }
}

enum PartError {
    TooLarge,
    Unreadable(String),
}

/// Reads one part, refusing to inflate more than `max` bytes whatever its header claims.
fn read_part(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    max: u64,
) -> Result<Vec<u8>, PartError> {
    let file = archive
        .by_name(name)
        .map_err(|e| PartError::Unreadable(format!("{name}: {e}")))?;
    if file.size() > max {
        return Err(PartError::TooLarge);
    }
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| PartError::Unreadable(format!("{name}: {e}")))?;
    if out.len() as u64 > max {
        return Err(PartError::TooLarge);
    }
    Ok(out)
}

enum XmlError {
    TooDeep,
    Invalid(String),
}

/// The paragraphs of WordprocessingML, with heading levels from their styles.
fn paragraphs(xml: &[u8], max_depth: usize) -> Result<Vec<Block>, XmlError> {
    let xml = std::str::from_utf8(xml)
        .map_err(|e| XmlError::Invalid(format!("word/document.xml is not UTF-8: {e}")))?;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut blocks = Vec::new();
    let mut depth = 0usize;
    let mut text = String::new();
    let mut style: Option<String> = None;
    let mut in_text_run = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Invalid(format!("word/document.xml: {e}")))?;
        match event {
            Event::Start(element) => {
                depth += 1;
                if depth > max_depth {
                    return Err(XmlError::TooDeep);
                }
                match element.local_name().as_ref() {
                    "t" => in_text_run = true,
                    "p" => {
                        text.clear();
                        style = None;
                    }
                    "pStyle" => style = attribute(&element, "val"),
                    _ => {}
                }
            }
            Event::Empty(element) => match element.local_name().as_ref() {
                "tab" => text.push('\t'),
                "br" | "cr" => text.push('\n'),
                "pStyle" => style = attribute(&element, "val"),
                _ => {}
            },
            Event::Text(content) if in_text_run => {
                text.push_str(&content.xml10_content());
            }
            Event::GeneralRef(reference) if in_text_run => {
                let name: &str = &reference;
                text.push_str(match name {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
                if let Some(code) = reference
                    .resolve_char_ref()
                    .map_err(|e| XmlError::Invalid(e.to_string()))?
                {
                    text.push(code);
                }
            }
            Event::End(element) => {
                depth = depth.saturating_sub(1);
                match element.local_name().as_ref() {
                    "t" => in_text_run = false,
                    "p" => {
                        let content = squash_whitespace(&text);
                        if !content.is_empty() {
                            blocks.push(match style.as_deref().and_then(heading_level) {
                                Some(level) => Block::heading(level, content),
                                None => Block::paragraph(content, None),
                            });
                        }
                        text.clear();
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(blocks)
}

fn attribute(element: &BytesStart<'_>, name: &str) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .map(|a| a.value.into_owned())
}

/// `Title` → 1, `Heading2`/`heading 2` → 2; other styles are body text.
fn heading_level(style: &str) -> Option<u8> {
    let lower = style.to_lowercase().replace(' ', "");
    if lower == "title" {
        return Some(1);
    }
    let level: u8 = lower.strip_prefix("heading")?.parse().ok()?;
    Some(level.clamp(1, 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"<?xml version="1.0"?><w:document xmlns:w="x"><w:body>
        <w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Sleep</w:t></w:r></w:p>
        <w:p><w:r><w:t xml:space="preserve">Go to bed </w:t></w:r><w:r><w:t>at ten &amp; rise early.</w:t></w:r></w:p>
        </w:body></w:document>"#;

    #[test]
    fn headings_and_runs_are_read() {
        let blocks = paragraphs(BODY.as_bytes(), 64).ok().unwrap();
        assert_eq!(
            blocks,
            vec![
                Block::heading(1, "Sleep"),
                Block::paragraph("Go to bed at ten & rise early.", None)
            ]
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(matches!(
            paragraphs(deep.as_bytes(), 50),
            Err(XmlError::TooDeep)
        ));
    }
}
