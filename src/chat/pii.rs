//! Personal data in end users' messages: emails, phone numbers, payment cards, IBANs and US
//! social security numbers. Found spans are replaced by a label (`[email]`, `[phone]`, ...) in
//! logs and knowledge gaps always, and before the model when the creator asks for it.

use std::sync::LazyLock;

use regex::Regex;

/// What kinds of personal data a text contains, and the text with them masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    pub text: String,
    pub kinds: Vec<&'static str>,
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").unwrap());
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b").unwrap()
});
static SSN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b\d{3}-\d{2}-\d{4}\b").unwrap());
/// Runs of digits with spaces, dots, dashes or brackets: cards and phone numbers.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\+?\(?\d[\d\s().-]{6,}\d").unwrap());

/// Masks every kind of personal data in `text`.
pub fn mask(text: &str) -> Masked {
    let mut kinds = Vec::new();
    let mut out = replace(&EMAIL, text, "[email]", &mut kinds, "email", |_| true);
    out = replace(&IBAN, &out, "[iban]", &mut kinds, "iban", |_| true);
    out = replace(&SSN, &out, "[ssn]", &mut kinds, "ssn", |_| true);
    let mut numbers = String::with_capacity(out.len());
    let mut last = 0;
    for found in NUMBER.find_iter(&out) {
        let digits: String = found
            .as_str()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let label = if (13..=19).contains(&digits.len()) && luhn(&digits) {
            Some(("[card]", "card"))
        } else if (9..=15).contains(&digits.len()) {
            Some(("[phone]", "phone"))
        } else {
            None
        };
        if let Some((label, kind)) = label {
            numbers.push_str(&out[last..found.start()]);
            numbers.push_str(label);
            last = found.end();
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    }
    numbers.push_str(&out[last..]);
    Masked {
        text: numbers,
        kinds,
    }
}

fn replace(
    pattern: &Regex,
    text: &str,
    label: &str,
    kinds: &mut Vec<&'static str>,
    kind: &'static str,
    accept: impl Fn(&str) -> bool,
) -> String {
    let mut found_any = false;
    let replaced = pattern.replace_all(text, |captures: &regex::Captures<'_>| {
        let found = &captures[0];
        if accept(found) {
            found_any = true;
            label.to_string()
        } else {
            found.to_string()
        }
    });
    if found_any && !kinds.contains(&kind) {
        kinds.push(kind);
    }
    replaced.into_owned()
}

/// The Luhn checksum that every payment card number satisfies.
fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_masked_by_kind() {
        let masked = mask(
            "Mail me at ana.lopez@example.com or call +34 612 345 678; card 4111 1111 1111 1111, \
             IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789.",
        );
        assert_eq!(
            masked.text,
            "Mail me at [email] or call [phone]; card [card], IBAN [iban], SSN [ssn]."
        );
        assert_eq!(masked.kinds, ["email", "iban", "ssn", "phone", "card"]);
    }

    #[test]
    fn ordinary_numbers_are_left_alone() {
        let text = "I ran 5 km in 2024, 3 times a week, and weigh 72.5 kg.";
        assert_eq!(mask(text).text, text);
        assert!(mask(text).kinds.is_empty());
        // Sixteen digits that fail the card checksum are not a card.
        assert!(!mask("order 1234 5678 9012 3456").kinds.contains(&"card"));
    }
}
