//! Planned proactive messages: each is a row in `nudges` (unique per rule or step + person +
//! occurrence) and a job that writes it a few minutes ahead, applies the guardrails when it is
//! due, and hands it to the outbox.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::model::{EndUser, Enrollment, NewNudge, Nudge, NudgeKind, ProgramDefinition, StepKind};
use super::outbox::{Outgoing, Recorded};
use super::programs::step_advance;
use super::schedule::{self, QuietHours};
use super::writer::{GoalNow, Written, goal_now, text_at_hand};
use super::{Coaching, CoachingError, job_scope, kinds};
use crate::auth::{TenantScope, new_id};
use crate::chat::coach::Coach;
use crate::db::coaching::{EndUserStore, NudgeStore, NudgeUpdate, ProgramStore};
use crate::jobs::{BoxFuture, Handler, Job, JobError, NewJob, Outcome};

/// Messages the coach writes are written this long before they are due, so slow inference on a
/// CPU never makes them late.
pub const WRITE_AHEAD: Duration = Duration::minutes(5);
/// A person who wrote this recently is in a conversation: a nudge waits instead of cutting in.
const IN_CONVERSATION: Duration = Duration::minutes(10);
/// How long a nudge waits for a conversation (or a staff takeover) to end before trying again.
const CONVERSATION_WAIT: Duration = Duration::minutes(15);

/// The reason of a step a quick reply asked for: it is an answer, so a live conversation does
/// not hold it back.
pub const CHOSEN: &str = "chosen";
/// The reason of a step due at the moment the person enrolled: it is their welcome.
pub const ENROLLED: &str = "enrolled";

