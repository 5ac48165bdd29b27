//! One turn of a conversation: store the question, retrieve passages, either say "I don't know"
//! (nothing relevant) or generate a grounded answer (checked sentence by sentence as it is
//! delivered, see `delivery`), then score its confidence and store it.

use std::time::{Duration, Instant};

use serde_json::json;

use super::citations::Citation;
use super::coach::{self, Coach};
use super::conversations::{self, Access, Message, NewMessage, Speaker};
use super::faithfulness::{SentenceCheck, Strictness};
use super::live::asks_for_a_person;
use super::pii;
use super::{Chat, ChatError};
use crate::inference::chat_engine::{ChatRequest, ChatStream, ChatSummary};
use crate::inference::chat_template::{ChatMessage, Role};
use crate::inference::generate::{GenerationSettings, SamplingOverrides};
use crate::knowledge::search::{SearchHit, SearchMode, SearchRequest, fuse_ranks};

/// Passages put in the prompt. Four, not three: on the answers benchmark the answering passage
/// was fourth for every in-scope question whose answer missed it at three.
pub const PASSAGES: usize = 4;
/// Results read from each search when a question is searched two ways and the two are fused.
const FUSED_CANDIDATES: usize = 10;
/// Prompt budget, in characters (about four per token): passages and history are cut to fit so
/// that prefill, which dominates the time to first token on a CPU, stays around 700 tokens.
pub const PASSAGE_CHARS: usize = 1800;
pub const HISTORY_CHARS: usize = 900;
/// Most earlier messages read for the prompt (their text is then cut to `HISTORY_CHARS`).
const HISTORY_MESSAGES: u32 = 12;
/// Longest end-user message.
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// How long one answer may take before generation stops.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(120);
/// Added to the creator's fallback message.
pub const HANDOFF_OFFER: &str =
    "If you like, ask to talk to a person and someone from the team will pick this up.";

/// A turn ready to be answered.
pub struct Prepared {
    pub speaker: Speaker,
    /// Where the answer is stored; `None` for an API completion, which is returned, not kept.
    pub conversation_id: Option<String>,
    /// The sequence number of the question.
    pub reply_to: i64,
    pub coach: Coach,
    /// The question as logged and recorded in knowledge gaps (personal data masked).
    pub masked_question: String,
    /// The question as stored: what the answer is checked against.
    pub question: String,
    /// What was searched: the question, or the question joined with the one before it, or both
    /// (see [`retrieval_queries`]).
    pub queries: Vec<String>,
    pub passages: Vec<SearchHit>,
    pub retrieval_score: f32,
    pub reply: Reply,
    pub started: Instant,
    /// Holds the question as being answered until this answer is stored or dropped.
    pub claim: Option<super::answering::Claim>,
}

pub enum Reply {
    /// Nothing in the knowledge base is relevant enough: the fallback, without the model.
    Fallback,
    /// The model's answer, as it is generated.
    Generate(ChatStream),
}

/// A generated answer after its sentences were checked.
pub struct Checked {
    /// What was delivered: the checked sentences with their markers.
    pub text: String,
    pub citations: Vec<Citation>,
    /// Supported (or repaired) claims / claims.
    pub support: f32,
    pub model_markers_correct: Option<f32>,
    pub checks: Vec<SentenceCheck>,
    /// A claim survived the check; otherwise the fallback was delivered.
    pub answered: bool,
    /// The model's text as generated.
    pub raw: String,
    /// `None` when generation ended early (an error, a shutdown) after sentences were shown.
    pub summary: Option<ChatSummary>,
    /// Seconds from the question to the first token and to the first delivered sentence.
    pub first_token_s: Option<f64>,
    pub first_sentence_s: Option<f64>,
}

/// A stored message and what follows it.
pub struct Asked {
    pub message: Message,
    /// The message had been stored before (resent with the same client id).
    pub duplicate: bool,
    /// `Some` when the coach should answer it.
    pub pending: Option<Pending>,
    /// The coaching engine's reply (an opt-out confirmed, a check-in recorded), stored and
    /// published already; the coach does not answer then.
    pub reply: Option<Message>,
}

