//! What a proactive message says. Messages, resources and rule nudges are instructions to the
//! coach: with a chat model it writes them from its persona, the person's goals and progress
//! (and, for a resource, the document's passage, cited); without one, or when what it wrote is
//! unusable, the creator's text is sent as written. Check-ins and milestones are set text with
//! the person's figures.

use std::time::{Duration, Instant};

use super::model::{EndUser, Goal, Nudge, NudgeKind, Step, StepKind};
use super::{Coaching, CoachingError};
use crate::auth::TenantScope;
use crate::chat::citations::Citation;
use crate::db::coaching::{GoalStore, NudgeStore};
use crate::inference::chat_engine::ChatRequest;
use crate::inference::chat_template::{ChatMessage, Role};
use crate::inference::generate::GenerationSettings;
use crate::knowledge::search::{SearchMode, SearchRequest};

/// Longest a written nudge may take; it is written ahead of time, so this is generous.
const WRITE_DEADLINE: Duration = Duration::from_secs(90);
const MAX_TOKENS: usize = 120;

/// A message ready to send.
#[derive(Debug, Clone)]
pub struct Written {
    pub text: String,
    pub citations: Vec<Citation>,
    /// `coach` (the model wrote it) or `template` (the creator's text, as written).
    pub by: &'static str,
}

impl Written {
    /// Text written ahead of time and stored on the nudge.
    pub fn stored(text: &str) -> Written {
        Written {
            text: text.to_string(),
            citations: Vec::new(),
            by: "stored",
        }
    }

    fn template(text: String) -> Written {
        Written {
            text,
            citations: Vec::new(),
            by: "template",
        }
    }
}

/// "42", "7.5": figures without needless decimals.
pub(super) fn figure(value: f64) -> String {
    if value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{}", (value * 100.0).round() / 100.0)
    }
}

/// A nudge's goal and its latest value, read with the nudge: check-ins and milestones quote
/// them.
pub(super) type GoalNow = (Goal, Option<f64>);

/// Reads a goal and its latest value.
pub(super) fn goal_now<S: GoalStore>(
    c: &S,
    scope: &TenantScope,
    goal_id: &str,
) -> Result<Option<GoalNow>, crate::db::DbError> {
    let goal = c.goal(scope, goal_id)?;
    let latest = c.check_ins(scope, goal_id)?.last().map(|c| c.value);
    Ok(goal.map(|g| (g, latest)))
}

/// The set texts that need no model: a check-in prompt and a milestone (quoting the goal
/// read with the nudge).
fn set_text(nudge: &Nudge, step: Option<&Step>, goal: Option<&GoalNow>) -> Option<Written> {
    match (nudge.kind, step.map(|s| s.kind)) {
        (NudgeKind::CheckIn, _) | (NudgeKind::Step, Some(StepKind::CheckIn)) => {
            let set = step.map(|s| s.text.trim()).filter(|t| !t.is_empty());
            let text = match (set, goal) {
                (Some(text), _) => text.to_string(),
                (None, Some((goal, _))) => format!(
                    "Time to check in on “{}”: what is your {} today{}? Just reply with the number.",
                    goal.title,
                    goal.metric,
                    if goal.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" (in {})", goal.unit)
                    }
                ),
                (None, None) => "How did it go today? Just reply with the number.".into(),
            };
            Some(Written::template(text))
        }
        (NudgeKind::Step, Some(StepKind::Milestone)) => {
            let mut text = step.map(|s| s.text.trim().to_string()).unwrap_or_default();
            if let Some((goal, latest)) = goal {
                let value = latest.unwrap_or(goal.baseline);
                text.push_str(&format!(
                    " {}: {} of {} {} ({:.0}% of the way).",
                    goal.title,
                    figure(value),
                    figure(goal.target),
                    goal.unit,
                    100.0 * goal.progress(value)
                ));
            }
            Some(Written::template(text.trim().replace("  ", " ")))
        }
        _ => None,
    }
}

/// A nudge's text when it is at hand without a model or another read: written ahead and
/// stored, a set text, or (with no model) a step's instruction as the creator wrote it. The
/// nudge can then be decided and sent in one transaction.
pub(super) fn text_at_hand(
    nudge: &Nudge,
    step: Option<&Step>,
    goal: Option<&GoalNow>,
    model: bool,
) -> Option<Written> {
    if let Some(text) = &nudge.content {
        return Some(Written::stored(text));
    }
    set_text(nudge, step, goal).or_else(|| match (nudge.kind, step) {
        (NudgeKind::Step, Some(step)) if !model && step.document_id.is_none() => {
            Some(Written::template(step.text.trim().to_string()))
        }
        _ => None,
    })
}

impl Coaching {
    /// Writes a nudge's text: a set text, or the coach's message from its instruction (the
    /// instruction as written when there is no model).
    pub(super) async fn write_nudge(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        nudge: &Nudge,
        step: Option<&Step>,
        goal: Option<&GoalNow>,
    ) -> Result<Written, CoachingError> {
        if let Some(written) = set_text(nudge, step, goal) {
            return Ok(written);
        }
        let instruction = match (nudge.kind, step) {
            (NudgeKind::Rule, _) => self.rule_instruction(scope, nudge).await?,
            (_, Some(step)) => step.text.clone(),
            _ => String::new(),
        };
        let document = step.and_then(|s| s.document_id.clone());
        // The person's goals go into the prompt; without a model nothing reads them.
        let goals = if self.inner.inference.chat().is_ok() {
            self.goal_lines(scope, user).await?
        } else {
            Vec::new()
        };
        self.compose(scope, user, &instruction, &goals, document.as_deref())
            .await
    }