/// What the guardrails decide for a nudge that is due.
#[derive(Debug, PartialEq)]
enum Verdict {
    Send,
    Defer(DateTime<Utc>, &'static str),
    Suppress(&'static str),
}

/// Facts the guardrails look at.
struct Situation<'a> {
    user: &'a EndUser,
    coach: &'a Coach,
    kind: NudgeKind,
    now: DateTime<Utc>,
    /// A person of the team took the end user's conversation over.
    taken_over: bool,
    rule_nudges_today: i64,
    rule_nudges_week: i64,
    /// For program steps: the enrolment is not active.
    enrollment_inactive: Option<&'static str>,
    /// The end user asked for this just now (a quick reply).
    chosen: bool,
    /// For rule nudges: why the rule no longer applies (disabled, deleted, the person did
    /// what it was about).
    no_longer_due: Option<&'static str>,
    /// Their channel cannot take a free message now (WhatsApp after 24 hours, no template).
    window_closed: bool,
}

/// Opt-out and enrolment state stop everything; consent and caps only rule nudges; quiet
/// hours and a live conversation defer everything.
fn guardrails(s: &Situation<'_>) -> Verdict {
    if s.user.opted_out_at.is_some() {
        return Verdict::Suppress("opted_out");
    }
    if let Some(reason) = s.enrollment_inactive {
        return Verdict::Suppress(reason);
    }
    let rule = s.kind == NudgeKind::Rule;
    if rule && !s.user.consent {
        return Verdict::Suppress("no_consent");
    }
    if let Some(reason) = s.no_longer_due {
        return Verdict::Suppress(reason);
    }
    if s.taken_over {
        return Verdict::Defer(s.now + CONVERSATION_WAIT, "staff_takeover");
    }
    if !s.chosen
        && s.user
            .last_active_at
            .is_some_and(|at| at <= s.now && s.now - at < IN_CONVERSATION)
    {
        return Verdict::Defer(s.now + CONVERSATION_WAIT, "in_conversation");
    }
    let quiet = QuietHours::parse("quiet_hours", &s.coach.quiet_hours).unwrap_or_default();
    if let Some(end) = quiet.deferral(s.user.tz(), s.now) {
        return Verdict::Defer(end, "quiet_hours");
    }
    if rule && s.rule_nudges_today >= i64::from(s.coach.nudges_per_day) {
        return Verdict::Suppress("daily_cap");
    }
    if rule && s.rule_nudges_week >= i64::from(s.coach.nudges_per_week) {
        return Verdict::Suppress("weekly_cap");
    }
    // WhatsApp refuses free text 24 hours after the person last wrote, unless it is an
    // approved template (none is configured).
    if s.window_closed {
        return Verdict::Suppress("whatsapp_window_closed");
    }
    Verdict::Send
}

/// The job that works on a nudge. No dedupe key: the nudge's own status keeps it to one send,
/// and a resumed enrolment queues its held step again.
fn nudge_job(scope: &TenantScope, user: &EndUser, nudge_id: &str, run_at: DateTime<Utc>) -> NewJob {
    NewJob {
        kind: kinds::NUDGE,
        tenant_id: Some(scope.tenant_id().to_string()),
        subject_id: nudge_id.to_string(),
        payload: json!({}),
        run_at,
        dedupe_key: None,
        clock_id: user.test_clock_id.clone(),
    }
}

/// Applies the guardrails to a due nudge and records the verdict, in one writing transaction:
/// two nudges for one person due at once cannot both pass a cap of one. Returns the verdict and
/// the person's web visitor (to send through).
#[allow(clippy::too_many_arguments)]
fn decide<
    S: NudgeStore + EndUserStore + crate::db::coaching::GoalStore + crate::db::channels::ChannelStore,
>(
    c: &S,
    scope: &TenantScope,
    user: &EndUser,
    coach: &Coach,
    nudge: &Nudge,
    program: Option<&(Enrollment, ProgramDefinition)>,
    now: DateTime<Utc>,
) -> Result<(Verdict, Option<String>), crate::db::DbError> {
    let tz = user.tz();
    let midnight = schedule::at_local(
        tz,
        schedule::local_date(tz, now),
        schedule::LocalTime { hour: 0, minute: 0 },
    );
    let conversations = c.end_user_conversations(scope, &user.id)?;
    let enrollment_inactive = match (nudge.kind, program) {
        (NudgeKind::Step, Some((enrollment, _))) => match enrollment.status.as_str() {
            "active" => None,
            "paused" => Some("paused"),
            _ => Some("unenrolled"),
        },
        _ => None,
    };
    let no_longer_due = match (&nudge.rule_id, nudge.kind) {
        (Some(rule), NudgeKind::Rule) => {
            super::rules::rule_no_longer_due(c, scope, rule, user, nudge, now)?
        }
        _ => None,
    };
    // This nudge, when on its way already (a retry), does not count against itself.
    let own = i64::from(nudge.planned_status == "sending");
    let visitor = c.visitor_of_end_user(scope, &user.id)?;
    let window_closed = match &visitor {
        Some(visitor) => c.window_closed(scope, visitor)?,
        None => false,
    };
    let situation = Situation {
        user,
        coach,
        kind: nudge.kind,
        now,
        taken_over: conversations.first().is_some_and(|c| c.taken_over),
        rule_nudges_today: c.rule_nudges_sent_since(scope, &user.id, midnight)? - own,
        rule_nudges_week: c.rule_nudges_sent_since(scope, &user.id, now - Duration::days(7))? - own,
        enrollment_inactive,
        chosen: matches!(nudge.reason.as_deref(), Some(CHOSEN | ENROLLED)),
        no_longer_due,
        window_closed,
    };
    let verdict = guardrails(&situation);
    let update = match &verdict {
        // A paused enrolment keeps its step for the resume, which plans it again.
        Verdict::Suppress("paused") => NudgeUpdate {
            status: Some("scheduled"),
            reason: Some("paused"),
            ..NudgeUpdate::default()
        },
        Verdict::Suppress(reason) => NudgeUpdate {
            status: Some("suppressed"),
            reason: Some(reason),
            ..NudgeUpdate::default()
        },
        Verdict::Defer(until, reason) => NudgeUpdate {
            status: Some("deferred"),
            reason: Some(reason),
            scheduled_for: Some(*until),
            ..NudgeUpdate::default()
        },
        Verdict::Send => NudgeUpdate {
            status: Some("sending"),
            ..NudgeUpdate::default()
        },
    };
    c.update_nudge(scope, &nudge.id, &update)?;
    Ok((verdict, visitor))
}

/// Plans a nudge once (by its dedupe key) with its job, inside a database call; a nudge planned
/// inside quiet hours is deferred to their end at once. `ahead`: its job comes [`WRITE_AHEAD`]
/// early to write it. False when it was planned already.
pub(super) fn plan_in<S: NudgeStore>(
    c: &S,
    scope: &TenantScope,
    user: &EndUser,
    coach: &Coach,
    mut nudge: NewNudge,
    ahead: bool,
    now: DateTime<Utc>,
) -> Result<bool, crate::db::DbError> {
    let quiet = QuietHours::parse("quiet_hours", &coach.quiet_hours).unwrap_or_default();
    if let Some(end) = quiet.deferral(user.tz(), nudge.scheduled_for) {
        nudge.scheduled_for = end;
        nudge.status = "deferred";
        nudge.reason = Some("quiet_hours".into());
    }
    let run_at = if ahead {
        nudge.scheduled_for - WRITE_AHEAD
    } else {
        nudge.scheduled_for
    };
    let id = new_id();
    let job = nudge_job(scope, user, &id, run_at.max(now));
    c.plan_nudge(scope, &id, &nudge, &job)
}

/// Whether the coach writes this nudge (ahead of time) rather than sending set text.
pub(super) fn needs_writing(kind: NudgeKind, step: Option<StepKind>) -> bool {
    match kind {
        NudgeKind::Rule => true,
        NudgeKind::Step => matches!(step, Some(StepKind::Message | StepKind::Resource)),
        NudgeKind::CheckIn => false,
    }
}

/// What the transaction that loads a due nudge decided.
enum Decided {
    /// The guardrails' verdict, and the person's web visitor (when they have one).
    Verdict(Verdict, Option<String>),
    /// Sent: its text was at hand, so the same transaction stored and recorded it.
    Sent(Box<Recorded>),
}

/// A nudge's message ready to go; a program's step, once sent, is done and plans the next, in
/// the transaction that sends it.
#[allow(clippy::too_many_arguments)]
fn outgoing(
    scope: &TenantScope,
    user: &EndUser,
    nudge: &Nudge,
    program: &Option<(Enrollment, ProgramDefinition)>,
    coach: &Coach,
    goal: Option<&GoalNow>,
    written: Written,
    visitor: String,
    now: DateTime<Utc>,
    model: bool,
) -> Outgoing {
    let advance = match (program, &nudge.step_key) {
        (Some((enrollment, definition)), Some(key)) => Some((
            step_advance(scope, user, enrollment, definition, Some(key), now, model),
            coach.clone(),
        )),
        _ => None,
    };
    let step = program
        .as_ref()
        .and_then(|(_, p)| nudge.step_key.as_deref().and_then(|k| p.step(k)));
    let unit = goal.map(|(goal, _)| goal.unit.as_str());
    Outgoing::new(
        scope, user, nudge, step, unit, written, visitor, advance, now,
    )
}

impl Coaching {
    /// Plans a nudge once (by its dedupe key) and queues its job; a nudge planned inside quiet
    /// hours is deferred to their end at once. Returns the nudge id when it was new.
    pub(super) async fn plan(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        nudge: NewNudge,
        step_kind: Option<StepKind>,
        now: DateTime<Utc>,
    ) -> Result<bool, CoachingError> {
        let ahead = self.writes_ahead(nudge.kind, step_kind);
        let (scope_moved, user_moved) = (scope.clone(), user.clone());
        let planned = self
            .db()
            .call(move |c| {
                let coach = crate::chat::coach::get(c, &scope_moved)?;
                Ok::<_, CoachingError>(plan_in(
                    c,
                    &scope_moved,
                    &user_moved,
                    &coach,
                    nudge,
                    ahead,
                    now,
                )?)
            })
            .await?;
        if planned {
            self.jobs().wake();
        }
        Ok(planned)
    }