/// A question the coach is to answer.
pub struct Pending {
    coach: Coach,
    history: Vec<Message>,
    question: Message,
    masked_question: String,
    started: Instant,
    /// What an API caller asked of the generation (the coach's own settings otherwise).
    sampling: SamplingOverrides,
    /// `None` for an API completion, which nobody can resend.
    claim: Option<super::answering::Claim>,
}

impl Pending {
    /// A question that is not stored (an API completion): `history` and `question` are the
    /// caller's, held in memory only.
    pub(super) fn unsaved(
        coach: Coach,
        history: Vec<Message>,
        question: Message,
        sampling: SamplingOverrides,
    ) -> Pending {
        Pending {
            coach,
            history,
            masked_question: pii::mask(&question.content).text,
            question,
            started: Instant::now(),
            sampling,
            claim: None,
        }
    }

    /// The question's sequence number.
    pub fn seq(&self) -> i64 {
        self.question.seq
    }
}

impl Chat {
    /// The question numbered `seq`, ready to be answered again (an answer job that a crash
    /// interrupted); `None` when it is answered already or gone.
    pub async fn pending_for(
        &self,
        speaker: &Speaker,
        conversation_id: &str,
        seq: i64,
    ) -> Result<Option<Pending>, ChatError> {
        // An answer under way here (a resend answered it) is waited for: the job comes back.
        let Some(claim) = self.answering.claim(conversation_id, seq) else {
            return Err(ChatError::Conflict("the question is being answered".into()));
        };
        let (speaker, id) = (speaker.clone(), conversation_id.to_string());
        self.db
            .call(move |c| {
                let scope = speaker.scope();
                conversations::open(c, &speaker, &id, Access::Read)?;
                if conversations::is_answered(c, scope, &id, seq)? {
                    return Ok(None);
                }
                let Some(question) = conversations::messages_after(c, scope, &id, seq - 1, 1)?
                    .into_iter()
                    .find(|m| m.seq == seq)
                else {
                    return Ok(None);
                };
                let history =
                    conversations::recent_messages_before(c, scope, &id, seq, HISTORY_MESSAGES)?;
                let coach = coach::get(c, scope)?;
                Ok::<_, ChatError>(Some(Pending {
                    coach,
                    history,
                    masked_question: pii::mask(&question.content).text,
                    question,
                    started: Instant::now(),
                    sampling: SamplingOverrides::default(),
                    claim: Some(claim),
                }))
            })
            .await
    }

