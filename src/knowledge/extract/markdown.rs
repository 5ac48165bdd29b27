//! Markdown (with `pulldown-cmark`) and plain text (paragraphs at blank lines).

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use super::{Block, Extracted, squash_whitespace};

pub fn extract(text: &str) -> Extracted {
    let mut blocks = Vec::new();
    let mut current = String::new();
    let mut heading: Option<u8> = None;
    let mut in_code = false;
    let flush = |blocks: &mut Vec<Block>, current: &mut String, heading: Option<u8>, code| {
        let text = if code {
            current.trim_matches('\n').to_string()
        } else {
            squash_whitespace(current)
        };
        if !text.trim().is_empty() {
            blocks.push(match heading {
                Some(level) => Block::heading(level, text),
                None => Block::paragraph(text, None),
            });
        }
        current.clear();
    };
    for event in Parser::new_ext(text, pulldown_cmark::Options::all()) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                flush(&mut blocks, &mut current, None, false);
                heading = Some(level_number(level));
            }
            Event::End(TagEnd::Heading(_)) => {
                flush(&mut blocks, &mut current, heading, false);
                heading = None;
            }
            Event::Start(Tag::CodeBlock(_)) => {
                flush(&mut blocks, &mut current, None, false);
                in_code = true;
            }
            Event::End(TagEnd::CodeBlock) => {
                flush(&mut blocks, &mut current, None, true);
                in_code = false;
            }
            Event::Start(Tag::Paragraph | Tag::Item | Tag::BlockQuote(_) | Tag::TableRow)
            | Event::End(
                TagEnd::Paragraph | TagEnd::Item | TagEnd::BlockQuote(_) | TagEnd::TableRow,
            ) if heading.is_none() && !in_code => {
                flush(&mut blocks, &mut current, None, false);
            }
            Event::End(TagEnd::TableCell) => current.push_str(" | "),
            Event::Text(text) | Event::Code(text) => current.push_str(&text),
            Event::SoftBreak => current.push(if in_code { '\n' } else { ' ' }),
            Event::HardBreak => current.push('\n'),
            _ => {}
        }
    }
    flush(&mut blocks, &mut current, heading, in_code);
    Extracted {
        blocks,
        pages: None,
        title: None,
    }
}

/// Plain text: blank lines separate paragraphs; line breaks inside a paragraph are kept as
/// spaces (wrapped text) unless the lines look like a list.
pub fn extract_plain(text: &str) -> Extracted {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let blocks = normalized
        .split("\n\n")
        .map(|paragraph| paragraph.trim())
        .filter(|paragraph| !paragraph.is_empty())
        .map(|paragraph| Block::paragraph(squash_whitespace(paragraph), None))
        .collect();
    Extracted {
        blocks,
        pages: None,
        title: None,
    }
}

fn level_number(level: HeadingLevel) -> u8 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_headings_paragraphs_and_lists() {
        let doc = "# Habits\n\nSmall steps\nadd up.\n\n## Morning\n\n- Water\n- Walk\n";
        let blocks = extract(doc).blocks;
        let shape: Vec<_> = blocks
            .iter()
            .map(|b| (b.heading, b.text.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                (Some(1), "Habits"),
                (None, "Small steps add up."),
                (Some(2), "Morning"),
                (None, "Water"),
                (None, "Walk")
            ]
        );
    }

    #[test]
    fn plain_text_paragraphs() {
        let blocks = extract_plain("One\nline.\r\n\r\nTwo.").blocks;
        assert_eq!(
            blocks,
            [
                Block::paragraph("One line.", None),
                Block::paragraph("Two.", None)
            ]
        );
    }
}
