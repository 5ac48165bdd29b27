//! Faithfulness: each sentence of an answer is checked, while the answer is generated, against
//! the passage it cites, and only what passes reaches the end user.
//!
//! A sentence is one of:
//! - **code**: a line inside a fenced block, copied as written and never cited;
//! - **a refusal** ("I don't know", "the passages do not say"): the creator's fallback message
//!   says this better, so strict and balanced coaches drop it;
//! - **conversational**: it states no value (no number, duration, amount, date, time, weekday
//!   or name) and it is a greeting or thanks, an offer of help ("let me know if…", "I hope this
//!   helps"), a question back (ends with `?`), or has fewer than three content words ("Sure!",
//!   "Good question."). It needs no source;
//! - **a claim**: everything else. A claim is *supported* when a passage supports it (enough of
//!   its words in two consecutive sentences of the passage, see `citations`) and every fact of
//!   it ([`facts`]) is found in that window with the same value; when the words it shares with
//!   the question (what was asked about) occur in that passage; and when it does not drop a
//!   "not" that the passage's closest sentence has.
//!
//! What happens to a claim that is not supported depends on the coach's [`Strictness`]:
//! *strict* replaces it with the passage's own sentence that supports it best, as a quotation
//! (extractive repair), or drops it when no sentence does; *balanced* does so only for claims
//! with a wrong or unfound value, and keeps other unsupported claims without a marker; *open*
//! changes nothing but the markers (the behaviour before this check). Every sentence's
//! [`SentenceCheck`] is stored with the answer for the dashboard's test chat.

pub mod facts;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use self::facts::{Fact, FactKind};
use super::citations::{self, Citation, content_words};
use crate::inference::embed::cosine;
use crate::knowledge::search::SearchHit;

/// How strictly a coach keeps to its sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strictness {
    /// Every factual sentence must be supported by its passage, facts included; others are
    /// replaced by a quotation from the passage or dropped.
    #[default]
    Strict,
    /// Numbers, durations, amounts, dates, times and names must be right (or the sentence is
    /// quoted or dropped); other sentences without a source are kept, without a citation.
    Balanced,
    /// Sentences are cited where a passage supports them and kept otherwise.
    Open,
}

impl Strictness {
    pub fn as_str(self) -> &'static str {
        match self {
            Strictness::Strict => "strict",
            Strictness::Balanced => "balanced",
            Strictness::Open => "open",
        }
    }

    pub fn parse(text: &str) -> Strictness {
        match text {
            "balanced" => Strictness::Balanced,
            "open" => Strictness::Open,
            _ => Strictness::Strict,
        }
    }
}

/// How much less (of word overlap plus cosine) the passage the model cited may support its
/// sentence than the best one and still be the one cited.
const MODEL_MARKER_MARGIN: f32 = 0.05;

/// Share of a claim's content words a passage sentence must contain to replace it.
pub const REPAIR_OVERLAP: f32 = 0.34;
/// Share of a claim's words the passage's closest sentence must share for its "not" to count.
const POLARITY_OVERLAP: f32 = 0.34;

/// Words of a question that do not say what it is about ("How long does it take to get…").
const GENERIC: &[&str] = &[
    "get",
    "gets",
    "getting",
    "got",
    "take",
    "takes",
    "taking",
    "make",
    "makes",
    "need",
    "needs",
    "want",
    "wants",
    "know",
    "tell",
    "long",
    "much",
    "many",
    "often",
    "soon",
    "way",
    "ways",
    "possible",
    "able",
    "please",
    "help",
    "happen",
    "happens",
    "work",
    "works",
    "mean",
    "means",
    "thing",
    "things",
    "anything",
    "something",
    "really",
    "still",
    "ever",
    "else",
    "okay",
    "hello",
    "thanks",
    "thank",
    "coach",
    "use",
    "ask",
    "give",
    "keep",
    "after",
    "back",
    "find",
    "go",
    "come",
    // What kind of value is asked for: the value itself is checked ("costs €290" answers
    // "what does it cost", whatever verb the passage uses).
    "cost",
    "costs",
    "price",
    "prices",
    "pay",
    "paid",
    "payment",
    "charge",
    "lasts",
    "last",
    // Spanish
    "cuesta",
    "cuestan",
    "precio",
    "precios",
    "pagar",
    "pago",
    "vale",
    "dura",
    "duran",
    "duración",
    "cuánto",
    "cuánta",
    "cuántos",
    "cuántas",
    "tarda",
    "tardan",
    "hacer",
    "tengo",
    "tiene",
    "quiero",
    "necesito",
    "saber",
    "favor",
    "ayuda",
    "pasa",
];

/// [`GENERIC`] as content words, made once.
static GENERIC_WORDS: std::sync::LazyLock<HashSet<String>> =
    std::sync::LazyLock::new(|| content_words(&GENERIC.join(" ")));

/// Share of the question's words the shown claims must contain to answer it, and the higher
/// share when the question names something no passage mentions (a likely near miss).
const ANSWERS_QUESTION: f32 = 0.5;
const ANSWERS_UNFAMILIAR_QUESTION: f32 = 0.75;