    /// Stores a participant's message (once per `client_id`) and publishes it. The coach is to
    /// answer (`pending`) when it is in charge of the conversation and the message is a new
    /// question from the end user (or staff in a test conversation) that does not ask for a
    /// person. Errors that a client must see as a status happen here.
    pub async fn ask(
        &self,
        speaker: &Speaker,
        conversation_id: &str,
        content: &str,
        client_id: Option<&str>,
    ) -> Result<Asked, ChatError> {
        let started = Instant::now();
        let content = content.trim();
        if content.is_empty() || content.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ChatError::Invalid(format!(
                "a message needs 1 to {MAX_MESSAGE_CHARS} characters"
            )));
        }
        if let Some(client_id) = client_id
            && (client_id.is_empty() || client_id.len() > 100)
        {
            return Err(ChatError::Invalid(
                "client_id needs 1 to 100 characters".into(),
            ));
        }
        if let Speaker::Visitor { visitor_id, .. } = speaker {
            self.limits.check_visitor(visitor_id)?;
        }
        let masked = pii::mask(content);
        let wants_person = matches!(speaker, Speaker::Visitor { .. }) && asks_for_a_person(content);
        let stored = {
            let (speaker, id, content, masked_text, client_id) = (
                speaker.clone(),
                conversation_id.to_string(),
                content.to_string(),
                masked.text.clone(),
                client_id.map(str::to_string),
            );
            self.db
                .call(move |c| {
                    let conversation = conversations::open(c, &speaker, &id, Access::Write)?;
                    let coach = coach::get(c, speaker.scope())?;
                    // Only what the history budget can hold is read, however long the conversation.
                    let history =
                        conversations::recent_messages(c, speaker.scope(), &id, HISTORY_MESSAGES)?;
                    // The creator chose whether personal data reaches the model (and storage).
                    let text = if coach.redact_pii && matches!(speaker, Speaker::Visitor { .. }) {
                        masked_text
                    } else {
                        content
                    };
                    let staff_reply = matches!(speaker, Speaker::Staff { .. })
                        && conversation.started_by == "visitor";
                    let author = match (&speaker, staff_reply) {
                        (
                            Speaker::Staff {
                                user_id: Some(user),
                                ..
                            },
                            true,
                        ) => Some((user.clone(), conversations::staff_name(c, user)?)),
                        _ => None,
                    };
                    let stored = conversations::add_message(
                        c,
                        speaker.scope(),
                        &id,
                        &NewMessage {
                            role: if staff_reply { "staff" } else { "user" },
                            content: &text,
                            client_id: client_id.as_deref(),
                            author: author
                                .as_ref()
                                .map(|(id, name)| (id.as_str(), name.as_str())),
                            ..NewMessage::default()
                        },
                    )?;
                    // A resend of a question whose answer a crash cut off is answered now,
                    // from the history it was asked in.
                    let resumed = if stored.duplicate
                        && stored.message.role == "user"
                        && !conversation.is_human()
                        && conversations::awaits_answer(
                            c,
                            speaker.scope(),
                            &id,
                            stored.message.seq,
                        )? {
                        Some(conversations::recent_messages_before(
                            c,
                            speaker.scope(),
                            &id,
                            stored.message.seq,
                            HISTORY_MESSAGES,
                        )?)
                    } else {
                        None
                    };
                    Ok::<_, ChatError>((stored, conversation, coach, history, resumed))
                })
                .await?
        };
        let (stored, conversation, coach, history, resumed) = stored;
        let tenant_id = speaker.scope().tenant_id();
        if stored.duplicate {
            let claim = resumed
                .is_some()
                .then(|| self.answering.claim(conversation_id, stored.message.seq))
                .flatten();
            let pending = resumed.zip(claim).map(|(history, claim)| Pending {
                coach,
                history,
                masked_question: pii::mask(&stored.message.content).text,
                question: stored.message.clone(),
                started,
                sampling: SamplingOverrides::default(),
                claim: Some(claim),
            });
            return Ok(Asked {
                message: stored.message,
                duplicate: true,
                pending,
                reply: None,
            });
        }
        self.publish_message(tenant_id, &stored.message);
        tracing::info!(
            conversation = %conversation_id,
            question = %masked.text,
            personal_data = ?masked.kinds,
            "message"
        );
        let mut coach_answers = stored.message.role == "user" && !conversation.is_human();
        let mut reply = None;
        if let (Speaker::Visitor { visitor_id, .. }, Some(hook)) = (speaker, self.hook.get())
            && stored.message.role == "user"
            && let Some(text) = hook
                .end_user_wrote(speaker.scope(), visitor_id, content)
                .await
        {
            coach_answers = false;
            if !text.is_empty() {
                reply = Some(
                    self.store_coach_reply(speaker.scope(), conversation_id, &text, None)
                        .await?,
                );
            }
        }
        if coach_answers && wants_person {
            self.request_person(speaker, conversation_id).await?;
        }
        let pending = (coach_answers && !wants_person).then(|| Pending {
            coach,
            history,
            masked_question: masked.text,
            question: stored.message.clone(),
            started,
            sampling: SamplingOverrides::default(),
            claim: self.answering.claim(conversation_id, stored.message.seq),
        });
        Ok(Asked {
            message: stored.message,
            duplicate: false,
            pending,
            reply,
        })
    }

    /// Retrieves passages and starts the answer: the fallback when nothing is relevant enough,
    /// otherwise the model's stream.
    pub async fn start_answer(
        &self,
        speaker: Speaker,
        conversation_id: &str,
        pending: Pending,
    ) -> Result<Prepared, ChatError> {
        self.prepare(speaker, Some(conversation_id.to_string()), pending)
            .await
    }

    /// [`Chat::start_answer`] for an answer stored in `conversation_id`, or only returned
    /// (`None`: an API completion).
    pub(super) async fn prepare(
        &self,
        speaker: Speaker,
        conversation_id: Option<String>,
        pending: Pending,
    ) -> Result<Prepared, ChatError> {
        let Pending {
            coach,
            history,
            question,
            masked_question,
            started,
            sampling,
            claim,
        } = pending;
        let stored_question = question.content;
        let queries = retrieval_queries(&stored_question, &history);
        let limit = if queries.len() > 1 {
            FUSED_CANDIDATES
        } else {
            PASSAGES
        };
        let mut lists = Vec::with_capacity(queries.len());
        for query in &queries {
            let request = SearchRequest {
                query: query.clone(),
                limit: Some(limit),
                mode: SearchMode::Hybrid,
            };
            lists.push(
                self.knowledge
                    .search(speaker.scope(), request)
                    .await?
                    .results,
            );
        }
        let passages = fuse_ranks(lists, PASSAGES);
        // The first query is the question as it stands, or joined when it cannot stand alone.
        let passages = self
            .knowledge
            .focus(speaker.scope(), &queries[0], passages)
            .await;
        // A reranker may put a passage with a lower retrieval score first: the gate reads the best.
        let retrieval_score = passages.iter().map(|p| p.score).fold(0.0f32, f32::max);
        let reply = if passages.is_empty() || (retrieval_score as f64) < retrieval_gate(&coach) {
            Reply::Fallback
        } else {
            let engine = self.inference.chat()?;
            let messages = prompt(&coach, &passages, &history, &stored_question);
            let mut settings = GenerationSettings::greedy(coach.answer_length.max_tokens());
            if coach.temperature > 0.0 {
                settings.temperature = coach.temperature;
                settings.top_p = Some(0.9);
            }
            sampling.apply(&mut settings);
            Reply::Generate(engine.chat(
                speaker.scope().tenant_id(),
                ChatRequest {
                    messages,
                    settings,
                    deadline: Some(Instant::now() + ANSWER_DEADLINE),
                },
            )?)
        };
        Ok(Prepared {
            speaker,
            conversation_id,
            reply_to: question.seq,
            coach,
            masked_question,
            question: stored_question,
            queries,
            passages,
            retrieval_score,
            reply,
            started,
            claim,
        })
    }

    /// The fallback's text, for streaming it like an answer.
    pub fn fallback_text(coach: &Coach) -> String {
        format!("{} {HANDOFF_OFFER}", coach.fallback_message.trim_end())
    }

    /// Scores confidence, stores the answer (or the fallback, with a knowledge gap) and
    /// returns the stored message. `checked` is `None` when nothing relevant was found.
    pub async fn finish(
        &self,
        prepared: Prepared,
        checked: Option<Checked>,
    ) -> Result<Message, ChatError> {
        let Prepared {
            speaker,
            conversation_id,
            reply_to,
            coach,
            masked_question,
            queries,
            passages,
            retrieval_score,
            started,
            ..
        } = prepared;
        let tenant_id = speaker.scope().tenant_id().to_string();
        // What retrieval found, so the creator's test chat can show why the coach said what it did.
        let retrieved: Vec<_> = passages
            .iter()
            .map(|p| {
                json!({
                    "chunk_id": p.chunk_id,
                    "document_title": p.document_title,
                    "heading_path": p.heading_path,
                    "page": p.page,
                    "score": (p.score * 1000.0).round() / 1000.0,
                    "excerpt": p.text.chars().take(300).collect::<String>(),
                })
            })
            .collect();
        let mut stats = json!({
            "reply_to": reply_to,
            // What was searched: a follow-up is searched with the question before it too.
            "queries": queries,
            "retrieval_score": retrieval_score,
            "passages": passages.len(),
            "retrieved": retrieved,
            "strictness": coach.strictness,
        });
        let (content, citations, confidence, fallback) = match checked {
            None => (
                Chat::fallback_text(&coach),
                Vec::new(),
                0.5 * retrieval_score,
                true,
            ),
            Some(checked) => {
                let confidence = (0.5 * retrieval_score + 0.5 * checked.support).clamp(0.0, 1.0);
                stats["support"] = json!(checked.support);
                stats["model_markers_correct"] = json!(checked.model_markers_correct);
                match &checked.summary {
                    Some(summary) => {
                        stats["ttft_s"] = json!(summary.stats.ttft_s);
                        stats["prompt_tokens"] = json!(summary.stats.prompt_tokens);
                        stats["completion_tokens"] = json!(summary.stats.completion_tokens);
                        stats["finish_reason"] = json!(summary.stats.finish_reason);
                    }
                    None => stats["ended_early"] = json!(true),
                }
                stats["raw_answer"] = json!(checked.raw);
                stats["checks"] = json!(checked.checks);
                stats["first_token_s"] = json!(checked.first_token_s);
                stats["first_sentence_s"] = json!(checked.first_sentence_s);
                // Delivery already chose: the fallback was shown when no claim survived.
                if checked.answered {
                    (checked.text, checked.citations, confidence, false)
                } else {
                    (Chat::fallback_text(&coach), Vec::new(), confidence, true)
                }
            }
        };
        stats["total_s"] = json!(started.elapsed().as_secs_f64());
        let confidence = ((confidence as f64) * 1000.0).round() / 1000.0;
        let Some(conversation_id) = conversation_id else {
            // An API completion: the caller keeps the conversation, so nothing is stored.
            return Ok(Message {
                id: format!("chatcmpl-{}", crate::auth::new_id()),
                role: "assistant".into(),
                content,
                citations,
                confidence: Some(confidence),
                fallback,
                stats: Some(stats),
                channel: "api".into(),
                ..Message::unsaved()
            });
        };
        crate::crash_points::reached("answer.before_store");
        let (message, new) = self
            .db
            .call(move |c| {
                let scope = speaker.scope();
                // One answer per question, however many times it was asked to be answered (a
                // resend after a crash can race an answer still being written).
                if let Some(existing) =
                    conversations::answer_to(c, scope, &conversation_id, reply_to)?
                {
                    return Ok((existing, false));
                }
                let message = conversations::add_message(
                    c,
                    scope,
                    &conversation_id,
                    &NewMessage {
                        role: "assistant",
                        content: &content,
                        citations: &citations,
                        confidence: Some(confidence),
                        fallback,
                        stats: Some(stats),
                        ..NewMessage::default()
                    },
                )?
                .message;
                // Gaps are what end users missed; the team's own tests are not counted.
                if fallback && matches!(speaker, Speaker::Visitor { .. }) {
                    super::gaps::record(
                        c,
                        scope,
                        &conversation_id,
                        &message.id,
                        &masked_question,
                        retrieval_score as f64,
                    )?;
                }
                Ok::<_, ChatError>((message, true))
            })
            .await?;
        if new {
            self.publish_message(&tenant_id, &message);
        }
        Ok(message)
    }
}

