//! The tenant's coach: its public slug, name, persona and answering settings.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::ChatError;
use super::faithfulness::Strictness;
use crate::auth::TenantScope;

/// How long answers may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnswerLength {
    Short,
    Medium,
    Long,
}

impl AnswerLength {
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerLength::Short => "short",
            AnswerLength::Medium => "medium",
            AnswerLength::Long => "long",
        }
    }

    fn parse(text: &str) -> AnswerLength {
        match text {
            "short" => AnswerLength::Short,
            "long" => AnswerLength::Long,
            _ => AnswerLength::Medium,
        }
    }

    /// Most tokens the model may write.
    pub fn max_tokens(self) -> usize {
        match self {
            AnswerLength::Short => 120,
            AnswerLength::Medium => 240,
            AnswerLength::Long => 480,
        }
    }

    /// The instruction that goes with it.
    pub fn instruction(self) -> &'static str {
        match self {
            AnswerLength::Short => "Answer in one to three sentences.",
            AnswerLength::Medium => "Answer in a short paragraph.",
            AnswerLength::Long => "Answer thoroughly, in a few paragraphs if needed.",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Coach {
    /// Unique; used in public URLs such as `/api/v1/public/coaches/{slug}/visitors`.
    pub slug: String,
    pub name: String,
    /// Tone and instructions, e.g. "Warm and direct. Use the client's first name."
    pub persona: String,
    /// The first message visitors see.
    pub greeting: String,
    /// Answers with a confidence below this (0 to 1) are replaced by the fallback message.
    pub confidence_threshold: f64,
    /// What the coach says when it does not know.
    pub fallback_message: String,
    pub answer_length: AnswerLength,
    /// Sampling temperature, 0 (always the likeliest word) to 1.5.
    pub temperature: f64,
    /// Replace emails, phone and card numbers in end users' messages before the model sees
    /// them (and store them masked).
    pub redact_pii: bool,
    /// Picture shown beside the coach's messages: an https URL, or empty for the initial.
    pub avatar_url: String,
    /// The chat page's and widget's main colour, `#rrggbb`.
    pub brand_color: String,
    /// Where the widget's bubble sits: `left` or `right` (bottom corner).
    pub widget_position: WidgetPosition,
    /// Shown next to the widget's closed bubble to invite a first question; empty for none.
    pub opening_message: String,
    /// How strictly answers keep to the knowledge base: `strict` (the default) quotes or drops
    /// every factual sentence its passage does not support, facts included; `balanced` does so
    /// for wrong numbers, durations, amounts, dates, times and names and keeps other sentences
    /// without a source; `open` only fixes citation markers.
    pub strictness: Strictness,
    /// Proactive messages wait out these hours of the end user's local time, e.g. `21:00-08:00`
    /// (equal times: none).
    pub quiet_hours: String,
    /// Most rule nudges one end user gets per local day and per seven days; more are
    /// suppressed. Program steps and check-in prompts do not count.
    pub nudges_per_day: u32,
    pub nudges_per_week: u32,
}

/// The bottom corner the widget sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WidgetPosition {
    Left,
    Right,
}

impl WidgetPosition {
    pub fn as_str(self) -> &'static str {
        match self {
            WidgetPosition::Left => "left",
            WidgetPosition::Right => "right",
        }
    }
}

const COLUMNS: &str = "slug, name, persona, greeting, confidence_threshold, fallback_message, \
                       answer_length, temperature, redact_pii, avatar_url, brand_color, \
                       widget_position, opening_message, strictness, quiet_hours, nudges_per_day, \
                       nudges_per_week";

/// Reads [`COLUMNS`] starting at column `at`.
fn coach_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Coach> {
    Ok(Coach {
        slug: r.get(at)?,
        name: r.get(at + 1)?,
        persona: r.get(at + 2)?,
        greeting: r.get(at + 3)?,
        confidence_threshold: r.get(at + 4)?,
        fallback_message: r.get(at + 5)?,
        answer_length: AnswerLength::parse(&r.get::<_, String>(at + 6)?),
        temperature: r.get(at + 7)?,
        redact_pii: r.get(at + 8)?,
        avatar_url: r.get(at + 9)?,
        brand_color: r.get(at + 10)?,
        widget_position: if r.get::<_, String>(at + 11)? == "left" {
            WidgetPosition::Left
        } else {
            WidgetPosition::Right
        },
        opening_message: r.get(at + 12)?,
        strictness: Strictness::parse(&r.get::<_, String>(at + 13)?),
        quiet_hours: r.get(at + 14)?,
        nudges_per_day: r.get(at + 15)?,
        nudges_per_week: r.get(at + 16)?,
    })
}