    /// The coach writes a proactive message from an instruction for an end user, as a nudge
    /// would be written (the benchmark times this).
    pub async fn write_message(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        instruction: &str,
    ) -> Result<Written, CoachingError> {
        let user = self.end_user(scope, end_user_id).await?;
        let goals = self.goal_lines(scope, &user).await?;
        self.compose(scope, &user, instruction, &goals, None).await
    }

    async fn rule_instruction(
        &self,
        scope: &TenantScope,
        nudge: &Nudge,
    ) -> Result<String, CoachingError> {
        let Some(rule) = &nudge.rule_id else {
            return Ok(String::new());
        };
        let (scope, rule) = (scope.clone(), rule.clone());
        let rule = self.db().call(move |c| c.rule(&scope, &rule)).await?;
        Ok(rule.map(|r| r.instruction).unwrap_or_default())
    }

    /// "Sleep 8 hours: 6 of 8 hours (50%)", one line per open goal.
    async fn goal_lines(
        &self,
        scope: &TenantScope,
        user: &EndUser,
    ) -> Result<Vec<String>, CoachingError> {
        let (scope, id) = (scope.clone(), user.id.clone());
        Ok(self
            .db()
            .call(move |c| {
                let mut lines = Vec::new();
                for goal in c.goals_of(&scope, &id)? {
                    let latest = c.check_ins(&scope, &goal.id)?.last().map(|c| c.value);
                    let value = latest.unwrap_or(goal.baseline);
                    lines.push(format!(
                        "{}: {} of {} {} ({:.0}%)",
                        goal.title,
                        figure(value),
                        figure(goal.target),
                        goal.unit,
                        100.0 * goal.progress(value)
                    ));
                }
                Ok::<_, crate::db::DbError>(lines)
            })
            .await?)
    }

    /// The coach writes from an instruction; the instruction as written when there is no model
    /// or the model wrote nothing usable.
    async fn compose(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        instruction: &str,
        goals: &[String],
        document_id: Option<&str>,
    ) -> Result<Written, CoachingError> {
        let mut citations = Vec::new();
        let mut passage = String::new();
        if let Some(document) = document_id {
            let hits = self
                .inner
                .knowledge
                .search(
                    scope,
                    SearchRequest {
                        query: instruction.to_string(),
                        limit: Some(10),
                        mode: SearchMode::Hybrid,
                    },
                )
                .await
                .map(|found| found.results)
                .unwrap_or_default();
            if let Some(hit) = hits.into_iter().find(|h| h.document_id == document) {
                passage = hit.text.chars().take(1200).collect();
                citations.push(Citation {
                    marker: 1,
                    document_id: hit.document_id.clone(),
                    document_title: hit.document_title.clone(),
                    page: hit.page,
                    heading_path: hit.heading_path.clone(),
                    snippet: hit.text.chars().take(200).collect(),
                    chunk_id: hit.chunk_id,
                });
            }
        }
        let as_written = || {
            let mut text = instruction.trim().to_string();
            if let Some(citation) = citations.first() {
                text.push_str(&format!(" [1] ({})", citation.document_title));
            }
            Written {
                text,
                citations: citations.clone(),
                by: "template",
            }
        };
        let Ok(engine) = self.inner.inference.chat() else {
            return Ok(as_written());
        };
        let coach = self.coach(scope).await?;
        let mut system = format!(
            "You are {}, a coach. {}\nWrite one short message (one to three sentences) to your \
             client on your own initiative. Follow the instruction. Use only the facts given \
             here; do not invent numbers, dates or promises.",
            coach.name, coach.persona
        );
        if !passage.is_empty() {
            system.push_str(&format!(
                "\nShare this passage from \"{}\" and mention it:\n{passage}",
                citations[0].document_title
            ));
        }
        let name = if user.name.is_empty() {
            "your client"
        } else {
            &user.name
        };
        let mut request = format!("Instruction: {instruction}\nClient: {name}");
        if !goals.is_empty() {
            request.push_str(&format!("\nTheir goals: {}", goals.join("; ")));
        }
        let started = Instant::now();
        let stream = engine.chat(
            scope.tenant_id(),
            ChatRequest {
                messages: vec![
                    ChatMessage::new(Role::System, system),
                    ChatMessage::new(Role::User, request),
                ],
                settings: GenerationSettings::greedy(MAX_TOKENS),
                deadline: Some(Instant::now() + WRITE_DEADLINE),
            },
        );
        let text = match stream {
            Ok(stream) => stream.collect().await.map(|(text, _)| text).ok(),
            Err(_) => None,
        };
        let text = text
            .map(|t| t.trim().trim_matches('"').trim().to_string())
            .unwrap_or_default();
        // Too short, or the model refusing or asking back: the creator's words are safer.
        if text.chars().count() < 12 || text.ends_with(':') {
            return Ok(as_written());
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "the coach wrote a proactive message"
        );
        let text = if citations.is_empty() || text.contains("[1]") {
            text
        } else {
            format!("{text} [1]")
        };
        Ok(Written {
            text,
            citations,
            by: "coach",
        })
    }
}