/// What became of one sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A claim its passage supports, facts included.
    Supported,
    /// A claim replaced by a quotation of the passage.
    Repaired,
    /// The model's sentences did not answer the question, and a passage sentence that does was
    /// quoted instead (the `sentence` is that quotation).
    Quoted,
    /// Left out: nothing supports it (or it repeats an earlier sentence).
    Dropped,
    /// A claim kept without a source (balanced and open coaches).
    Unsupported,
    Conversational,
    Refusal,
    Code,
}

/// One fact of a sentence and where it was found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FactCheck {
    pub kind: FactKind,
    /// As the sentence wrote it.
    pub text: String,
    pub found: bool,
    /// The passage's words where it was found (or, when not, the passage sentence that was
    /// searched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

/// The check of one sentence, stored with the answer (`stats.checks`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SentenceCheck {
    /// The sentence as the model wrote it, markers removed.
    pub sentence: String,
    pub verdict: Verdict,
    /// What the end user was shown instead, for a repaired sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<String>,
    /// The citation marker, when the sentence cites a passage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marker: Option<usize>,
    pub facts: Vec<FactCheck>,
    /// Why it was not supported as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What to show of a checked sentence.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Show `text` (with its marker). `claim` when it states something from a source: the
    /// first one commits the answer (it will not become the fallback).
    Show {
        text: String,
        claim: bool,
    },
    Hide,
}

/// A passage prepared for checking.
struct Indexed {
    windows: Vec<Window>,
    /// Its sentences, candidates for a quotation.
    sentences: Vec<Window>,
    /// Its words, with those of its document title and headings.
    words: HashSet<String>,
    /// Document title and headings, lower-cased, and their words: what the passage is about
    /// ("Week 3: Movement") even where its text does not repeat it.
    context: String,
    context_words: HashSet<String>,
}

/// Consecutive sentences of a passage, with their words and fact keys.
struct Window {
    text: String,
    /// Its embedding, for sentences when the embedder is there.
    vector: Option<Vec<f32>>,
    lower: String,
    words: HashSet<String>,
    keys: HashSet<String>,
}

impl Window {
    fn new(text: String) -> Window {
        Window {
            vector: None,
            lower: text.to_lowercase(),
            words: content_words(&text),
            keys: facts::keys(&text),
            text,
        }
    }

    /// Two consecutive sentences as one window: their words and facts together, without
    /// reading the text again.
    fn pair(first: &Window, second: &Window) -> Window {
        Window {
            vector: None,
            text: format!("{} {}", first.text, second.text),
            lower: format!("{} {}", first.lower, second.lower),
            words: first.words.union(&second.words).cloned().collect(),
            keys: first.keys.union(&second.keys).cloned().collect(),
        }
    }

    fn has(&self, fact: &Fact) -> bool {
        match fact.kind {
            FactKind::Entity => facts::mentions(&self.lower, &fact.text.to_lowercase()),
            _ => self.keys.contains(&fact.key),
        }
    }
}

/// Checks an answer's sentences in order and keeps the citations they use.
pub struct Checker {
    strictness: Strictness,
    passages: Vec<Indexed>,
    passage_embeddings: Option<Vec<Vec<f32>>>,
    question_embedding: Option<Vec<f32>>,
    /// What the end user asked about: the question's content words.
    question: HashSet<String>,
    /// Every content word of every passage.
    known: HashSet<String>,
    /// Citations in order of first use: the passage index and the words of it that support.
    used: Vec<(usize, String)>,
    /// Words of the question that the shown claims contain.
    covered: HashSet<String>,
    shown: HashSet<String>,
    /// A "Yes!" waiting for its claim, and the index of its check.
    particle: Option<(String, usize)>,
    in_code: bool,
    claims: usize,
    supported: usize,
    model_markers: usize,
    model_markers_right: usize,
    pub checks: Vec<SentenceCheck>,
}

impl Checker {
    pub fn new(
        strictness: Strictness,
        question: &str,
        passages: &[SearchHit],
        embeddings: Option<Embeddings>,
    ) -> Checker {
        let mut passages: Vec<Indexed> = passages.iter().map(index).collect();
        let (passage_embeddings, question_embedding) = match embeddings {
            Some(e) => {
                for (passage, vectors) in passages.iter_mut().zip(e.sentences) {
                    for (sentence, vector) in passage.sentences.iter_mut().zip(vectors) {
                        sentence.vector = Some(vector);
                    }
                }
                (Some(e.passages), Some(e.question))
            }
            None => (None, None),
        };
        let known = passages.iter().flat_map(|p| p.words.clone()).collect();
        Checker {
            strictness,
            passages,
            passage_embeddings,
            question_embedding,
            // Numbers in a question ("two calls") are facts to check, not its subject.
            question: content_words(&facts::without_numbers(question))
                .difference(&GENERIC_WORDS)
                .cloned()
                .collect(),
            known,
            used: Vec::new(),
            covered: HashSet::new(),
            shown: HashSet::new(),
            particle: None,
            in_code: false,
            claims: 0,
            supported: 0,
            model_markers: 0,
            model_markers_right: 0,
            checks: Vec::new(),
        }
    }

