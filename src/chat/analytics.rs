//! Numbers about a tenant's conversations with end users, per day and in total: conversations,
//! active end users, questions, answered versus fallback, confidence, handoffs, top questions
//! and busiest hours. Staff test conversations are left out. Times are UTC.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::ChatError;
use crate::auth::TenantScope;
use crate::db::api_usage::{ApiUsageRow, ApiUsageStore};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Conversations started that day.
    pub conversations: i64,
    /// End users who wrote that day.
    pub active_visitors: i64,
    pub questions: i64,
    /// Answers from the knowledge base.
    pub answered: i64,
    /// Answers where the coach said it does not know.
    pub fallbacks: i64,
    /// Mean confidence of the coach's answers (fallbacks included); null without answers.
    pub avg_confidence: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Totals {
    pub conversations: i64,
    pub active_visitors: i64,
    pub questions: i64,
    pub answered: i64,
    pub fallbacks: i64,
    /// answered / (answered + fallbacks); null without answers.
    pub answered_rate: Option<f64>,
    pub avg_confidence: Option<f64>,
    /// Conversations in which the end user asked for a person.
    pub handoffs: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TopQuestion {
    /// As first asked (personal data masked when the coach masks it).
    pub question: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Analytics {
    pub from: String,
    pub to: String,
    /// Every day of the range, oldest first, zeros included.
    pub days: Vec<Day>,
    pub totals: Totals,
    /// The most frequent questions (case and punctuation ignored), at most 10.
    pub top_questions: Vec<TopQuestion>,
    /// Questions per hour of the day (UTC), 24 numbers.
    pub busiest_hours: Vec<i64>,
    /// Use of the OpenAI-compatible API (`/v1`) per credential and endpoint in the range.
    pub api_usage: Vec<ApiUsageRow>,
}

/// A real calendar date written `YYYY-MM-DD` (SQLite's calendar is the judge).
fn check_date(c: &Connection, text: &str) -> Result<(), ChatError> {
    let valid: bool = c.query_row(
        "SELECT length(?1) = 10 AND date(?1) IS ?1",
        params![text],
        |r| r.get(0),
    )?;
    if valid {
        Ok(())
    } else {
        Err(ChatError::Invalid(format!(
            "'{text}' is not a date like 2026-11-26"
        )))
    }
}

/// The figures for `from..=to` (dates, inclusive; by default the last 30 days, today included).
pub fn compute(
    c: &Connection,
    scope: &TenantScope,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Analytics, ChatError> {
    let to = match to {
        Some(to) => to.to_string(),
        None => c.query_row("SELECT date('now')", [], |r| r.get(0))?,
    };
    // Checked before the default `from` is computed from it: SQLite's date() of a bad date is
    // NULL.
    check_date(c, &to)?;
    let from = match from {
        Some(from) => from.to_string(),
        None => c.query_row("SELECT date(?1, '-29 days')", params![to], |r| r.get(0))?,
    };
    let (from, to) = (from.as_str(), to.as_str());
    check_date(c, from)?;
    if from > to {
        return Err(ChatError::Invalid("from must not be after to".into()));
    }
    let tenant = scope.tenant_id();
    // Every day of the range, from SQLite's calendar (at most about a year is sensible; cap it).
    let mut days: Vec<Day> = {
        let mut statement = c.prepare(
            "WITH RECURSIVE d(day) AS (SELECT date(?1) UNION ALL \
             SELECT date(day, '+1 day') FROM d WHERE day < date(?2) LIMIT 1000) SELECT day FROM d",
        )?;
        statement
            .query_map(params![from, to], |r| r.get::<_, String>(0))?
            .map(|day| {
                day.map(|date| Day {
                    date,
                    conversations: 0,
                    active_visitors: 0,
                    questions: 0,
                    answered: 0,
                    fallbacks: 0,
                    avg_confidence: None,
                })
            })
            .collect::<rusqlite::Result<_>>()?
    };
    let index = |date: &str, days: &[Day]| days.iter().position(|d| d.date == date);
    let range = "substr(m.created_at, 1, 10) BETWEEN ?2 AND ?3";
    {
        let mut statement = c.prepare(
            "SELECT substr(created_at, 1, 10), count(*) FROM conversations \
             WHERE tenant_id = ?1 AND visitor_id IS NOT NULL \
             AND substr(created_at, 1, 10) BETWEEN ?2 AND ?3 GROUP BY 1",
        )?;
        let rows = statement.query_map(params![tenant, from, to], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (date, count) = row?;
            if let Some(i) = index(&date, &days) {
                days[i].conversations = count;
            }
        }
    }
    {
        let mut statement = c.prepare(&format!(
            "SELECT substr(m.created_at, 1, 10), \
               count(DISTINCT CASE WHEN m.role = 'user' THEN c.visitor_id END), \
               sum(m.role = 'user'), \
               sum(m.role = 'assistant' AND m.fallback = 0), \
               sum(m.role = 'assistant' AND m.fallback = 1), \
               avg(CASE WHEN m.role = 'assistant' THEN m.confidence END) \
             FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.tenant_id = ?1 AND c.visitor_id IS NOT NULL AND {range} GROUP BY 1"
        ))?;
        let rows = statement.query_map(params![tenant, from, to], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<f64>>(5)?,
            ))
        })?;
        for row in rows {
            let (date, visitors, questions, answered, fallbacks, confidence) = row?;
            if let Some(i) = index(&date, &days) {
                let day = &mut days[i];
                day.active_visitors = visitors;
                day.questions = questions;
                day.answered = answered;
                day.fallbacks = fallbacks;
                day.avg_confidence = confidence.map(round3);
            }
        }
    }
    let totals = c.query_row(
        &format!(
            "SELECT count(DISTINCT CASE WHEN m.role = 'user' THEN c.visitor_id END), \
               coalesce(sum(m.role = 'user'), 0), \
               coalesce(sum(m.role = 'assistant' AND m.fallback = 0), 0), \
               coalesce(sum(m.role = 'assistant' AND m.fallback = 1), 0), \
               avg(CASE WHEN m.role = 'assistant' THEN m.confidence END), \
               count(DISTINCT CASE WHEN m.role = 'event' AND m.stats LIKE '%handoff_requested%' \
                     THEN c.id END) \
             FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.tenant_id = ?1 AND c.visitor_id IS NOT NULL AND {range}"
        ),
        params![tenant, from, to],
        |r| {
            let answered: i64 = r.get(2)?;
            let fallbacks: i64 = r.get(3)?;
            Ok(Totals {
                conversations: 0,
                active_visitors: r.get(0)?,
                questions: r.get(1)?,
                answered,
                fallbacks,
                answered_rate: (answered + fallbacks > 0)
                    .then(|| round3(answered as f64 / (answered + fallbacks) as f64)),
                avg_confidence: r.get::<_, Option<f64>>(4)?.map(round3),
                handoffs: r.get(5)?,
            })
        },
    )?;
    let totals = Totals {
        conversations: days.iter().map(|d| d.conversations).sum(),
        ..totals
    };
    let questions: Vec<String> = {
        let mut statement = c.prepare(&format!(
            "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.tenant_id = ?1 AND c.visitor_id IS NOT NULL AND m.role = 'user' AND {range} \
             ORDER BY m.created_at"
        ))?;
        statement
            .query_map(params![tenant, from, to], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut busiest_hours = vec![0i64; 24];
    {
        let mut statement = c.prepare(&format!(
            "SELECT CAST(substr(m.created_at, 12, 2) AS INTEGER), count(*) \
             FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.tenant_id = ?1 AND c.visitor_id IS NOT NULL AND m.role = 'user' AND {range} \
             GROUP BY 1"
        ))?;
        let rows = statement.query_map(params![tenant, from, to], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (hour, count) = row?;
            if let Some(slot) = busiest_hours.get_mut(hour as usize) {
                *slot = count;
            }
        }
    }
    Ok(Analytics {
        from: from.to_string(),
        to: to.to_string(),
        days,
        totals,
        top_questions: top_questions(&questions, 10),
        busiest_hours,
        api_usage: c.api_usage(scope, from, to)?,
    })
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Lower case, letters and digits only, single spaces: "How long?!" and "how long" are one.
fn normalize(question: &str) -> String {
    question
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The most frequent questions, ties broken by who was asked first.
fn top_questions(questions: &[String], limit: usize) -> Vec<TopQuestion> {
    let mut counts: Vec<(String, String, i64)> = Vec::new();
    for question in questions {
        let key = normalize(question);
        if key.is_empty() {
            continue;
        }
        match counts.iter_mut().find(|(k, _, _)| *k == key) {
            Some(entry) => entry.2 += 1,
            None => counts.push((key, question.trim().to_string(), 1)),
        }
    }
    counts.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    counts
        .into_iter()
        .take(limit)
        .map(|(_, question, count)| TopQuestion { question, count })
        .collect()
}

/// The days as CSV, for spreadsheets.
pub fn csv(analytics: &Analytics) -> String {
    let mut out = String::from(
        "date,conversations,active_visitors,questions,answered,fallbacks,avg_confidence\n",
    );
    for day in &analytics.days {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            day.date,
            day.conversations,
            day.active_visitors,
            day.questions,
            day.answered,
            day.fallbacks,
            day.avg_confidence
                .map(|c| c.to_string())
                .unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_count_together_whatever_their_case_and_punctuation() {
        let asked = [
            "How long do refunds take?",
            "how long do refunds take",
            "Hi",
            "HOW LONG do refunds take!!",
        ]
        .map(String::from);
        let top = top_questions(&asked, 10);
        assert_eq!(top[0].question, "How long do refunds take?");
        assert_eq!(top[0].count, 3);
        assert_eq!(top[1].count, 1);
        let c = Connection::open_in_memory().unwrap();
        assert!(check_date(&c, "2026-02-30").is_err());
        assert!(check_date(&c, "26-11-2026").is_err());
        assert!(check_date(&c, "2026-11-26").is_ok());
    }
}
