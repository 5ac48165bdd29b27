//! The details of a sentence that a small model gets wrong while the words around them look
//! right: numbers, durations, frequencies, amounts, percentages, times, dates, weekdays, named
//! entities, negations and qualifiers ("any", "only"). Each fact has a normalised key, so
//! "fourteen days", "14 days", "14-day" and "two weeks" are the same fact (`days:14`) and a
//! passage can be searched for it by key.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FactKind {
    Number,
    Duration,
    Frequency,
    Amount,
    Percent,
    Time,
    Date,
    Weekday,
    Entity,
    Negation,
    Qualifier,
}

impl FactKind {
    /// Facts whose value must be found in the passage (the "hard" facts): a wrong one is an
    /// invented detail. Negations and qualifiers change meaning too, but the cheap test for
    /// them (the word is there or not) is coarser, so `balanced` leaves them out.
    pub fn is_value(self) -> bool {
        !matches!(self, FactKind::Negation | FactKind::Qualifier)
    }
}

/// One fact: how the sentence wrote it and its normalised key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub kind: FactKind,
    pub text: String,
    pub key: String,
}

static EMAIL_OR_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}|\bhttps?://[^\s)>\]]+|\b(?:www\.)?[a-z0-9-]+\.(?:com|org|net|io|app|co|de|fr|es|uk|eu)\b(?:/[^\s)>\]]*)?",
    )
    .unwrap()
});

/// A word, a number (with `1,000`, `29.99`, `9:30` kept whole) or one of `€ $ £ %`.
static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d+(?:[.,:]\d+)*|[\p{L}\p{N}]+(?:['’][\p{L}]+)?|[€$£%]").unwrap()
});

struct Token<'a> {
    text: &'a str,
    lower: String,
    /// First token of its sentence (a capital there says nothing about a name).
    opens: bool,
    /// What separates it from the token before.
    gap: &'a str,
}

fn tokens(sentence: &str) -> Vec<Token<'_>> {
    let mut out: Vec<Token<'_>> = Vec::new();
    let mut last_end = 0;
    for m in TOKEN.find_iter(sentence) {
        let between = &sentence[last_end..m.start()];
        // After a colon or a dash that opens a list item a capital starts a phrase of its own.
        // In brackets or quotes it does not: "(EU)", "Plan Cancellation" name something.
        let opens = out.is_empty()
            || between.contains(['.', '!', '?', ':', '\n', '•'])
            || between.trim_start().starts_with("- ");
        out.push(Token {
            text: m.as_str(),
            lower: m.as_str().to_lowercase(),
            opens,
            gap: between,
        });
        last_end = m.end();
    }
    out
}

/// "fourteen" → 14, "14" → 14, "1,000" → 1000, "29.90" → 29.9.
fn number(lower: &str) -> Option<f64> {
    if lower.starts_with(|c: char| c.is_ascii_digit()) {
        if lower.contains(':') {
            return None;
        }
        return parse_digits(lower);
    }
    let small = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    if let Some(n) = small.iter().position(|w| *w == lower) {
        return Some(n as f64);
    }
    let tens = [
        ("thirty", 30.0),
        ("forty", 40.0),
        ("fifty", 50.0),
        ("sixty", 60.0),
        ("seventy", 70.0),
        ("eighty", 80.0),
        ("ninety", 90.0),
        ("hundred", 100.0),
        ("thousand", 1000.0),
        ("twice", 2.0),
        // Spanish ("once", eleven, is left out: it is an English word too).
        ("dos", 2.0),
        ("tres", 3.0),
        ("cuatro", 4.0),
        ("cinco", 5.0),
        ("seis", 6.0),
        ("siete", 7.0),
        ("ocho", 8.0),
        ("nueve", 9.0),
        ("diez", 10.0),
        ("doce", 12.0),
        ("catorce", 14.0),
        ("quince", 15.0),
        ("veinte", 20.0),
        ("treinta", 30.0),
        ("single", 1.0),
        ("half", 0.5),
    ];
    tens.iter().find(|(w, _)| *w == lower).map(|(_, n)| *n)
}