    /// Checks the next sentence of the answer (`piece`, as the model wrote it, markers
    /// included). `embedding` is the sentence's embedding without markers, when the embedder
    /// is there ([`citations::strip_markers`] gives that text).
    pub fn check(&mut self, piece: &str, embedding: Option<&[f32]>) -> Outcome {
        // "Yes!" waits for the claim it answers: shown with it when that claim holds up, left
        // out when it was repaired or dropped (so no "Yes!" stands before a quotation that says
        // no).
        if self.strictness != Strictness::Open && !self.in_code && is_particle(piece) {
            self.record(
                piece,
                Verdict::Conversational,
                None,
                None,
                Vec::new(),
                Some("an answer to the question: shown with the sentence after it".into()),
            );
            self.particle = Some((piece.to_string(), self.checks.len() - 1));
            return Outcome::Hide;
        }
        let particle = self.particle.take();
        let before = self.checks.len();
        let outcome = self.check_piece(piece, embedding);
        let Some((particle, at)) = particle else {
            return outcome;
        };
        let held_up = self.checks.get(before).is_some_and(|c| {
            matches!(
                c.verdict,
                Verdict::Supported | Verdict::Unsupported | Verdict::Conversational
            )
        });
        match outcome {
            Outcome::Show { text, claim } if held_up => Outcome::Show {
                text: format!("{particle} {text}"),
                claim,
            },
            outcome => {
                if let Some(check) = self.checks.get_mut(at) {
                    check.verdict = Verdict::Dropped;
                    check.reason = Some("the sentence it answered with did not hold up".into());
                }
                outcome
            }
        }
    }

    fn check_piece(&mut self, piece: &str, embedding: Option<&[f32]>) -> Outcome {
        // A fence line opens or closes a code block. Lines inside one are shown as written,
        // except to a strict coach, for whom code states facts like prose does.
        let fence = piece.trim_start().starts_with("```");
        if fence || (self.in_code && self.strictness != Strictness::Strict) {
            if fence {
                self.in_code = !self.in_code;
            }
            self.record(piece, Verdict::Code, None, None, Vec::new(), None);
            return Outcome::Show {
                text: piece.to_string(),
                claim: false,
            };
        }
        let (text, cited) = citations::strip_markers(piece);
        if text.is_empty() {
            return Outcome::Hide;
        }
        let words = content_words(&text);
        let sentence_facts = facts::facts(&text);
        if is_refusal(&text) {
            self.record(&text, Verdict::Refusal, None, None, Vec::new(), None);
            return match self.strictness {
                Strictness::Open => self.show(text, false),
                _ => Outcome::Hide,
            };
        }
        if is_conversational(&text, &words, &sentence_facts, &self.question) {
            self.record(&text, Verdict::Conversational, None, None, Vec::new(), None);
            return self.show(text, false);
        }
        self.claims += 1;
        let assessment = self.assess(&words, &sentence_facts, &cited, embedding);
        for &p in &cited {
            self.model_markers += 1;
            if assessment.supporting.contains(&p) {
                self.model_markers_right += 1;
            }
        }
        let strict = self.strictness == Strictness::Strict;
        if let Some(best) = &assessment.best
            && (best.failures.is_empty()
                || self.strictness == Strictness::Open
                || (!strict && !best.value_failed))
        {
            // Supported (or, for balanced and open coaches, supported by its words).
            self.supported += 1;
            let verdict = if best.failures.is_empty() {
                Verdict::Supported
            } else {
                Verdict::Unsupported
            };
            let marker = self.cite(best.passage, &best.snippet);
            let reason = (!best.failures.is_empty()).then(|| best.failures.join("; "));
            self.shown_claim(&words);
            self.record(
                &text,
                verdict,
                None,
                Some(marker),
                best.facts.clone(),
                reason,
            );
            return self.show(citations::with_markers(&text, &format!("[{marker}]")), true);
        }
        let has_value = sentence_facts.iter().any(|f| f.kind.is_value());
        let failures = assessment
            .best
            .as_ref()
            .map(|b| b.failures.clone())
            .unwrap_or_else(|| vec!["no passage supports it".into()]);
        let facts_checked = match (&assessment.best, &assessment.nearest) {
            (Some(best), _) => best.facts.clone(),
            (None, Some(nearest)) => nearest.clone(),
            (None, None) => unfound(&sentence_facts),
        };
        if self.strictness == Strictness::Open
            || (self.strictness == Strictness::Balanced && !has_value && assessment.best.is_none())
        {
            self.record(
                &text,
                Verdict::Unsupported,
                None,
                None,
                facts_checked,
                Some(failures.join("; ")),
            );
            return self.show(text, false);
        }
        match self.repair(&words, &sentence_facts, embedding) {
            Ok((passage, quote)) if !self.shown.contains(&quote) => {
                self.supported += 1;
                let marker = self.cite(passage, &quote);
                self.shown_claim(&content_words(&quote));
                let delivered = format!("“{quote}” [{marker}]");
                self.record(
                    &text,
                    Verdict::Repaired,
                    Some(delivered.clone()),
                    Some(marker),
                    facts_checked,
                    Some(failures.join("; ")),
                );
                self.shown.insert(quote);
                Outcome::Show {
                    text: delivered,
                    claim: true,
                }
            }
            other => {
                let mut reasons = failures;
                match other {
                    Err(why) => reasons.push(why),
                    Ok(_) => reasons.push("its quotation was already given".into()),
                }
                self.record(
                    &text,
                    Verdict::Dropped,
                    None,
                    None,
                    facts_checked,
                    Some(reasons.join("; ")),
                );
                Outcome::Hide
            }
        }
    }

