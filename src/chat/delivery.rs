//! Delivery: the model's answer becomes what people see, one checked sentence at a time.
//!
//! Tokens are collected until a sentence is complete (the next one has begun, or the model
//! stopped). The sentence is then checked (`faithfulness`) and shown, repaired or left out, so
//! nothing shown is ever taken back: what was streamed is exactly what is stored. Sentences
//! that state nothing from a source (a greeting, "I hope this helps") wait until the first
//! claim is shown; an answer in which no claim survives becomes the fallback, and then they
//! are never shown. Every surface (the HTTP stream, the non-streaming reply, live connections)
//! goes through this one loop.

use std::time::Instant;

use futures_util::{Stream, StreamExt, stream};

use super::answer::{Checked, Prepared, Reply};
use super::citations;
use super::faithfulness::{Checker, Embeddings, Outcome, answer_sentences, passage_sentences};
use super::{Chat, ChatError};
use crate::inference::InferenceError;
use crate::inference::chat_engine::{ChatEvent, ChatStream, ChatSummary};
use crate::inference::embed::EmbedKind;

/// What a delivery yields.
pub enum Delivered {
    /// The next checked piece of the answer, to be appended to what was shown.
    Text(String),
    /// The stored message (or why there is none); the last item.
    Done(Box<Result<super::conversations::Message, ChatError>>),
}

impl Chat {
    /// The answer to a prepared turn as checked pieces, then the stored message. Generation is
    /// driven by this stream: dropping it stops the model at its next token.
    pub fn deliver(
        &self,
        mut prepared: Prepared,
    ) -> impl Stream<Item = Delivered> + Send + 'static {
        let stream = match std::mem::replace(&mut prepared.reply, Reply::Fallback) {
            Reply::Fallback => None,
            Reply::Generate(stream) => Some(stream),
        };
        let delivery = Delivery {
            chat: self.clone(),
            prepared: Some(prepared),
            stream,
            checker: None,
            raw: String::new(),
            pending: String::new(),
            held: String::new(),
            shown: String::new(),
            gap: String::new(),
            committed: false,
            first_token_s: None,
            first_shown_s: None,
            to_store: None,
        };
        stream::unfold(delivery, |mut delivery| async move {
            let items = delivery.step().await?;
            Some((items, delivery))
        })
        .flat_map(stream::iter)
    }
}

struct Delivery {
    chat: Chat,
    /// `None` once the answer was stored.
    prepared: Option<Prepared>,
    /// `None` for the fallback (nothing relevant was found).
    stream: Option<ChatStream>,
    checker: Option<Checker>,
    /// The model's text as generated.
    raw: String,
    /// Generated text not yet checked: the sentence in progress.
    pending: String,
    /// Shown text that waits for the first claim.
    held: String,
    /// What was sent so far.
    shown: String,
    /// Whitespace owed before the next shown sentence.
    gap: String,
    /// A claim was shown: the answer will not become the fallback.
    committed: bool,
    first_token_s: Option<f64>,
    first_shown_s: Option<f64>,
    /// Everything was handed out: what to store next (`Some(None)`: the fallback).
    to_store: Option<Option<Checked>>,
}