/// Digits with separators, whatever the locale: with both "." and ",", the last one is the
/// decimal point ("1,299.99", "1.234,56"); one kind used more than once, or once before exactly
/// three digits, groups thousands ("1.000.000", "1,000", "1.000"); otherwise it is the decimal
/// point ("29.99", "2,5").
fn parse_digits(text: &str) -> Option<f64> {
    let separators: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| matches!(c, '.' | ','))
        .collect();
    let Some(&(last_at, last)) = separators.last() else {
        return text.parse().ok();
    };
    let mixed = separators.iter().any(|(_, c)| *c != last);
    let single_decimal = separators.len() == 1 && text.len() - last_at - 1 != 3;
    let decimal = (mixed || single_decimal).then_some(last_at);
    let plain: String = text
        .char_indices()
        .filter_map(|(at, c)| match c {
            '.' | ',' if Some(at) == decimal => Some('.'),
            '.' | ',' => None,
            c => Some(c),
        })
        .collect();
    plain.parse().ok()
}

/// `text` without its number words and numbers ("Can I book two calls?" → "Can I book calls?").
pub fn without_numbers(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| {
            let word = w
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            // "twice" and "half" say how, not how many: they stay.
            number(&word).is_none() || matches!(word.as_str(), "twice" | "single" | "half")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A unit of time → (unit of the key, how many of it). Weeks and fortnights are counted in
/// days, hours in minutes, years in months: "two weeks" is "14 days", but "a month" is not "30
/// days" (that would not be safe).
fn time_unit(lower: &str) -> Option<(&'static str, f64)> {
    if matches!(lower, "mes" | "meses") {
        return Some(("months", 1.0));
    }
    let singular = lower.strip_suffix('s').unwrap_or(lower);
    Some(match singular {
        "minuto" => ("minutes", 1.0),
        "hora" => ("minutes", 60.0),
        "día" | "dia" => ("days", 1.0),
        "semana" => ("days", 7.0),
        "quincena" => ("days", 14.0),
        "año" | "ano" => ("months", 12.0),
        "minute" | "min" => ("minutes", 1.0),
        "hour" | "hr" | "hrs" | "h" => ("minutes", 60.0),
        "day" | "night" => ("days", 1.0),
        "week" | "wk" => ("days", 7.0),
        "fortnight" => ("days", 14.0),
        "month" => ("months", 1.0),
        "year" | "yr" => ("months", 12.0),
        _ => return None,
    })
}

/// "weekly" → week, "monthly" → month.
fn frequency_word(lower: &str) -> Option<&'static str> {
    Some(match lower {
        "daily" | "nightly" => "day",
        "weekly" => "week",
        "fortnightly" | "biweekly" => "fortnight",
        "monthly" => "month",
        "yearly" | "annually" | "annual" => "year",
        "hourly" => "hour",
        _ => return None,
    })
}

fn currency(token: &str) -> Option<&'static str> {
    Some(match token {
        "€" | "eur" | "euro" | "euros" => "eur",
        "$" | "usd" | "dollar" | "dollars" => "usd",
        "£" | "gbp" | "pound" | "pounds" | "libra" | "libras" => "gbp",
        "dólar" | "dólares" | "dolar" | "dolares" => "usd",
        "peso" | "pesos" | "mxn" | "ars" | "cop" | "clp" => "peso",
        "chf" | "franc" | "francs" | "franco" | "francos" => "chf",
        "cad" => "cad",
        "aud" => "aud",
        _ => return None,
    })
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// "January", "Jan" → "jan". "may" and "march" count only written with a capital (they are
/// also an ordinary verb).
fn month(token: &Token<'_>) -> Option<&'static str> {
    let lower = token.lower.as_str();
    let found = MONTHS
        .iter()
        .find(|m| **m == lower || (lower.len() == 3 && m.starts_with(lower) && lower != "may"))?;
    let capital = token.text.starts_with(char::is_uppercase);
    if matches!(*found, "may" | "march") && !capital {
        return None;
    }
    Some(&found[..3])
}

fn weekday(lower: &str) -> Option<&'static str> {
    let spanish = match lower {
        "lunes" => Some("mon"),
        "martes" => Some("tue"),
        "miércoles" | "miercoles" => Some("wed"),
        "jueves" => Some("thu"),
        "viernes" => Some("fri"),
        "sábado" | "sábados" | "sabado" | "sabados" => Some("sat"),
        "domingo" | "domingos" => Some("sun"),
        _ => None,
    };
    if spanish.is_some() {
        return spanish;
    }
    let singular = lower.strip_suffix('s').unwrap_or(lower);
    WEEKDAYS
        .iter()
        .find(|d| **d == singular)
        .map(|d| &d[..3])
        .or(match singular {
            "weekend" => Some("weekend"),
            "weekday" => Some("weekday"),
            _ => None,
        })
}

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "cannot", "without", "nor", "neither", "nothing", "nobody",
    // Spanish ("no" is shared).
    "nunca", "sin", "ni", "nada", "nadie", "ningún", "ninguna", "ninguno", "tampoco", "jamás",
];