    /// `text` unless it was shown already (small models repeat themselves).
    fn show(&mut self, text: String, claim: bool) -> Outcome {
        if !self.shown.insert(text.clone()) {
            if let Some(last) = self.checks.last_mut() {
                last.verdict = Verdict::Dropped;
                last.reason = Some("it repeats an earlier sentence".into());
            }
            return Outcome::Hide;
        }
        Outcome::Show { text, claim }
    }

    fn record(
        &mut self,
        sentence: &str,
        verdict: Verdict,
        delivered: Option<String>,
        marker: Option<usize>,
        facts: Vec<FactCheck>,
        reason: Option<String>,
    ) {
        self.checks.push(SentenceCheck {
            sentence: sentence.to_string(),
            verdict,
            delivered,
            marker,
            facts,
            reason,
        });
    }

    /// The marker for words of passage `p`, numbered in order of first use. Each citation
    /// quotes what supports its sentence: a sentence supported by other words of the same
    /// passage gets a marker of its own, unless those words contain (or are inside) an earlier
    /// citation's.
    fn cite(&mut self, p: usize, words: &str) -> usize {
        let snippet = citations::snippet(words);
        let same = self.used.iter().position(|(u, quoted)| {
            *u == p && (quoted.contains(snippet.as_str()) || snippet.contains(quoted.as_str()))
        });
        match same {
            Some(position) => {
                if self.used[position].1.len() < snippet.len() {
                    self.used[position].1 = snippet;
                }
                position + 1
            }
            None => {
                self.used.push((p, snippet));
                self.used.len()
            }
        }
    }

    /// Whether the claims shown so far answer the question: they contain enough of its words.
    pub fn answers_question(&self) -> bool {
        self.strictness == Strictness::Open || self.coverage(&self.covered)
    }

    fn coverage(&self, words: &HashSet<String>) -> bool {
        if self.question.is_empty() {
            return true;
        }
        let unfamiliar = self.question.iter().any(|w| !self.known.contains(w));
        let needed = if unfamiliar {
            ANSWERS_UNFAMILIAR_QUESTION
        } else {
            ANSWERS_QUESTION
        };
        citations::overlap(&self.question, words) >= needed
    }

    fn shown_claim(&mut self, words: &HashSet<String>) {
        self.covered
            .extend(words.intersection(&self.question).cloned());
    }

    /// When the model's sentences did not answer the question: the passage sentences that
    /// would (each contains enough of the question's words by itself, with its headings),
    /// with a score by words and meaning, best first. [`Checker::quote`] gives the chosen one.
    pub fn quote_candidates(&self) -> Vec<(String, f32)> {
        if self.strictness == Strictness::Open {
            return Vec::new();
        }
        let mut candidates: Vec<(String, f32)> = self
            .passages
            .iter()
            .enumerate()
            .flat_map(|(p, passage)| passage.sentences.iter().map(move |s| (p, s)))
            .filter(|(_, s)| s.words.len() >= 3 && !self.shown.contains(&s.text))
            .filter(|(p, s)| {
                // It must answer by itself, not with words scattered over other sentences. A
                // sentence is about its section's subject too ("Can I watch a session later?"
                // over "Recordings stay in the app for 7 days").
                let mut covered: HashSet<String> =
                    s.words.intersection(&self.question).cloned().collect();
                covered.extend(
                    self.passages[*p]
                        .context_words
                        .intersection(&self.question)
                        .cloned(),
                );
                self.coverage(&covered)
            })
            .map(|(p, s)| {
                // Its own words count more than its headings'; then closeness in meaning.
                let score = citations::overlap(&self.question, &s.words)
                    + 0.5 * citations::overlap(&self.question, &self.passages[p].context_words)
                    + self.similarity(self.question_embedding.as_deref(), s);
                (s.text.clone(), score)
            })
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        candidates.dedup_by(|a, b| a.0 == b.0);
        candidates
    }