/// Share of the confidence threshold retrieval must reach for the model to be asked, when
/// every sentence is then checked: the check, not a guess from retrieval alone, decides about
/// passages that only just miss (a question answered in a short FAQ entry scores low).
pub const CHECKED_RETRIEVAL_GATE: f64 = 0.8;

fn retrieval_gate(coach: &Coach) -> f64 {
    match coach.strictness {
        Strictness::Open => coach.confidence_threshold,
        Strictness::Strict | Strictness::Balanced => {
            coach.confidence_threshold * CHECKED_RETRIEVAL_GATE
        }
    }
}

/// What to search for a question, given the conversation so far. A short follow-up ("and for
/// kids?") cannot stand alone: it is searched joined with the previous question. A longer one
/// may or may not refer back ("how many people are in each one?"), so it is searched both
/// alone and joined, and the two result lists are fused by rank: a question that stands alone
/// keeps its own passages on top, one that refers back gains the context's. (On the answers
/// benchmark, always joining put the answering passage first for 18 of 38 questions on a new
/// topic, against 27 alone and 28 fused.)
fn retrieval_queries(question: &str, history: &[Message]) -> Vec<String> {
    let Some(previous) = history.iter().rev().find(|m| m.role == "user") else {
        return vec![question.to_string()];
    };
    let joined = format!("{} {question}", previous.content);
    if question.split_whitespace().count() < 6 {
        vec![joined]
    } else {
        vec![question.to_string(), joined]
    }
}