/// Words that narrow or widen a claim: "any card" is not "the card used for the purchase".
const QUALIFIERS: &[&str] = &[
    "any",
    "every",
    "all",
    "only",
    "always",
    "must",
    "unlimited",
    "maximum",
    "minimum",
    "free",
    "guaranteed",
    "automatically",
    "immediately",
    "instantly",
    "anytime",
    "anywhere",
    "everyone",
    "anyone",
    "exclusively",
    // Spanish
    "cualquier",
    "cualquiera",
    "solo",
    "sólo",
    "solamente",
    "únicamente",
    "siempre",
    "gratis",
    "gratuito",
    "gratuita",
    "ilimitado",
    "ilimitada",
    "automáticamente",
    "inmediatamente",
];

/// Capitalised words that are not names.
const NOT_NAMES: &[&str] = &[
    "i", "i'm", "i’m", "i've", "i’ve", "i'll", "i’ll", "i'd", "i’d", "ok", "okay",
];

fn is_negation(lower: &str) -> bool {
    NEGATIONS.contains(&lower) || lower.ends_with("n't") || lower.ends_with("n’t")
}

/// Every fact in `sentence`, in order.
pub fn facts(sentence: &str) -> Vec<Fact> {
    let mut out = Vec::new();
    let mut rest = String::with_capacity(sentence.len());
    let mut last = 0;
    for m in EMAIL_OR_URL.find_iter(sentence) {
        let text = m.as_str().trim_end_matches(['.', ',']);
        out.push(Fact {
            kind: FactKind::Entity,
            text: text.to_string(),
            key: format!("entity:{}", text.to_lowercase()),
        });
        rest.push_str(&sentence[last..m.start()]);
        rest.push(' ');
        last = m.end();
    }
    rest.push_str(&sentence[last..]);
    let tokens = tokens(&rest);
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        let lower = token.lower.as_str();
        let next = tokens.get(i + 1).map(|t| t.lower.as_str()).unwrap_or("");
        let previous = i
            .checked_sub(1)
            .map(|p| tokens[p].lower.as_str())
            .unwrap_or("");
        let mut push = |kind, text: String, key: String, used: usize| {
            out.push(Fact { kind, text, key });
            used
        };
        let used = if let Some(code) = currency(lower).filter(|_| !lower.is_empty())
            && let Some(n) = number(next).filter(|_| lower.len() <= 3)
        {
            // "€29", "$ 10", "EUR 29"
            push(
                FactKind::Amount,
                format!("{}{}", token.text, tokens[i + 1].text),
                format!("amount:{code}:{}", format_number(n)),
                2,
            )
        } else if let Some(n) = number(lower) {
            let unit = next.strip_prefix('-').unwrap_or(next);
            let after = |k: usize| tokens.get(i + k).map(|t| t.lower.as_str()).unwrap_or("");
            // "1st of March", "3rd March"
            let ordinal = matches!(unit, "st" | "nd" | "rd" | "th" | "º" | "o");
            let month_at = if ordinal { 2 } else { 1 };
            let month_at = if matches!(after(month_at), "of" | "de") {
                month_at + 1
            } else {
                month_at
            };
            let dated = tokens.get(i + month_at).and_then(month);
            if let Some(month) = dated.filter(|_| (1.0..=31.0).contains(&n) && n.fract() == 0.0) {
                push(
                    FactKind::Date,
                    tokens[i..=i + month_at]
                        .iter()
                        .map(|t| t.text)
                        .collect::<Vec<_>>()
                        .join(" "),
                    format!("date:{month}:{}", format_number(n)),
                    month_at + 1,
                )
            } else if n == 0.5
                && matches!(unit, "a" | "an")
                && let Some((key_unit, scale)) = time_unit(after(2))
            {
                // "half an hour"
                push(
                    FactKind::Duration,
                    format!(
                        "{} {} {}",
                        token.text,
                        tokens[i + 1].text,
                        tokens[i + 2].text
                    ),
                    format!("{key_unit}:{}", format_number(0.5 * scale)),
                    3,
                )
            } else if matches!((unit, after(2)), ("per", "cent") | ("por", "ciento")) {
                push(
                    FactKind::Percent,
                    format!("{}%", token.text),
                    format!("percent:{}", format_number(n)),
                    3,
                )
            } else if matches!(unit, "am" | "pm")
                && let Some((hours, minutes)) = lower.split_once(['.', ','])
                && let (Ok(hours), Ok(minutes)) = (hours.parse::<u32>(), minutes.parse::<u32>())
                && hours <= 12
                && minutes < 60
                && lower.len() - hours.to_string().len() == 3
            {
                // "9.30 am"
                let hours = (hours % 12) + if unit == "pm" { 12 } else { 0 };
                push(
                    FactKind::Time,
                    format!("{} {}", token.text, tokens[i + 1].text),
                    format!("time:{hours:02}:{minutes:02}"),
                    2,
                )
            } else if let Some(code) = currency(unit) {
                push(
                    FactKind::Amount,
                    format!("{} {}", token.text, tokens[i + 1].text),
                    format!("amount:{code}:{}", format_number(n)),
                    2,
                )
            } else if unit == "%" || unit == "percent" {
                push(
                    FactKind::Percent,
                    format!("{}%", token.text),
                    format!("percent:{}", format_number(n)),
                    2,
                )
            } else if let Some((key_unit, scale)) = time_unit(unit) {
                push(
                    FactKind::Duration,
                    format!("{} {}", token.text, tokens[i + 1].text),
                    format!("{key_unit}:{}", format_number(n * scale)),
                    2,
                )
            } else if matches!(unit, "am" | "pm") && n <= 12.0 {
                let hours = (n as i64 % 12) + if unit == "pm" { 12 } else { 0 };
                push(
                    FactKind::Time,
                    format!("{} {}", token.text, tokens[i + 1].text),
                    format!("time:{hours:02}:00"),
                    2,
                )
            } else {
                push(
                    FactKind::Number,
                    token.text.to_string(),
                    format!("number:{}", format_number(n)),
                    1,
                )
            }
        } else if let Some(time) = clock(lower, next) {
            let used = if matches!(next, "am" | "pm") { 2 } else { 1 };
            let text = tokens[i..i + used]
                .iter()
                .map(|t| t.text)
                .collect::<Vec<_>>()
                .join(" ");
            push(FactKind::Time, text, format!("time:{time}"), used)
        } else if let Some(month) = month(token) {
            match number(next) {
                Some(day) if (1.0..=31.0).contains(&day) && day.fract() == 0.0 => push(
                    FactKind::Date,
                    format!("{} {}", token.text, tokens[i + 1].text),
                    format!("date:{month}:{}", format_number(day)),
                    2,
                ),
                _ => push(
                    FactKind::Date,
                    token.text.to_string(),
                    format!("date:{month}"),
                    1,
                ),
            }
        } else if let Some(day) = weekday(lower) {
            push(
                FactKind::Weekday,
                token.text.to_string(),
                format!("weekday:{day}"),
                1,
            )
        } else if let Some(unit) = frequency_word(lower) {
            push(
                FactKind::Frequency,
                token.text.to_string(),
                format!("per:{unit}"),
                1,
            )
        } else if matches!(lower, "un" | "una" | "media") && time_unit(next).is_some() {
            // Spanish "una hora", "un mes", "media hora": durations.
            let (key_unit, scale) = time_unit(next).expect("matched above");
            let scale = if lower == "media" { scale / 2.0 } else { scale };
            push(
                FactKind::Duration,
                format!("{} {}", token.text, tokens[i + 1].text),
                format!("{key_unit}:{}", format_number(scale)),
                2,
            )
        } else if matches!(lower, "por" | "al" | "cada") && time_unit(next).is_some() {
            // Spanish "por semana", "al mes", "cada día": rates.
            let (key_unit, scale) = time_unit(next).expect("matched above");
            let unit = match (key_unit, scale) {
                ("minutes", 1.0) => "minute",
                ("minutes", _) => "hour",
                ("days", 1.0) => "day",
                ("days", 7.0) => "week",
                ("days", _) => "fortnight",
                ("months", 1.0) => "month",
                _ => "year",
            };
            push(
                FactKind::Frequency,
                format!("{} {}", token.text, tokens[i + 1].text),
                format!("per:{unit}"),
                2,
            )
        } else if matches!(lower, "per" | "a" | "an" | "each" | "every")
            && let Some((_, _)) = time_unit(next)
        {
            let unit = next.strip_suffix('s').unwrap_or(next);
            let unit = if unit == "hr" { "hour" } else { unit };
            if matches!(lower, "a" | "an")
                && matches!(
                    previous,
                    "within"
                        | "in"
                        | "for"
                        | "after"
                        | "about"
                        | "over"
                        | "under"
                        | "than"
                        | "least"
                        | "most"
                        | "to"
                        | "take"
                        | "takes"
                        | "half"
                )
            {
                // "within a week" is a duration; "one call a week" a frequency.
                let (key_unit, scale) = time_unit(next).expect("matched above");
                push(
                    FactKind::Duration,
                    format!("{} {}", token.text, tokens[i + 1].text),
                    format!("{key_unit}:{}", format_number(scale)),
                    2,
                )
            } else {
                push(
                    FactKind::Frequency,
                    format!("{} {}", token.text, tokens[i + 1].text),
                    format!("per:{unit}"),
                    2,
                )
            }
        } else if is_negation(lower) {
            // "No," opening an answer is a reply to the question, not a negated claim.
            let answering = tokens.get(1).is_some_and(|t| t.gap.contains(','));
            if lower == "no" && i == 0 && answering {
                1
            } else {
                push(
                    FactKind::Negation,
                    token.text.to_string(),
                    "negation".into(),
                    1,
                )
            }
        } else if QUALIFIERS.contains(&lower) {
            push(
                FactKind::Qualifier,
                token.text.to_string(),
                format!("qualifier:{lower}"),
                1,
            )
        } else if is_name_word(token) {
            let mut end = i + 1;
            // "Anna Berg" is one name; "English, Spanish" two.
            while end < tokens.len()
                && !tokens[end].opens
                && tokens[end].gap.trim().is_empty()
                && is_name_word(&tokens[end])
            {
                end += 1;
            }
            let text = tokens[i..end]
                .iter()
                .map(|t| t.text)
                .collect::<Vec<_>>()
                .join(" ");
            let key = format!("entity:{}", text.to_lowercase());
            push(FactKind::Entity, text, key, end - i)
        } else {
            1
        };
        i += used;
    }
    out
}