    /// Cosine between a vector and a passage sentence, 0 when either is unknown.
    fn similarity(&self, vector: Option<&[f32]>, sentence: &Window) -> f32 {
        vector
            .zip(sentence.vector.as_deref())
            .map(|(a, b)| cosine(a, b))
            .unwrap_or(0.0)
    }

    /// The best of [`Checker::quote_candidates`] as a quotation with its marker, if any.
    pub fn quote_answer(&mut self) -> Option<String> {
        let (best, _) = self.quote_candidates().into_iter().next()?;
        self.quote(&best)
    }

    /// Shows `sentence` (one of [`Checker::quote_candidates`]) as a quotation with its marker.
    fn quote(&mut self, sentence: &str) -> Option<String> {
        let p = self
            .passages
            .iter()
            .position(|passage| passage.sentences.iter().any(|s| s.text == sentence))?;
        let marker = self.cite(p, sentence);
        self.shown_claim(&content_words(sentence));
        self.shown.insert(sentence.to_string());
        let delivered = format!("“{sentence}” [{marker}]");
        self.record(
            sentence,
            Verdict::Quoted,
            Some(delivered.clone()),
            Some(marker),
            Vec::new(),
            Some("the answer did not address the question; the passage does".into()),
        );
        Some(delivered)
    }

    /// The claim against each passage: which support it by their words, and the best window
    /// of the best of them with its fact checks.
    fn assess(
        &self,
        words: &HashSet<String>,
        sentence_facts: &[Fact],
        cited: &[usize],
        embedding: Option<&[f32]>,
    ) -> Assessment {
        let scores: Vec<f32> = self
            .passages
            .iter()
            .enumerate()
            .map(|(p, passage)| {
                let lexical = passage
                    .windows
                    .iter()
                    .map(|w| citations::overlap(words, &w.words))
                    .fold(0.0, f32::max);
                let semantic = embedding
                    .zip(self.passage_embeddings.as_ref().and_then(|e| e.get(p)))
                    .map(|(s, v)| cosine(s, v))
                    .unwrap_or(0.0);
                if citations::supports(lexical, semantic) {
                    lexical + semantic
                } else {
                    0.0
                }
            })
            .collect();
        let supporting: Vec<usize> = (0..scores.len()).filter(|&p| scores[p] > 0.0).collect();
        // The passage that supports the sentence best comes first: a small model often cites a
        // near miss beside the passage that holds the answer. Its own marker wins a near tie.
        let top = supporting.iter().map(|&p| scores[p]).fold(0.0, f32::max);
        let rank = |p: usize| {
            if cited.contains(&p) && scores[p] + MODEL_MARKER_MARGIN >= top {
                top + 1.0
            } else {
                scores[p]
            }
        };
        let mut order = supporting.clone();
        order.sort_by(|a, b| rank(*b).total_cmp(&rank(*a)));
        let mut best: Option<Candidate> = None;
        for p in order {
            let candidate = self.against(p, words, sentence_facts);
            let better = best
                .as_ref()
                .is_none_or(|b| candidate.failures.len() < b.failures.len());
            if better {
                best = Some(candidate);
            }
            if best.as_ref().is_some_and(|b| b.failures.is_empty()) {
                break;
            }
        }
        // A claim nothing supports still shows which of its facts the closest passage has.
        let nearest = match &best {
            Some(_) => None,
            None => cited
                .iter()
                .copied()
                .find(|&p| p < self.passages.len())
                .or_else(|| {
                    (0..self.passages.len()).max_by(|&a, &b| {
                        let lexical = |p: usize| {
                            self.passages[p]
                                .windows
                                .iter()
                                .map(|w| citations::overlap(words, &w.words))
                                .fold(0.0, f32::max)
                        };
                        lexical(a).total_cmp(&lexical(b))
                    })
                })
                .map(|p| self.against(p, words, sentence_facts).facts),
        };
        Assessment {
            supporting,
            best,
            nearest,
        }
    }