pub fn get(c: &Connection, scope: &TenantScope) -> Result<Coach, ChatError> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM coaches WHERE tenant_id = ?1"),
        params![scope.tenant_id()],
        |r| coach_at(r, 0),
    )
    .optional()?
    .ok_or(ChatError::NotFound("this tenant has no coach"))
}

/// The coach behind a public slug, with its tenant id.
pub fn by_slug(c: &Connection, slug: &str) -> Result<(String, Coach), ChatError> {
    c.query_row(
        // A suspended creator's coach is not reachable.
        &format!(
            "SELECT tenant_id, {COLUMNS} FROM coaches WHERE slug = ?1 AND tenant_id IN \
             (SELECT id FROM tenants WHERE suspended_at IS NULL)"
        ),
        params![slug],
        |r| Ok((r.get(0)?, coach_at(r, 1)?)),
    )
    .optional()?
    .ok_or(ChatError::NotFound("no coach has this address"))
}

/// A change to the coach; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoachUpdate {
    pub slug: Option<String>,
    pub name: Option<String>,
    pub persona: Option<String>,
    pub greeting: Option<String>,
    pub confidence_threshold: Option<f64>,
    pub fallback_message: Option<String>,
    pub answer_length: Option<AnswerLength>,
    pub temperature: Option<f64>,
    pub redact_pii: Option<bool>,
    pub avatar_url: Option<String>,
    pub brand_color: Option<String>,
    pub widget_position: Option<WidgetPosition>,
    pub opening_message: Option<String>,
    pub strictness: Option<Strictness>,
    pub quiet_hours: Option<String>,
    pub nudges_per_day: Option<u32>,
    pub nudges_per_week: Option<u32>,
}

pub fn update(
    c: &Connection,
    scope: &TenantScope,
    change: &CoachUpdate,
) -> Result<Coach, ChatError> {
    let mut coach = get(c, scope)?;
    if let Some(slug) = &change.slug {
        coach.slug = clean_slug(slug)?;
    }
    if let Some(name) = &change.name {
        coach.name = bounded("name", name, 1, 100)?;
    }
    if let Some(persona) = &change.persona {
        coach.persona = bounded("persona", persona, 0, 4000)?;
    }
    if let Some(greeting) = &change.greeting {
        coach.greeting = bounded("greeting", greeting, 1, 1000)?;
    }
    if let Some(fallback) = &change.fallback_message {
        coach.fallback_message = bounded("fallback_message", fallback, 1, 1000)?;
    }
    if let Some(threshold) = change.confidence_threshold {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(ChatError::Invalid(
                "confidence_threshold must be between 0 and 1".into(),
            ));
        }
        coach.confidence_threshold = threshold;
    }
    if let Some(temperature) = change.temperature {
        if !(0.0..=1.5).contains(&temperature) {
            return Err(ChatError::Invalid(
                "temperature must be between 0 and 1.5".into(),
            ));
        }
        coach.temperature = temperature;
    }
    if let Some(length) = change.answer_length {
        coach.answer_length = length;
    }
    if let Some(redact) = change.redact_pii {
        coach.redact_pii = redact;
    }
    if let Some(url) = &change.avatar_url {
        coach.avatar_url = clean_avatar_url(url)?;
    }
    if let Some(color) = &change.brand_color {
        coach.brand_color = clean_color(color)?;
    }
    if let Some(position) = change.widget_position {
        coach.widget_position = position;
    }
    if let Some(opening) = &change.opening_message {
        coach.opening_message = bounded("opening_message", opening, 0, 300)?;
    }
    if let Some(strictness) = change.strictness {
        coach.strictness = strictness;
    }
    if let Some(quiet) = &change.quiet_hours {
        let parsed = crate::coaching::schedule::QuietHours::parse("quiet_hours", quiet)
            .map_err(|e| ChatError::Invalid(e.to_string()))?;
        coach.quiet_hours = parsed.to_string();
    }
    for (field, value, target) in [
        (
            "nudges_per_day",
            change.nudges_per_day,
            &mut coach.nudges_per_day,
        ),
        (
            "nudges_per_week",
            change.nudges_per_week,
            &mut coach.nudges_per_week,
        ),
    ] {
        if let Some(value) = value {
            if value > 50 {
                return Err(ChatError::Invalid(format!("{field} must be 0 to 50")));
            }
            *target = value;
        }
    }
    let result = c.execute(
        "UPDATE coaches SET slug = ?2, name = ?3, persona = ?4, greeting = ?5, \
         confidence_threshold = ?6, fallback_message = ?7, answer_length = ?8, temperature = ?9, \
         redact_pii = ?10, avatar_url = ?11, brand_color = ?12, widget_position = ?13, \
         opening_message = ?14, strictness = ?15, quiet_hours = ?16, nudges_per_day = ?17, \
         nudges_per_week = ?18 WHERE tenant_id = ?1",
        params![
            scope.tenant_id(),
            coach.slug,
            coach.name,
            coach.persona,
            coach.greeting,
            coach.confidence_threshold,
            coach.fallback_message,
            coach.answer_length.as_str(),
            coach.temperature,
            coach.redact_pii,
            coach.avatar_url,
            coach.brand_color,
            coach.widget_position.as_str(),
            coach.opening_message,
            coach.strictness.as_str(),
            coach.quiet_hours,
            coach.nudges_per_day,
            coach.nudges_per_week,
        ],
    );
    match result {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(ChatError::Conflict(format!(
                "the address '{}' is taken; choose another slug",
                coach.slug
            )))
        }
        other => {
            other?;
            Ok(coach)
        }
    }
}

