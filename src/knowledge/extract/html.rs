//! HTML (a saved web page, an exported help centre): parsed with `scraper` (html5ever, the
//! browser algorithm), reduced to headings and paragraphs. Page furniture (navigation, scripts,
//! footers) is skipped, and when the page marks its main content only that is read.

use scraper::{ElementRef, Html, Node, Selector};

use super::{Block, ExtractError, ExtractLimits, Extracted, squash_whitespace};

/// Elements that never hold the document's own text.
const SKIPPED: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "nav", "aside", "footer", "form", "button",
    "select", "iframe", "object", "head",
];
const SKIPPED_ROLES: &[&str] = &[
    "navigation",
    "banner",
    "contentinfo",
    "search",
    "complementary",
];

/// Elements that end a run of inline text.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "blockquote",
    "pre",
    "table",
    "tr",
    "td",
    "th",
    "thead",
    "tbody",
    "br",
    "hr",
    "figure",
    "figcaption",
    "header",
    "body",
    "details",
    "summary",
    "address",
];

pub fn extract(text: &str, limits: &ExtractLimits) -> Result<Extracted, ExtractError> {
    let document = Html::parse_document(text);
    let title = Selector::parse("title").ok().and_then(|selector| {
        document
            .select(&selector)
            .next()
            .map(|t| squash_whitespace(&t.text().collect::<String>()))
            .filter(|t| !t.is_empty())
    });
    let main = ["main", "[role=main]", "article"]
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .find_map(|selector| document.select(&selector).next());
    let root = main.unwrap_or_else(|| document.root_element());
    let mut walker = Walker {
        blocks: Vec::new(),
        inline: String::new(),
        max_depth: limits.max_depth,
    };
    walker.walk(root, 0)?;
    walker.flush();
    Ok(Extracted {
        blocks: walker.blocks,
        pages: None,
        title,
    })
}

struct Walker {
    blocks: Vec<Block>,
    inline: String,
    max_depth: usize,
}

impl Walker {
    fn walk(&mut self, element: ElementRef<'_>, depth: usize) -> Result<(), ExtractError> {
        if depth > self.max_depth {
            return Err(ExtractError::TooDeep {
                max: self.max_depth,
            });
        }
        let name = element.value().name();
        let role = element.value().attr("role").unwrap_or_default();
        if SKIPPED.contains(&name) || SKIPPED_ROLES.contains(&role) {
            return Ok(());
        }
        if let Some(level) = heading_level(name) {
            self.flush();
            // Sphinx and similar generators append a "¶" permalink to headings.
            let text = squash_whitespace(&element.text().collect::<String>());
            let text = text
                .trim_end_matches(['¶', '#', '🔗'])
                .trim_end()
                .to_string();
            if !text.is_empty() {
                self.blocks.push(Block::heading(level, text));
            }
            return Ok(());
        }
        if name == "pre" {
            self.flush();
            let text: String = element.text().collect();
            if !text.trim().is_empty() {
                self.blocks
                    .push(Block::paragraph(text.trim_matches('\n').to_string(), None));
            }
            return Ok(());
        }
        let is_block = BLOCKS.contains(&name);
        if is_block {
            self.flush();
        }
        for child in element.children() {
            match child.value() {
                Node::Text(text) => {
                    self.inline.push_str(text);
                }
                Node::Element(_) => {
                    if let Some(child) = ElementRef::wrap(child) {
                        self.walk(child, depth + 1)?;
                    }
                }
                _ => {}
            }
        }
        if is_block {
            self.flush();
        } else {
            // Inline elements still separate words: "<b>a</b><i>b</i>" is not "ab" in a
            // browser only when they touch; a space is the safer reading for search.
            if matches!(name, "td" | "th" | "span" | "a") && !self.inline.ends_with(' ') {
                self.inline.push(' ');
            }
        }
        Ok(())
    }

    fn flush(&mut self) {
        let text = squash_whitespace(&self.inline);
        if !text.is_empty() {
            self.blocks.push(Block::paragraph(text, None));
        }
        self.inline.clear();
    }
}

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_content_headings_and_paragraphs() {
        let page = r#"<html><head><title>Help centre</title><script>var x=1;</script></head>
            <body><nav>Home | About</nav>
            <div role="main"><h1>Refunds¶</h1><p>Refunds take <b>five</b> days.</p>
            <ul><li>Email us</li><li>Wait</li></ul></div>
            <footer>© 2026</footer></body></html>"#;
        let extracted = extract(page, &ExtractLimits::default()).unwrap();
        assert_eq!(extracted.title.as_deref(), Some("Help centre"));
        let texts: Vec<_> = extracted.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            ["Refunds", "Refunds take five days.", "Email us", "Wait"]
        );
        assert_eq!(extracted.blocks[0].heading, Some(1));
    }
}