    /// Checks the claim's facts in the window of passage `p` that holds most of them.
    fn against(&self, p: usize, words: &HashSet<String>, sentence_facts: &[Fact]) -> Candidate {
        let passage = &self.passages[p];
        let checked: Vec<&Fact> = sentence_facts
            .iter()
            .filter(|f| f.kind != FactKind::Negation)
            .collect();
        let window = passage
            .windows
            .iter()
            .max_by(|a, b| {
                let found = |w: &Window| checked.iter().filter(|f| w.has(f)).count();
                found(a).cmp(&found(b)).then(
                    citations::overlap(words, &a.words)
                        .total_cmp(&citations::overlap(words, &b.words)),
                )
            })
            .expect("a passage has a window");
        let mut facts = Vec::new();
        let mut failures = Vec::new();
        let mut value_failed = false;
        for fact in &checked {
            let found = window.has(fact)
                || (fact.kind == FactKind::Entity
                    && facts::mentions(&passage.context, &fact.text.to_lowercase()));
            if !found {
                failures.push(format!("“{}” is not in the passage", fact.text));
                value_failed |= fact.kind.is_value();
            }
            facts.push(FactCheck {
                kind: fact.kind,
                text: fact.text.clone(),
                found,
                evidence: Some(evidence(&window.text, found.then_some(fact))),
            });
        }
        // Polarity: a "not" must be in the window, and a "not" in the passage's closest
        // sentence must not be dropped.
        let negated = sentence_facts.iter().any(|f| f.kind == FactKind::Negation);
        let closest = passage
            .sentences
            .iter()
            .max_by(|a, b| {
                citations::overlap(words, &a.words).total_cmp(&citations::overlap(words, &b.words))
            })
            .filter(|s| citations::overlap(words, &s.words) >= POLARITY_OVERLAP);
        let passage_negates = closest.is_some_and(|s| s.keys.contains("negation"));
        let mut polarity = |text: String, found: bool, evidence_in: &str| {
            facts.push(FactCheck {
                kind: FactKind::Negation,
                text,
                found,
                evidence: Some(evidence(evidence_in, None)),
            });
        };
        if negated {
            let found = window.keys.contains("negation");
            polarity(negation_word(sentence_facts), found, &window.text);
            if !found {
                failures.push("the passage does not say “not”".into());
            }
        } else if let Some(closest) = closest.filter(|_| passage_negates) {
            polarity("(no negation)".into(), false, &closest.text);
            failures.push("the passage says “not” where the sentence does not".into());
        }
        // What the question asked about must be in the passage, not only in the sentence.
        let missing: Vec<&String> = words
            .intersection(&self.question)
            .filter(|w| !passage.words.contains(*w))
            .collect();
        if !missing.is_empty() {
            let mut missing: Vec<&str> = missing.iter().map(|w| w.as_str()).collect();
            missing.sort();
            failures.push(format!(
                "the passage does not mention what was asked about ({})",
                missing.join(", ")
            ));
        }
        Candidate {
            passage: p,
            snippet: window.text.clone(),
            facts,
            failures,
            value_failed,
        }
    }

    /// The passage sentence that supports the claim best, for a quotation: it must contain at
    /// least [`REPAIR_OVERLAP`] of the claim's words, and the claim must not be about something
    /// (a word of the question) that no passage mentions. Sentences that also hold the claim's
    /// values and what was asked about are preferred.
    fn repair(
        &self,
        words: &HashSet<String>,
        sentence_facts: &[Fact],
        embedding: Option<&[f32]>,
    ) -> Result<(usize, String), String> {
        let mut absent: Vec<&str> = words
            .intersection(&self.question)
            .filter(|w| !self.known.contains(*w))
            .map(|w| w.as_str())
            .collect();
        if !absent.is_empty() {
            absent.sort();
            return Err(format!(
                "no passage mentions what was asked about ({})",
                absent.join(", ")
            ));
        }
        let asked: HashSet<String> = words.intersection(&self.question).cloned().collect();
        let values: Vec<&Fact> = sentence_facts
            .iter()
            .filter(|f| f.kind.is_value())
            .collect();
        self.passages
            .iter()
            .enumerate()
            .flat_map(|(p, passage)| passage.sentences.iter().map(move |s| (p, s)))
            .filter(|(_, s)| s.words.len() >= 3)
            .map(|(p, s)| {
                let overlap = citations::overlap(words, &s.words);
                let about = citations::overlap(&asked, &s.words);
                let asked_all = citations::overlap(&self.question, &s.words);
                let held = values.iter().filter(|f| s.has(f)).count() as f32;
                // Closeness in meaning to the claim and to the question, when known.
                // The question weighs more than the claim: the claim got something wrong.
                let meaning = 0.5 * self.similarity(embedding, s)
                    + 1.5 * self.similarity(self.question_embedding.as_deref(), s);
                (
                    p,
                    s,
                    overlap,
                    overlap + about + asked_all + 0.25 * held + meaning,
                )
            })
            // It says enough of the claim, or it is about everything the claim says about
            // what was asked (the claim got a detail of it wrong).
            .filter(|(p, s, overlap, _)| {
                *overlap >= REPAIR_OVERLAP
                    || (!asked.is_empty()
                        && asked.iter().all(|w| {
                            s.words.contains(w) || self.passages[*p].context_words.contains(w)
                        }))
            })
            .max_by(|a, b| a.3.total_cmp(&b.3))
            .map(|(p, s, _, _)| (p, s.text.clone()))
            .ok_or_else(|| "no passage sentence says enough of it to quote".into())
    }

    /// The citations used so far, numbered as in the text.
    pub fn citations(&self, passages: &[SearchHit]) -> Vec<Citation> {
        self.used
            .iter()
            .enumerate()
            .map(|(i, (p, snippet))| {
                let passage = &passages[*p];
                Citation {
                    marker: i + 1,
                    document_id: passage.document_id.clone(),
                    document_title: passage.document_title.clone(),
                    page: passage.page,
                    heading_path: passage.heading_path.clone(),
                    snippet: snippet.clone(),
                    chunk_id: passage.chunk_id,
                }
            })
            .collect()
    }

