//! What the coaching engine does with an end user's message before the coach answers it: the
//! person is active (and replied to what was sent), STOP opts them out at once, a value the
//! coach asked for is recorded as a check-in, and a quick reply picks a program's next step.

use std::sync::LazyLock;

use regex::Regex;

use super::linking;
use super::writer::figure;
use super::{Coaching, CoachingError};
use crate::auth::TenantScope;
use crate::chat::EndUserHook;
use crate::db::coaching::NudgeStore;
use crate::jobs::BoxFuture;

/// The coach's reply to an opt-out.
pub const OPTED_OUT: &str = "Understood: I won't send you any more messages on my own. You can still write to me any time, and I'll answer.";

/// STOP in capitals anywhere, a message that is only "stop", or "unsubscribe" / "stop
/// messages" in any case. A lower-case "stop" inside a sentence ("I can't stop snacking") is
/// not an opt-out. Telegram's `/stop` command is one.
pub fn is_opt_out(text: &str) -> bool {
    static PATTERNS: LazyLock<(Regex, Regex)> = LazyLock::new(|| {
        (
            Regex::new(r"\bSTOP\b").expect("valid"),
            Regex::new(r"(?i)^\s*/?stop(@\w+)?\s*[.!]*\s*$|\bunsubscribe\b|\bstop (sending )?(me )?(messages|texts|nudges|reminders)\b")
                .expect("valid"),
        )
    });
    PATTERNS.0.is_match(text) || PATTERNS.1.is_match(text)
}

/// What a reply to "how much today?" holds.
#[derive(Debug, PartialEq)]
pub enum ValueReply {
    Value(f64),
    /// No number, or more than one: ask once more.
    Unclear,
    /// A question of its own: answer it, keep waiting for the value.
    Question,
}

pub fn read_value(text: &str) -> ValueReply {
    static NUMBER: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"-?\d+(?:[.,]\d+)?").expect("valid"));
    let numbers: Vec<&str> = NUMBER.find_iter(text).map(|m| m.as_str()).collect();
    match numbers.as_slice() {
        [one] => one
            .replace(',', ".")
            .parse()
            .map(ValueReply::Value)
            .unwrap_or(ValueReply::Unclear),
        [] if text.trim_end().ends_with('?') => ValueReply::Question,
        _ => ValueReply::Unclear,
    }
}

impl Coaching {
    async fn on_end_user_message(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        text: &str,
    ) -> Result<Option<String>, CoachingError> {
        let mut user = self.end_user_of_visitor(scope, visitor_id).await?;
        let now = self.now_for(scope, &user).await?;
        user.last_active_at = Some(now);
        let (scope_moved, id) = (scope.clone(), user.id.clone());
        self.db()
            .call(move |c| c.mark_replied(&scope_moved, &id, now))
            .await?;
        if is_opt_out(text) {
            user.opted_out_at = Some(now);
            user.consent = false;
            user.awaiting_goal_id = None;
            self.save_end_user(scope, &user).await?;
            return Ok(Some(OPTED_OUT.to_string()));
        }
        if linking::asks_for_code(text)
            || linking::code_in(text).is_some()
            || linking::asks_to_be_written_here(text)
        {
            // Saved first: joining may move this person's identity to another end user.
            self.save_end_user(scope, &user).await?;
            if let Some(reply) = self.link_reply(scope, visitor_id, &user, text).await? {
                return Ok(Some(reply));
            }
        }
        if let Some(goal_id) = user.awaiting_goal_id.clone() {
            let reply = match read_value(text) {
                ValueReply::Value(value) => {
                    user.awaiting_goal_id = None;
                    self.save_end_user(scope, &user).await?;
                    let view = self
                        .check_in(scope, &goal_id, None, value, None, "chat")
                        .await?;
                    let unit = &view.goal.unit;
                    let mut text = format!(
                        "Got it: {} {unit} recorded for “{}”.",
                        figure(value),
                        view.goal.title
                    );
                    if view.goal.status == "reached" {
                        text.push_str(" You reached your target. Well done!");
                    } else if view.current_streak >= 2 {
                        text.push_str(&format!(" That's {} in a row.", view.current_streak));
                    }
                    Some(text.replace(" \u{a0}", " ").replace("  ", " "))
                }
                ValueReply::Unclear if !user.awaiting_retried => {
                    user.awaiting_retried = true;
                    self.save_end_user(scope, &user).await?;
                    Some(
                        "Sorry, I didn't catch the number. Could you reply with just one number?"
                            .into(),
                    )
                }
                ValueReply::Unclear => {
                    // Asked once more already: stop waiting and let the coach answer.
                    user.awaiting_goal_id = None;
                    self.save_end_user(scope, &user).await?;
                    None
                }
                ValueReply::Question => {
                    self.save_end_user(scope, &user).await?;
                    None
                }
            };
            return Ok(reply);
        }
        self.save_end_user(scope, &user).await?;
        if self.choose(scope, &user, text, now).await? {
            return Ok(Some(String::new()));
        }
        Ok(None)
    }
}

impl EndUserHook for Coaching {
    fn end_user_wrote<'a>(
        &'a self,
        scope: &'a TenantScope,
        visitor_id: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.on_end_user_message(scope, visitor_id, text).await {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::warn!(%error, "coaching could not look at a message");
                    None
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_outs_are_explicit() {
        for yes in [
            "STOP",
            "stop",
            "Stop.",
            "please STOP",
            "unsubscribe me",
            "stop messages",
            "/stop",
            "/stop@CoachBot",
        ] {
            assert!(is_opt_out(yes), "{yes}");
        }
        for no in [
            "I can't stop snacking",
            "where is the bus stop?",
            "stopwatch",
        ] {
            assert!(!is_opt_out(no), "{no}");
        }
    }

    #[test]
    fn values_are_one_number() {
        assert_eq!(read_value("42"), ValueReply::Value(42.0));
        assert_eq!(read_value("about 7,5 hours"), ValueReply::Value(7.5));
        assert_eq!(read_value("6 or 7"), ValueReply::Unclear);
        assert_eq!(read_value("not sure"), ValueReply::Unclear);
        assert_eq!(read_value("what counts as sleep?"), ValueReply::Question);
    }
}