fn bounded(field: &str, value: &str, min: usize, max: usize) -> Result<String, ChatError> {
    let value = value.trim();
    let length = value.chars().count();
    if length < min || length > max {
        return Err(ChatError::Invalid(format!(
            "{field} needs {min} to {max} characters"
        )));
    }
    Ok(value.to_string())
}

/// 3 to 50 lower-case letters, digits and single hyphens.
fn clean_slug(slug: &str) -> Result<String, ChatError> {
    let slug = slug.trim().to_lowercase();
    let valid = (3..=50).contains(&slug.len())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
        && !slug.contains("--");
    if !valid {
        return Err(ChatError::Invalid(
            "a slug has 3 to 50 lower-case letters, digits and single hyphens".into(),
        ));
    }
    Ok(slug)
}

/// `#rgb` or `#rrggbb`, stored as lower-case `#rrggbb`.
fn clean_color(color: &str) -> Result<String, ChatError> {
    let hex = color.trim().trim_start_matches('#').to_ascii_lowercase();
    let expanded = match hex.len() {
        3 => hex.chars().flat_map(|c| [c, c]).collect(),
        6 => hex,
        _ => String::new(),
    };
    if expanded.len() != 6 || !expanded.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ChatError::Invalid(
            "brand_color must be a colour like #2f6f5e".into(),
        ));
    }
    Ok(format!("#{expanded}"))
}

/// An `https://` (or, for local set-ups, `http://`) address of an image; empty removes it.
fn clean_avatar_url(url: &str) -> Result<String, ChatError> {
    let url = url.trim();
    let valid = url.is_empty()
        || ((url.starts_with("https://") || url.starts_with("http://"))
            && url.len() <= 2000
            && !url
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '<'));
    if !valid {
        return Err(ChatError::Invalid(
            "avatar_url must be an https:// address of an image, or empty".into(),
        ));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_avatars_are_checked() {
        assert_eq!(clean_color("#ABC").unwrap(), "#aabbcc");
        assert_eq!(clean_color(" 2f6f5e ").unwrap(), "#2f6f5e");
        assert!(clean_color("red").is_err());
        assert!(clean_color("#12345g").is_err());
        assert_eq!(clean_avatar_url("").unwrap(), "");
        assert!(clean_avatar_url("https://example.com/me.png").is_ok());
        assert!(clean_avatar_url("javascript:alert(1)").is_err());
        assert!(clean_avatar_url("https://x/\"onerror=\"").is_err());
    }
}