impl Delivery {
    /// The next items, or `None` when the delivery is over.
    async fn step(&mut self) -> Option<Vec<Delivered>> {
        // Storing publishes the message to live followers, so it comes after the last piece
        // was handed out: a piece that arrived after its message would start a new draft.
        if let Some(checked) = self.to_store.take() {
            let prepared = self.prepared.take()?;
            let stored = self.chat.finish(prepared, checked).await;
            return Some(vec![Delivered::Done(Box::new(stored))]);
        }
        let started = self.prepared.as_ref()?.started;
        if self.stream.is_none() {
            let text = Chat::fallback_text(&self.prepared.as_ref()?.coach);
            self.to_store = Some(None);
            return Some(vec![Delivered::Text(text)]);
        }
        if self.checker.is_none() {
            let prepared = self.prepared.as_ref()?;
            let embeddings = self.chat.embed_passages(prepared).await;
            self.checker = Some(Checker::new(
                prepared.coach.strictness,
                &prepared.question,
                &prepared.passages,
                embeddings,
            ));
        }
        loop {
            let event = self.stream.as_mut()?.next().await;
            match event {
                Some(Ok(ChatEvent::Delta(delta))) => {
                    self.first_token_s
                        .get_or_insert(started.elapsed().as_secs_f64());
                    self.raw.push_str(&delta);
                    self.pending.push_str(&delta);
                    let mut items = Vec::new();
                    for piece in complete_sentences(&mut self.pending) {
                        if let Some(text) = self.consider(&piece, started).await {
                            items.push(Delivered::Text(text));
                        }
                    }
                    if !items.is_empty() {
                        return Some(items);
                    }
                }
                Some(Ok(ChatEvent::Done(summary))) => {
                    let rest = std::mem::take(&mut self.pending);
                    let mut items = Vec::new();
                    for range in answer_sentences(&rest) {
                        if let Some(text) = self.consider(&rest[range], started).await {
                            items.push(Delivered::Text(text));
                        }
                    }
                    return self.conclude(items, started, Some(summary));
                }
                Some(Err(InferenceError::Unavailable(message))) => {
                    // The remote model's server went away mid-answer. What was shown stays;
                    // the unfinished sentence is dropped, and the answer ends as one the model
                    // gave up on: a quotation that answers, or the fallback.
                    tracing::warn!(%message, "the model's server failed mid-answer");
                    self.pending.clear();
                    return self.conclude(Vec::new(), started, None);
                }
                ended => {
                    let error = match ended {
                        Some(Err(error)) => ChatError::from(error),
                        _ => ChatError::Invalid(
                            "the model stopped before finishing its answer".into(),
                        ),
                    };
                    // What was shown stays shown: it is stored as the answer. Otherwise the
                    // turn fails.
                    match self.checker.take().filter(|_| self.committed) {
                        Some(checker) => {
                            tracing::warn!(%error, "generation ended early; keeping what was shown");
                            let checked = self.checked(checker, None);
                            self.to_store = Some(Some(checked));
                            return Some(Vec::new());
                        }
                        None => {
                            self.prepared = None;
                            return Some(vec![Delivered::Done(Box::new(Err(error)))]);
                        }
                    }
                }
            }
        }
    }

    /// Ends a generation: when nothing was shown, a quotation that answers (after what was
    /// held) or the fallback; then what was shown is kept for storing.
    fn conclude(
        &mut self,
        mut items: Vec<Delivered>,
        started: Instant,
        summary: Option<ChatSummary>,
    ) -> Option<Vec<Delivered>> {
        let prepared = self.prepared.as_ref()?;
        let fallback = Chat::fallback_text(&prepared.coach);
        let mut checker = self.checker.take().expect("made before generation");
        let quote = match self.committed {
            true => None,
            false => checker.quote_answer(),
        };
        if let Some(quote) = quote {
            // What was held (supported, but not enough to answer by itself), then the
            // quotation that answers.
            let held = std::mem::take(&mut self.held);
            let text = if held.is_empty() {
                quote
            } else {
                format!("{held} {quote}")
            };
            self.shown.push_str(&text);
            self.first_shown_s
                .get_or_insert(started.elapsed().as_secs_f64());
            self.committed = true;
            items.push(Delivered::Text(text));
        }
        if !self.committed {
            items.push(Delivered::Text(fallback));
        }
        let checked = self.checked(checker, summary);
        self.to_store = Some(Some(checked));
        Some(items)
    }

    /// What was shown, with the checker's citations and checks, for storing.
    fn checked(&mut self, checker: Checker, summary: Option<ChatSummary>) -> Checked {
        let passages = self
            .prepared
            .as_ref()
            .map(|p| p.passages.as_slice())
            .unwrap_or_default();
        Checked {
            citations: checker.citations(passages),
            support: checker.support(),
            model_markers_correct: checker.model_markers_correct(),
            checks: checker.checks,
            text: std::mem::take(&mut self.shown),
            answered: self.committed,
            raw: std::mem::take(&mut self.raw),
            summary,
            first_token_s: self.first_token_s,
            first_sentence_s: self.first_shown_s,
        }
    }