/// System message (persona, rules, numbered passages), recent history, the question.
fn prompt(
    coach: &Coach,
    passages: &[SearchHit],
    history: &[Message],
    question: &str,
) -> Vec<ChatMessage> {
    let persona = if coach.persona.trim().is_empty() {
        format!("You are {}, a friendly and practical coach.", coach.name)
    } else {
        format!("You are {}. {}", coach.name, coach.persona.trim())
    };
    let mut system = format!(
        "{persona}\nAnswer the question using only the passages below. After each sentence, \
         cite the passage it comes from by its number in square brackets, like [1]. If the \
         passages do not contain the answer, say that you do not know. {}\n\nPassages:",
        coach.answer_length.instruction()
    );
    let mut budget = PASSAGE_CHARS;
    for (i, passage) in passages.iter().enumerate() {
        if budget < 80 {
            break;
        }
        let source = if passage.heading_path.is_empty() {
            passage.document_title.clone()
        } else {
            format!("{} / {}", passage.document_title, passage.heading_path)
        };
        let text: String = passage.text.chars().take(budget).collect();
        budget = budget.saturating_sub(text.chars().count());
        system.push_str(&format!("\n[{}] ({source}) {text}", i + 1));
    }
    let mut messages = vec![ChatMessage::new(Role::System, system)];
    // Most recent turns first until the history budget is spent; answers lose their markers
    // (they refer to earlier passages) and fallbacks are left out.
    let mut recent = Vec::new();
    let mut budget = HISTORY_CHARS;
    // Staff replies count as the coach's side; events (someone joined) are not dialogue.
    for message in history
        .iter()
        .rev()
        .filter(|m| !m.fallback && m.role != "event")
    {
        let text: String = message.content.chars().take(budget).collect();
        if text.is_empty() {
            break;
        }
        budget -= text.chars().count();
        let role = if message.role == "user" {
            Role::User
        } else {
            Role::Assistant
        };
        recent.push(ChatMessage::new(role, strip_markers(&text)));
    }
    // A history that opens with an assistant turn confuses some chat templates.
    while recent.last().is_some_and(|m| m.role == Role::Assistant) {
        recent.pop();
    }
    messages.extend(recent.into_iter().rev());
    messages.push(ChatMessage::new(Role::User, question));
    messages
}

fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(" [") {
        let after = &rest[open + 2..];
        match after.find(']') {
            Some(close)
                if after[..close]
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..open + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_ups_are_searched_with_the_previous_question_and_longer_ones_alone_too() {
        let previous = Message {
            id: "m".into(),
            conversation_id: "c".into(),
            seq: 1,
            role: "user".into(),
            client_id: None,
            author_name: None,
            content: "How long do refunds take?".into(),
            citations: vec![],
            confidence: None,
            fallback: false,
            created_at: String::new(),
            stats: None,
            quick_replies: Vec::new(),
            asks_value: false,
            value_unit: None,
            channel: "web".into(),
        };
        assert_eq!(
            retrieval_queries("and for gift cards?", std::slice::from_ref(&previous)),
            ["How long do refunds take? and for gift cards?"]
        );
        let long = "What is the best time of day to do the breathing exercise?";
        assert_eq!(
            retrieval_queries(long, std::slice::from_ref(&previous)),
            [
                long.to_string(),
                format!("How long do refunds take? {long}")
            ]
        );
        assert_eq!(retrieval_queries(long, &[]), [long]);
        assert_eq!(strip_markers("Yes [1]. And no [2, 3]."), "Yes. And no.");
    }
}