/// "9:30" → "09:30", "noon" → "12:00"; with "am"/"pm" after it.
fn clock(lower: &str, next: &str) -> Option<String> {
    match lower {
        "noon" | "midday" => return Some("12:00".into()),
        "midnight" => return Some("00:00".into()),
        _ => {}
    }
    let (hours, minutes) = lower.split_once(':')?;
    let (mut hours, minutes): (u32, u32) = (hours.parse().ok()?, minutes.parse().ok()?);
    if hours > 24 || minutes > 59 {
        return None;
    }
    if next == "pm" && hours < 12 {
        hours += 12;
    } else if next == "am" && hours == 12 {
        hours = 0;
    }
    Some(format!("{hours:02}:{minutes:02}"))
}

/// A capitalised word inside a sentence ("Anna", "Zoom"), or a word in capitals ("UK", "PDF")
/// anywhere: a name the passage must contain too.
fn is_name_word(token: &Token<'_>) -> bool {
    let text = token.text;
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    if letters == 0 || NOT_NAMES.contains(&token.lower.as_str()) {
        return false;
    }
    let acronym = letters >= 2 && text.chars().all(|c| !c.is_lowercase());
    // A capital letter alone in brackets is a label the model made up, or a name.
    let bracketed = token.gap.ends_with('(');
    acronym || ((!token.opens || bracketed) && text.starts_with(char::is_uppercase))
}