    /// Supported (or repaired) claims / claims, in [0, 1]; 0 when there was no claim.
    pub fn support(&self) -> f32 {
        if self.claims == 0 {
            0.0
        } else {
            self.supported as f32 / self.claims as f32
        }
    }

    /// Markers the model wrote whose passage supports their sentence / markers it wrote.
    pub fn model_markers_correct(&self) -> Option<f32> {
        (self.model_markers > 0)
            .then(|| self.model_markers_right as f32 / self.model_markers as f32)
    }
}

struct Assessment {
    /// Passages that support the claim by its words (0-based).
    supporting: Vec<usize>,
    best: Option<Candidate>,
    /// With no supporting passage: the fact checks against the closest one.
    nearest: Option<Vec<FactCheck>>,
}

struct Candidate {
    passage: usize,
    snippet: String,
    facts: Vec<FactCheck>,
    failures: Vec<String>,
    /// A number, duration, amount, date, time or name was not found.
    value_failed: bool,
}

/// Embeddings for the paraphrase test and for choosing quotations.
pub struct Embeddings {
    pub question: Vec<f32>,
    /// One per passage.
    pub passages: Vec<Vec<f32>>,
    /// Per passage, one per sentence of [`passage_sentences`].
    pub sentences: Vec<Vec<Vec<f32>>>,
}

/// The pieces an answer is checked in, covering the text: a sentence ends after `.`, `!` or
/// `?` followed by whitespace, after `。`, `！` or `？`, and at every line break (list items and
/// code lines are pieces of their own). Each piece keeps the whitespace after it.
pub fn answer_sentences(text: &str) -> Vec<std::ops::Range<usize>> {
    crate::knowledge::chunk::split_after(text, |c, next_is_space| {
        matches!(c, '。' | '！' | '？' | '\n') || (matches!(c, '.' | '!' | '?') && next_is_space)
    })
}

