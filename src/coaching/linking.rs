//! One person, several channels: in any conversation the end user asks for a link code ("link
//! my account"), and entering it in another channel makes that identity one more of theirs,
//! so history, goals, enrolments and consent follow them. Codes are single use, live ten
//! minutes, are stored hashed and are limited per person and hour. "Send my messages here"
//! picks the channel the coach writes to first (else it is the one they used last).

use std::sync::LazyLock;

use chrono::{Duration, Utc};
use regex::Regex;

use super::model::EndUser;
use super::{Coaching, CoachingError};
use crate::auth::TenantScope;
use crate::db::channels::ChannelStore;

/// How long a code works.
const CODE_MINUTES: i64 = 10;
/// Codes one person may ask for an hour.
const CODES_PER_HOUR: i64 = 5;
/// Letters and digits that cannot be misread for one another (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// "link my account", "link account", "/link".
pub fn asks_for_code(text: &str) -> bool {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)^\s*(/link(@\w+)?|link (my )?(account|accounts|chats?|apps?))\s*[.!]*\s*$")
            .expect("valid")
    });
    PATTERN.is_match(text)
}

/// "send my messages here", "message me here", "check in with me here".
pub fn asks_to_be_written_here(text: &str) -> bool {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)^\s*(send (me )?(my )?(messages|check-ins|checkins|reminders|nudges) here|(message|write to|check in with) me here)\s*[.!]*\s*$")
            .expect("valid")
    });
    PATTERN.is_match(text)
}

/// A code in the message (`K7PQ-X4ZD`, alone or after "link"), normalised to upper case.
pub fn code_in(text: &str) -> Option<String> {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)^\s*(?:/?link(?:@\w+)?\s+)?([A-Z0-9]{4})[- ]?([A-Z0-9]{4})\s*$")
            .expect("valid")
    });
    let found = PATTERN.captures(text)?;
    let code = format!("{}-{}", &found[1], &found[2]).to_ascii_uppercase();
    // Only codes this alphabet can make: "12345678" is a number, not a code.
    code.bytes()
        .all(|b| b == b'-' || ALPHABET.contains(&b))
        .then_some(code)
        .filter(|c| c.bytes().any(|b| b.is_ascii_alphabetic()))
}

fn new_code() -> String {
    let mut bytes = [0u8; 8];
    crate::auth::random_bytes(&mut bytes);
    let letters: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

impl Coaching {
    /// The coach's reply when the message is about linking; `None` when it is not.
    pub(super) async fn link_reply(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        user: &EndUser,
        text: &str,
    ) -> Result<Option<String>, CoachingError> {
        if asks_for_code(text) {
            return self.issue_code(scope, user).await.map(Some);
        }
        if asks_to_be_written_here(text) {
            let (scope, user_id, visitor) =
                (scope.clone(), user.id.clone(), visitor_id.to_string());
            self.db()
                .call(move |c| c.prefer_visitor(&scope, &user_id, &visitor))
                .await?;
            return Ok(Some(
                "Done: when I write to you first (check-ins, program steps), it will be here."
                    .into(),
            ));
        }
        let Some(code) = code_in(text) else {
            return Ok(None);
        };
        let (scope, visitor, now) = (scope.clone(), visitor_id.to_string(), Utc::now());
        let joined = self
            .db()
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    let Some(owner) = c.take_link_code(&scope, &code, now)? else {
                        return Ok::<_, crate::db::DbError>(None);
                    };
                    c.join_identity(&scope, &visitor, &owner)?;
                    Ok(Some(owner))
                })
            })
            .await?;
        Ok(Some(match joined {
            Some(_) => "Linked: this chat and your other one are the same account now. Your \
                        goals and programs follow you, and I'll write to you wherever you last \
                        talked to me."
                .into(),
            None => "That link code is not valid any more (codes work once, for 10 minutes). \
                     Send “link my account” where you started to get a new one."
                .into(),
        }))
    }

    async fn issue_code(
        &self,
        scope: &TenantScope,
        user: &EndUser,
    ) -> Result<String, CoachingError> {
        let code = new_code();
        let (scope, user_id, stored) = (scope.clone(), user.id.clone(), code.clone());
        let expires = Utc::now() + Duration::minutes(CODE_MINUTES);
        let issued = self
            .db()
            .call(move |c| c.add_link_code(&scope, &user_id, &stored, expires, CODES_PER_HOUR))
            .await?;
        Ok(if issued {
            format!(
                "Your link code is {code}. Within {CODE_MINUTES} minutes, send it to me in the other \
                 app (or in the chat on the website), and I'll know it's you there too."
            )
        } else {
            "You asked for several link codes already; please try again in an hour.".into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_told_from_numbers_and_sentences() {
        let code = new_code();
        assert_eq!(code.len(), 9);
        assert_eq!(code_in(&code), Some(code.clone()));
        assert_eq!(code_in(&code.to_lowercase()), Some(code.clone()));
        assert_eq!(code_in(&format!("link {code}")), Some(code.clone()));
        assert_eq!(code_in("12345678"), None);
        assert_eq!(code_in("1234-5678"), None);
        assert_eq!(code_in("I walked 8000 steps"), None);
        assert_eq!(
            code_in("ABCD-EF0O"),
            None,
            "0 and O are not in the alphabet"
        );
        assert!(asks_for_code("link my account"));
        assert!(asks_for_code("/link"));
        assert!(asks_for_code("Link my accounts!"));
        assert!(!asks_for_code("can you link me to the guide?"));
        assert!(asks_to_be_written_here("Send my messages here"));
        assert!(asks_to_be_written_here("message me here!"));
        assert!(!asks_to_be_written_here("can you send me the guide here?"));
    }
}