/// The facts of a passage as a set of keys, with the bare number of each counted fact too
/// ("14 days" also answers for "14"), so a sentence's fact can be looked up.
pub fn keys(text: &str) -> HashSet<String> {
    let mut keys = HashSet::new();
    for fact in facts(text) {
        if let Some(n) = fact
            .key
            .rsplit(':')
            .next()
            .filter(|_| matches!(fact.kind, FactKind::Duration | FactKind::Amount))
        {
            keys.insert(format!("number:{n}"));
        }
        if let Some(n) = fact
            .text
            .split_whitespace()
            .next()
            .and_then(|w| number(&w.to_lowercase()).filter(|_| fact.kind == FactKind::Duration))
        {
            keys.insert(format!("number:{}", format_number(n)));
        }
        keys.insert(fact.key);
    }
    keys
}

/// Whether `passage` (lower-cased) contains the name as whole words: names are looked up by
/// their words, not by the key, since the passage may open a sentence with one.
pub fn mentions(passage_lower: &str, name_lower: &str) -> bool {
    let bytes = passage_lower.as_bytes();
    passage_lower.match_indices(name_lower).any(|(at, _)| {
        let before = at.checked_sub(1).map(|b| bytes[b]);
        let after = bytes.get(at + name_lower.len()).copied();
        !before.is_some_and(|b| b.is_ascii_alphanumeric())
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(sentence: &str) -> Vec<String> {
        facts(sentence).into_iter().map(|f| f.key).collect()
    }

    #[test]
    fn values_are_normalised() {
        assert_eq!(keys_of("Refunds take fourteen days."), ["days:14"]);
        assert_eq!(keys_of("Refunds take two weeks."), ["days:14"]);
        assert_eq!(keys_of("A 14-day refund window."), ["days:14"]);
        assert_eq!(
            keys_of("It costs €29 or 290 euros."),
            ["amount:eur:29", "amount:eur:290"]
        );
        assert_eq!(
            keys_of("Calls last 45 minutes, or 1 hour."),
            ["minutes:45", "minutes:60"]
        );
        assert_eq!(
            keys_of("Sessions start at 6 pm or 18:00."),
            ["time:18:00", "time:18:00"]
        );
        assert_eq!(keys_of("You save 20% on it."), ["percent:20"]);
        assert_eq!(
            keys_of("It starts on 3 March, or on Monday."),
            ["date:mar:3", "weekday:mon"]
        );
        assert_eq!(
            keys_of("You may book one call per month."),
            ["number:1", "per:month"]
        );
        assert_eq!(keys_of("Refunds come within a week."), ["days:7"]);
        assert_eq!(keys_of("Available one day a week."), ["days:1", "per:week"]);
        assert_eq!(keys_of("The monthly plan."), ["per:month"]);
    }

    #[test]
    fn numbers_are_read_whatever_the_locale() {
        assert_eq!(
            keys_of("It costs €1,299.99 or 1.234,56 €."),
            ["amount:eur:1299.99", "amount:eur:1234.56"]
        );
        assert_eq!(
            keys_of("It costs 1.000 € or 1,000 €, not 1 €."),
            [
                "amount:eur:1000",
                "amount:eur:1000",
                "negation",
                "amount:eur:1"
            ]
        );
        assert_eq!(
            keys_of("Doors open at 9.30 am, in half an hour."),
            ["time:09:30", "minutes:30"]
        );
        assert_eq!(
            keys_of("It starts on the 1st of March and saves 20 per cent."),
            ["date:mar:1", "percent:20"]
        );
        assert_eq!(keys_of("Version 2.5 ships."), ["number:2.5"]);
    }

    #[test]
    fn names_negations_and_qualifiers_are_facts() {
        assert_eq!(
            keys_of("Write to Anna Berg at help@example.com, not via Zoom."),
            [
                "entity:help@example.com",
                "entity:anna berg",
                "negation",
                "entity:zoom"
            ]
        );
        assert_eq!(keys_of("It can be made with any card."), ["qualifier:any"]);
        assert_eq!(keys_of("You can't pause it."), ["negation"]);
        // A capital opening the sentence, "I" and an answering "No" are not facts.
        assert!(keys_of("No, I think that is fine.").is_empty());
        assert_eq!(keys_of("The UK rules apply."), ["entity:uk"]);
        assert_eq!(
            keys_of("It is in English, Spanish and German."),
            ["entity:english", "entity:spanish", "entity:german"]
        );
        assert_eq!(keys_of("No gym is needed."), ["negation"]);
        assert_eq!(keys_of("A certificate (C) follows."), ["entity:c"]);
        // Spanish too.
        assert_eq!(
            keys_of("Los reembolsos se pagan en catorce días, nunca en efectivo, el lunes."),
            ["days:14", "negation", "weekday:mon"]
        );
        assert_eq!(
            keys_of("Dura dos semanas o 3 meses."),
            ["days:14", "months:3"]
        );
    }

    #[test]
    fn passages_answer_for_bare_numbers_and_names_by_their_words() {
        let keys = keys("Refunds are paid within 14 days of the request.");
        assert!(keys.contains("days:14") && keys.contains("number:14"));
        assert!(mentions("anna runs the calls.", "anna"));
        assert!(!mentions("annabel runs the calls.", "anna"));
    }
}