/// A passage's sentences, as the checker quotes them.
pub fn passage_sentences(text: &str) -> Vec<String> {
    crate::knowledge::chunk::sentences(text)
        .into_iter()
        .map(|r| text[r].trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn index(passage: &SearchHit) -> Indexed {
    let text = passage.text.as_str();
    let sentences: Vec<Window> = passage_sentences(text)
        .into_iter()
        .map(Window::new)
        .collect();
    let windows = if sentences.len() <= 1 {
        vec![Window::new(text.trim().to_string())]
    } else {
        sentences
            .windows(2)
            .map(|pair| Window::pair(&pair[0], &pair[1]))
            .collect()
    };
    let context = format!("{} > {}", passage.document_title, passage.heading_path);
    let context_words = content_words(&context);
    let mut words = content_words(text);
    words.extend(context_words.iter().cloned());
    Indexed {
        windows,
        words,
        sentences,
        context: context.to_lowercase(),
        context_words,
    }
}

fn unfound(sentence_facts: &[Fact]) -> Vec<FactCheck> {
    sentence_facts
        .iter()
        .map(|f| FactCheck {
            kind: f.kind,
            text: f.text.clone(),
            found: false,
            evidence: None,
        })
        .collect()
}

fn negation_word(sentence_facts: &[Fact]) -> String {
    sentence_facts
        .iter()
        .find(|f| f.kind == FactKind::Negation)
        .map(|f| f.text.clone())
        .unwrap_or_default()
}

/// Up to 160 characters of the window, around the fact when it was found.
fn evidence(window: &str, fact: Option<&Fact>) -> String {
    const WIDTH: usize = 160;
    let chars: Vec<char> = window.chars().collect();
    if chars.len() <= WIDTH {
        return window.to_string();
    }
    let lower = window.to_lowercase();
    let at = fact
        .and_then(|f| {
            lower.find(&f.text.to_lowercase()).or_else(|| {
                f.text
                    .split_whitespace()
                    .next()
                    .and_then(|w| lower.find(&w.to_lowercase()))
            })
        })
        // The offset is into the lower-cased text (lower-casing can change a character's
        // length in bytes, even the number of characters): count there, then clamp.
        .map(|byte| lower[..byte].chars().count().min(chars.len()))
        .unwrap_or(0);
    let start = at.saturating_sub(WIDTH / 3).min(chars.len() - WIDTH);
    let mut out: String = chars[start..start + WIDTH].iter().collect();
    if start > 0 {
        out.insert(0, '…');
    }
    if start + WIDTH < chars.len() {
        out.push('…');
    }
    out
}

/// "I don't know", "The passages do not mention it."
fn is_refusal(text: &str) -> bool {
    const PHRASES: &[&str] = &[
        "don't know",
        "don’t know",
        "do not know",
        "not sure",
        "no information",
        "not mentioned",
        "isn't mentioned",
        "is not mentioned",
        "does not say",
        "doesn't say",
        "do not say",
        "don't say",
        "does not mention",
        "doesn't mention",
        "do not mention",
        "don't mention",
        "do not contain",
        "don't contain",
        "does not contain",
        "doesn't contain",
        "not provided",
        "cannot find",
        "can't find",
        "could not find",
        "couldn't find",
        "unable to answer",
        "cannot answer",
        "can't answer",
        "not able to answer",
        // Spanish
        "no lo sé",
        "no sé",
        "no tengo información",
        "no hay información",
        "no se menciona",
        "no mencionan",
        "no menciona",
        "no puedo responder",
        "no encuentro",
        "no estoy seguro",
        "no estoy segura",
    ];
    // Said of the coach's own knowledge or of the sources: "If you are not sure, write to…"
    // is advice, and "Towels are not provided" a fact.
    const SPEAKERS: &[&str] = &[
        "i ",
        "i'",
        "we ",
        "passage",
        "document",
        "guide",
        "context",
        "source",
        "text",
        "yo ",
        "no lo sé",
        "no sé",
        "pasaje",
        "documento",
        "guía",
        "fuente",
        "información",
    ];
    let lower = format!(" {}", text.to_lowercase().replace('’', "'"));
    PHRASES.iter().any(|p| lower.contains(p))
        && SPEAKERS
            .iter()
            .any(|s| lower.contains(&format!(" {s}")) || lower.starts_with(s))
}

/// Greetings, thanks, offers of help and questions back that state no value need no source:
/// the sentence without its set phrase has fewer than three content words and none of the
/// question's. A bare "Sure!" or "Great question." is one too.
fn is_conversational(
    text: &str,
    words: &HashSet<String>,
    sentence_facts: &[Fact],
    question: &HashSet<String>,
) -> bool {
    if sentence_facts.iter().any(|f| f.kind.is_value()) {
        return false;
    }
    const OPENINGS: &[&str] = &[
        "hi",
        "hello",
        "hey",
        "thanks",
        "thank you",
        "welcome",
        "good morning",
        "good afternoon",
        "good evening",
        "great question",
        "good question",
        "you're welcome",
        "you are welcome",
        "of course",
        "certainly",
        "absolutely",
        // Spanish
        "hola",
        "gracias",
        "claro",
        "por supuesto",
        "buena pregunta",
        "bienvenido",
        "bienvenida",
        "buenos días",
        "buenas tardes",
    ];
    const OFFERS: &[&str] = &[
        "let me know",
        "feel free",
        "happy to help",
        "glad to help",
        "hope this helps",
        "hope that helps",
        "anything else",
        "any other question",
        "any more question",
        "don't hesitate",
        "do not hesitate",
        "i'm here to help",
        "i am here to help",
        "here to help",
        "good luck",
        "have a great",
        "have a nice",
        "no dudes en",
        "espero que te ayude",
        "espero que esto",
        "avísame",
        "otra pregunta",
        "más preguntas",
        "aquí para ayudar",
        "encantado de ayudar",
        "encantada de ayudar",
        "mucha suerte",
    ];
    const ASKING_BACK: &[&str] = &[
        "would you",
        "do you",
        "are you",
        "can i help",
        "how can i",
        "shall i",
        "should i",
        "is there anything",
        "anything else",
        "what else",
        "want me to",
        "¿quieres",
        "¿te gustaría",
        "¿puedo ayudar",
        "¿necesitas",
        "¿hay algo",
    ];
    let lower = text.to_lowercase().replace('’', "'");
    let opening = OPENINGS
        .iter()
        .filter(|o| {
            lower
                .strip_prefix(**o)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ',', '!', '.']))
        })
        .max_by_key(|o| o.len());
    let phrase = opening.or_else(|| OFFERS.iter().find(|o| lower.contains(**o)));
    let asking_back = text.trim_end().ends_with('?')
        && ASKING_BACK.iter().any(|a| {
            lower
                .trim_start_matches(['¿', ' '])
                .starts_with(a.trim_start_matches('¿'))
        });
    // What the sentence says besides its set phrase: "Thanks, refunds take…" is a claim.
    let residual = match phrase {
        Some(phrase) => content_words(&lower.replacen(phrase, " ", 1)),
        None => words.clone(),
    };
    let about_question = residual.intersection(question).next().is_some();
    if asking_back {
        return residual.len() < 5;
    }
    (phrase.is_some() || words.len() < 3) && residual.len() < 3 && !about_question
}

/// "Yes!", "No.", "Of course." alone: an answer to the question that is only as true as the
/// claim after it.
fn is_particle(text: &str) -> bool {
    const PARTICLES: &[&str] = &[
        "yes",
        "no",
        "yeah",
        "yep",
        "nope",
        "sure",
        "certainly",
        "absolutely",
        "definitely",
        "exactly",
        "correct",
        "right",
        "indeed",
        "of",
        "course",
        "sí",
        "si",
        "claro",
        "vale",
        "exacto",
        "desde",
        "luego",
        "por",
        "supuesto",
        "cierto",
    ];
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    !words.is_empty() && words.iter().all(|w| PARTICLES.contains(&w.as_str()))
}

#[cfg(test)]
mod tests;