    /// Checks one sentence (with the whitespace after it); returns what to send now.
    async fn consider(&mut self, piece: &str, started: Instant) -> Option<String> {
        let core = piece.trim();
        let trailing = &piece[piece.trim_end().len()..];
        if core.is_empty() {
            self.keep_line_break(piece);
            return None;
        }
        let embedding = match self.prepared.as_ref() {
            Some(prepared) if !core.contains("```") => {
                self.chat
                    .embed_sentence(prepared, &citations::strip_markers(core).0)
                    .await
            }
            _ => None,
        };
        let checker = self.checker.as_mut()?;
        match checker.check(core, embedding.as_deref()) {
            Outcome::Hide => {
                self.keep_line_break(trailing);
                None
            }
            Outcome::Show { text, claim } => {
                let nothing_yet = self.shown.is_empty() && self.held.is_empty();
                let piece = if nothing_yet {
                    text
                } else {
                    format!("{}{text}", self.gap)
                };
                self.gap = if trailing.is_empty() {
                    " ".into()
                } else {
                    trailing.to_string()
                };
                // Until the shown claims answer the question, nothing is sent: an answer
                // that never does becomes a quotation that does, or the fallback.
                let answers = claim && checker.answers_question();
                if !self.committed && !answers {
                    self.held.push_str(&piece);
                    return None;
                }
                self.committed = true;
                let out = format!("{}{piece}", std::mem::take(&mut self.held));
                self.shown.push_str(&out);
                self.first_shown_s
                    .get_or_insert(started.elapsed().as_secs_f64());
                Some(out)
            }
        }
    }

    /// A left-out sentence keeps the paragraph break after it.
    fn keep_line_break(&mut self, whitespace: &str) {
        if whitespace.contains('\n') && !self.gap.contains('\n') {
            self.gap = whitespace.to_string();
        }
    }
}

/// Takes the complete sentences off the front of `pending` (each with the whitespace after
/// it); the last, possibly unfinished one stays.
fn complete_sentences(pending: &mut String) -> Vec<String> {
    let ranges = answer_sentences(pending);
    if ranges.len() < 2 {
        return Vec::new();
    }
    let keep_from = ranges.last().expect("two ranges").start;
    let done: Vec<String> = ranges[..ranges.len() - 1]
        .iter()
        .map(|r| pending[r.clone()].to_string())
        .collect();
    pending.replace_range(..keep_from, "");
    done
}

impl Chat {
    /// The question's, the passages' and their sentences' embeddings, when the embedder is
    /// there: for the checker's paraphrase test and for choosing quotations by meaning.
    async fn embed_passages(&self, prepared: &Prepared) -> Option<Embeddings> {
        let engine = self.inference.embedder().ok()?;
        let tenant = prepared.speaker.scope().tenant_id();
        let sentences: Vec<Vec<String>> = prepared
            .passages
            .iter()
            .map(|p| passage_sentences(&p.text))
            .collect();
        let mut texts: Vec<String> = prepared.passages.iter().map(|p| p.text.clone()).collect();
        texts.extend(sentences.iter().flatten().cloned());
        let question = engine
            .embed(tenant, vec![prepared.question.clone()], EmbedKind::Query)
            .await
            .ok()?
            .pop()?;
        let mut vectors = engine
            .embed(tenant, texts, EmbedKind::Document)
            .await
            .ok()?
            .into_iter();
        let passages = vectors.by_ref().take(prepared.passages.len()).collect();
        let sentences = sentences
            .iter()
            .map(|of_passage| vectors.by_ref().take(of_passage.len()).collect())
            .collect();
        Some(Embeddings {
            question,
            passages,
            sentences,
        })
    }

    async fn embed_sentence(&self, prepared: &Prepared, sentence: &str) -> Option<Vec<f32>> {
        let engine = self.inference.embedder().ok()?;
        engine
            .embed(
                prepared.speaker.scope().tenant_id(),
                vec![sentence.to_string()],
                EmbedKind::Document,
            )
            .await
            .ok()?
            .pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_sentences_are_taken() {
        let mut pending = "Refunds take 14 days. To ask".to_string();
        assert_eq!(complete_sentences(&mut pending), ["Refunds take 14 days. "]);
        assert_eq!(pending, "To ask");
        // "14." could still become "14.5": a sentence ends only when the next one begins.
        let mut pending = "It costs 14.".to_string();
        assert!(complete_sentences(&mut pending).is_empty());
        // List items, lines after a code fence and CJK sentences are pieces of their own.
        let mut pending =
            "Plans:\n- Monthly: €29\n```\nGift cards 退款需要14天。礼品卡".to_string();
        assert_eq!(
            complete_sentences(&mut pending),
            [
                "Plans:\n",
                "- Monthly: €29\n",
                "```\n",
                "Gift cards 退款需要14天。"
            ]
        );
        assert_eq!(pending, "礼品卡");
    }
}