    /// Whether a nudge is written ahead of time: the coach writes it, and there is a model.
    pub(super) fn writes_ahead(&self, kind: NudgeKind, step: Option<StepKind>) -> bool {
        needs_writing(kind, step) && self.inner.inference.chat().is_ok()
    }

    /// Queues (again) the job that works on a planned nudge.
    pub(super) async fn queue_nudge(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        nudge_id: &str,
        run_at: DateTime<Utc>,
    ) -> Result<(), CoachingError> {
        self.jobs()
            .enqueue(nudge_job(scope, user, nudge_id, run_at))
            .await?;
        Ok(())
    }

    pub(super) async fn coach(&self, scope: &TenantScope) -> Result<Coach, CoachingError> {
        let scope = scope.clone();
        Ok(self
            .db()
            .call(move |c| crate::chat::coach::get(c, &scope))
            .await?)
    }

    /// Nudges, newest first; for one end user when given; `status` filters the status shown.
    pub async fn nudges(
        &self,
        scope: &TenantScope,
        end_user_id: Option<String>,
        status: Option<String>,
        limit: u32,
    ) -> Result<Vec<Nudge>, CoachingError> {
        let scope = scope.clone();
        Ok(self
            .db()
            .call(move |c| c.nudges(&scope, end_user_id.as_deref(), status.as_deref(), limit))
            .await?)
    }

