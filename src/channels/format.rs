//! A stored message as a messaging app shows it: plain text, sources as numbered lines at the
//! end (the apps cannot show our citation cards), split into parts the platform accepts.

use crate::chat::conversations::Message;

/// Telegram's and WhatsApp's limit for one text, in UTF-16 code units (what Telegram counts).
pub const MAX_PART: usize = 4096;

/// The text of a message for a messaging app.
pub fn render(message: &Message) -> String {
    let mut text = match (message.role.as_str(), message.author_name.as_deref()) {
        ("staff", Some(name)) if !name.is_empty() => format!("{name}: {}", message.content),
        _ => message.content.clone(),
    };
    let mut sources: Vec<_> = message.citations.iter().collect();
    sources.sort_by_key(|c| c.marker);
    sources.dedup_by_key(|c| c.marker);
    if !sources.is_empty() {
        text.push_str("\n\nSources:");
        for source in sources {
            text.push_str(&format!("\n[{}] {}", source.marker, source.document_title));
            if let Some(page) = source.page {
                text.push_str(&format!(", p. {page}"));
            }
            if !source.heading_path.is_empty() {
                text.push_str(&format!(" ({})", source.heading_path));
            }
        }
    }
    text
}

fn units(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Splits `text` into parts of at most `limit` UTF-16 units, at the last paragraph break that
/// fits, else a line break, a sentence end, a space, and only then inside a word.
pub fn split(text: &str, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while units(rest) > limit {
        // The longest prefix that fits, on a character boundary.
        let mut fits = 0;
        let mut used = 0;
        for (at, c) in rest.char_indices() {
            if used + c.len_utf16() > limit {
                break;
            }
            used += c.len_utf16();
            fits = at + c.len_utf8();
        }
        let window = &rest[..fits];
        let cut = ["\n\n", "\n", ". ", "! ", "? ", " "]
            .iter()
            .find_map(|boundary| {
                window
                    .rfind(boundary)
                    .filter(|&at| at > fits / 3)
                    .map(|at| at + boundary.trim_end().len())
            })
            .unwrap_or(fits);
        parts.push(rest[..cut].trim_end().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        parts.push(rest.to_string());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_split_at_paragraphs_then_sentences() {
        let paragraph = "Rest two minutes between sets. ".repeat(40);
        let text = format!(
            "{}\n\n{}\n\n{}",
            paragraph.trim(),
            paragraph.trim(),
            paragraph.trim()
        );
        let parts = split(&text, 2600);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| units(p) <= 2600));
        assert!(
            parts[0].ends_with("sets."),
            "{}",
            &parts[0][parts[0].len() - 20..]
        );
        assert_eq!(parts.join("\n\n"), text);

        let one = "Rest two minutes between sets. ".repeat(200);
        let parts = split(&one, 1000);
        assert!(parts.iter().all(|p| units(p) <= 1000 && p.ends_with('.')));
        assert_eq!(parts.join(" "), one.trim());
    }

    #[test]
    fn parts_are_counted_in_utf16_and_never_cut_a_character() {
        let text = "🏋".repeat(3000); // two UTF-16 units each
        let parts = split(&text, MAX_PART);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| units(p) <= MAX_PART));
        assert_eq!(parts.concat(), text);
        assert_eq!(split("short", MAX_PART), vec!["short".to_string()]);
    }
}