    /// Works on one nudge at its job's time: write, or apply the guardrails and send.
    async fn work_on_nudge(
        &self,
        scope: &TenantScope,
        nudge_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome, CoachingError> {
        let (scope_moved, id) = (scope.clone(), nudge_id.to_string());
        let model = self.inner.inference.chat().is_ok();
        // One writing transaction loads the nudge and, when it is due and has nothing left to
        // write, applies the guardrails to it; when its text is at hand, it sends it too.
        let found = self
            .db()
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    let Some(nudge) = c.nudge(&scope_moved, &id)? else {
                        return Ok(None);
                    };
                    let Some(user) = c.end_user(&scope_moved, &nudge.end_user_id)? else {
                        return Ok(None);
                    };
                    let program = match &nudge.enrollment_id {
                        Some(id) => match c.enrollment(&scope_moved, id)? {
                            Some(e) => c
                                .program_version(&scope_moved, &e.program_id, e.version)?
                                .map(|p| (e, p)),
                            None => None,
                        },
                        None => None,
                    };
                    let coach = crate::chat::coach::get(c, &scope_moved)?;
                    let goal = match &nudge.goal_id {
                        Some(id) => goal_now(c, &scope_moved, id)?,
                        None => None,
                    };
                    let step = program
                        .as_ref()
                        .and_then(|(_, p)| nudge.step_key.as_deref().and_then(|k| p.step(k)))
                        .cloned();
                    let to_write = nudge.content.is_none()
                        && model
                        && needs_writing(nudge.kind, step.as_ref().map(|s| s.kind));
                    let open = matches!(
                        nudge.planned_status.as_str(),
                        "scheduled" | "deferred" | "sending"
                    );
                    let mut decided = None;
                    if open && !to_write && now >= nudge.scheduled_for {
                        let (verdict, visitor) = decide(
                            c,
                            &scope_moved,
                            &user,
                            &coach,
                            &nudge,
                            program.as_ref(),
                            now,
                        )?;
                        let at_hand = text_at_hand(&nudge, step.as_ref(), goal.as_ref(), model);
                        decided = Some(match (verdict, visitor, at_hand) {
                            (Verdict::Send, Some(visitor), Some(written)) => {
                                let outgoing = outgoing(
                                    &scope_moved,
                                    &user,
                                    &nudge,
                                    &program,
                                    &coach,
                                    goal.as_ref(),
                                    written,
                                    visitor,
                                    now,
                                    model,
                                );
                                Decided::Sent(Box::new(outgoing.record(c)?))
                            }
                            (verdict, visitor, _) => Decided::Verdict(verdict, visitor),
                        });
                    }
                    Ok::<_, CoachingError>(Some((nudge, user, program, coach, goal, step, decided)))
                })
            })
            .await?;
        let Some((mut nudge, user, program, coach, goal, step, decided)) = found else {
            return Ok(Outcome::Done);
        };
        if !matches!(
            nudge.planned_status.as_str(),
            "scheduled" | "deferred" | "sending"
        ) {
            // Sent by a process that died before it planned the next step: plan it now (both
            // steps are idempotent).
            if let (Some((enrollment, definition)), Some(key), "sent") =
                (&program, &nudge.step_key, nudge.planned_status.as_str())
            {
                self.step_done(scope, &user, enrollment, definition, key, now)
                    .await?;
            }
            return Ok(Outcome::Done);
        }
        let (verdict, visitor) = match decided {
            Some(Decided::Sent(recorded)) => {
                self.hand_over(scope, *recorded).await?;
                return Ok(Outcome::Done);
            }
            Some(Decided::Verdict(verdict, visitor)) => (verdict, visitor),
            None => {
                // Written ahead by the model: the text is stored on the nudge, and the job
                // comes back when it is due.
                if nudge.content.is_none()
                    && model
                    && needs_writing(nudge.kind, step.as_ref().map(|s| s.kind))
                {
                    let written = self
                        .write_nudge(scope, &user, &nudge, step.as_ref(), goal.as_ref())
                        .await?;
                    self.store_content(scope, &nudge.id, &written).await?;
                    nudge.content = Some(written.text);
                }
                if now < nudge.scheduled_for {
                    return Ok(Outcome::Again {
                        at: nudge.scheduled_for,
                        payload: json!({}),
                    });
                }
                let (scope_moved, user_moved, nudge_moved, program_moved, coach_moved) = (
                    scope.clone(),
                    user.clone(),
                    nudge.clone(),
                    program.clone(),
                    coach.clone(),
                );
                self.db()
                    .call(move |c| {
                        crate::db::immediate(c, |c| {
                            decide(
                                c,
                                &scope_moved,
                                &user_moved,
                                &coach_moved,
                                &nudge_moved,
                                program_moved.as_ref(),
                                now,
                            )
                        })
                    })
                    .await?
            }
        };
        match verdict {
            Verdict::Suppress(_) => Ok(Outcome::Done),
            Verdict::Defer(until, _) => Ok(Outcome::Again {
                at: until,
                payload: json!({}),
            }),
            Verdict::Send => {
                let written = match &nudge.content {
                    Some(text) => Written::stored(text),
                    None => {
                        self.write_nudge(scope, &user, &nudge, step.as_ref(), goal.as_ref())
                            .await?
                    }
                };
                let visitor = match visitor {
                    Some(visitor) => visitor,
                    None => self.web_visitor(scope, &user).await?,
                };
                let outgoing = outgoing(
                    scope,
                    &user,
                    &nudge,
                    &program,
                    &coach,
                    goal.as_ref(),
                    written,
                    visitor,
                    now,
                    model,
                );
                self.send_nudge(scope, outgoing).await?;
                Ok(Outcome::Done)
            }
        }
    }

    async fn store_content(
        &self,
        scope: &TenantScope,
        nudge_id: &str,
        written: &Written,
    ) -> Result<(), CoachingError> {
        let (scope, id, text) = (scope.clone(), nudge_id.to_string(), written.text.clone());
        self.db()
            .call(move |c| {
                c.update_nudge(
                    &scope,
                    &id,
                    &NudgeUpdate {
                        content: Some(&text),
                        ..NudgeUpdate::default()
                    },
                )
            })
            .await?;
        Ok(())
    }

    pub(super) async fn set_status(
        &self,
        scope: &TenantScope,
        nudge_id: &str,
        status: &'static str,
        reason: Option<&'static str>,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> Result<(), CoachingError> {
        let (scope, id) = (scope.clone(), nudge_id.to_string());
        self.db()
            .call(move |c| {
                c.update_nudge(
                    &scope,
                    &id,
                    &NudgeUpdate {
                        status: Some(status),
                        reason,
                        scheduled_for,
                        ..NudgeUpdate::default()
                    },
                )
            })
            .await?;
        Ok(())
    }
}

/// Works on planned nudges (kind [`kinds::NUDGE`]).
pub struct NudgeJob(pub Coaching);

impl Handler for NudgeJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let scope = job_scope(job)?;
            self.0
                .work_on_nudge(&scope, &job.subject_id, now)
                .await
                .map_err(|error| match error {
                    CoachingError::Db(error) => JobError::Retry(error.to_string()),
                    other => JobError::Fatal(other.to_string()),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(consent: bool) -> EndUser {
        EndUser {
            id: "u".into(),
            name: "Ana".into(),
            email: None,
            time_zone: "Europe/Madrid".into(),
            locale: "en".into(),
            tags: vec![],
            last_active_at: None,
            consent,
            consent_at: None,
            consent_channel: None,
            opted_out_at: None,
            test_clock_id: None,
            created_at: DateTime::UNIX_EPOCH,
            awaiting_goal_id: None,
            awaiting_retried: false,
        }
    }

    fn coach() -> Coach {
        Coach {
            slug: "c".into(),
            name: "C".into(),
            persona: String::new(),
            greeting: String::new(),
            confidence_threshold: 0.35,
            fallback_message: String::new(),
            answer_length: crate::chat::coach::AnswerLength::Short,
            temperature: 0.0,
            redact_pii: false,
            avatar_url: String::new(),
            brand_color: String::new(),
            widget_position: crate::chat::coach::WidgetPosition::Right,
            opening_message: String::new(),
            strictness: crate::chat::faithfulness::Strictness::Strict,
            quiet_hours: "21:00-08:00".into(),
            nudges_per_day: 1,
            nudges_per_week: 3,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn guardrails_in_their_order() {
        let (consenting, coach) = (user(true), coach());
        let base = |user, kind, now, today| Situation {
            user,
            coach: &coach,
            kind,
            now,
            taken_over: false,
            rule_nudges_today: today,
            rule_nudges_week: today,
            enrollment_inactive: None,
            chosen: false,
            no_longer_due: None,
            window_closed: false,
        };
        // 10:00 in Madrid (09:00 UTC in winter): sent.
        let day = at("2026-01-15T09:00:00Z");
        assert_eq!(
            guardrails(&base(&consenting, NudgeKind::Rule, day, 0)),
            Verdict::Send
        );
        // The cap of one a day suppresses a second rule nudge, not a program step.
        assert_eq!(
            guardrails(&base(&consenting, NudgeKind::Rule, day, 1)),
            Verdict::Suppress("daily_cap")
        );
        assert_eq!(
            guardrails(&base(&consenting, NudgeKind::Step, day, 1)),
            Verdict::Send
        );
        // 23:00 in Madrid: deferred to 08:00 local (07:00 UTC).
        let night = at("2026-01-15T22:00:00Z");
        assert_eq!(
            guardrails(&base(&consenting, NudgeKind::Step, night, 0)),
            Verdict::Defer(at("2026-01-16T07:00:00Z"), "quiet_hours")
        );
        // No consent: rule nudges only.
        let no_consent = user(false);
        assert_eq!(
            guardrails(&base(&no_consent, NudgeKind::Rule, day, 0)),
            Verdict::Suppress("no_consent")
        );
        assert_eq!(
            guardrails(&base(&no_consent, NudgeKind::CheckIn, day, 0)),
            Verdict::Send
        );
        // Opted out: nothing at all.
        let mut stopped = user(true);
        stopped.opted_out_at = Some(day);
        assert_eq!(
            guardrails(&base(&stopped, NudgeKind::Step, day, 0)),
            Verdict::Suppress("opted_out")
        );
        // Writing just now: wait.
        let mut chatting = user(true);
        chatting.last_active_at = Some(day - Duration::minutes(2));
        assert!(matches!(
            guardrails(&base(&chatting, NudgeKind::Step, day, 0)),
            Verdict::Defer(_, "in_conversation")
        ));
    }
}
