//! Programs: versioned definitions of steps over days, publishing, enrolment (which creates the
//! program's goals) and the chain of steps, each at its local time on its day.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::model::{
    EndUser, Enrollment, Goal, NewNudge, NudgeKind, Program, ProgramDefinition, StepKind,
};
use super::nudges::{needs_writing, plan_in};
use super::schedule::{self, LocalTime};
use super::{Coaching, CoachingError};
use crate::auth::{TenantScope, new_id};
use crate::chat::coach::Coach;
use crate::db::coaching::{GoalStore, NudgeStore, ProgramRow, ProgramStore};

/// Most steps and goals in one program.
const MAX_STEPS: usize = 365;
const MAX_GOALS: usize = 20;

/// Checks that a program holds together; the message names the field.
pub fn validate(definition: &ProgramDefinition) -> Result<(), CoachingError> {
    let invalid = |message: String| Err(CoachingError::InvalidProgram(message));
    if definition.name.trim().is_empty() || definition.name.chars().count() > 200 {
        return invalid("name needs 1 to 200 characters".into());
    }
    if definition.steps.is_empty() || definition.steps.len() > MAX_STEPS {
        return invalid(format!("steps: a program has 1 to {MAX_STEPS} steps"));
    }
    if definition.goals.len() > MAX_GOALS {
        return invalid(format!("goals: at most {MAX_GOALS}"));
    }
    let mut goal_keys = HashSet::new();
    for (i, goal) in definition.goals.iter().enumerate() {
        if goal.key.trim().is_empty() || !goal_keys.insert(goal.key.as_str()) {
            return invalid(format!(
                "goals[{i}].key: empty or used twice ({:?})",
                goal.key
            ));
        }
        super::goals::validate_goal(
            &goal.title,
            &goal.metric,
            goal.target,
            goal.baseline,
            goal.check_in.as_ref(),
        )
        .map_err(|e| match e {
            CoachingError::Invalid(m) => CoachingError::InvalidProgram(format!("goals[{i}].{m}")),
            CoachingError::InvalidSchedule(m) => {
                CoachingError::InvalidSchedule(format!("goals[{i}].{m}"))
            }
            other => other,
        })?;
    }
    let mut keys = HashSet::new();
    for (i, step) in definition.steps.iter().enumerate() {
        if step.key.trim().is_empty() || step.key.len() > 100 {
            return invalid(format!("steps[{i}].key needs 1 to 100 characters"));
        }
        if !keys.insert(step.key.as_str()) {
            return invalid(format!("steps[{i}].key: {:?} is used twice", step.key));
        }
        match step.day {
            None => return invalid(format!("steps[{i}].day is missing ({:?})", step.key)),
            Some(day) if day > 3650 => {
                return invalid(format!("steps[{i}].day must be 0 to 3650"));
            }
            Some(_) => {}
        }
        LocalTime::parse(&format!("steps[{i}].at"), &step.at)?;
        if step.text.chars().count() > 4000 {
            return invalid(format!("steps[{i}].text needs at most 4000 characters"));
        }
        if step.text.trim().is_empty() && step.kind != StepKind::CheckIn {
            return invalid(format!("steps[{i}].text is empty"));
        }
        match (&step.goal_key, step.kind) {
            (Some(key), _) if !goal_keys.contains(key.as_str()) => {
                return invalid(format!("steps[{i}].goal_key: no goal {key:?}"));
            }
            (None, StepKind::CheckIn) if definition.goals.len() != 1 => {
                return invalid(format!(
                    "steps[{i}].goal_key: a check-in step says which goal it asks for"
                ));
            }
            _ => {}
        }
        if step.kind == StepKind::Resource && step.document_id.is_none() {
            return invalid(format!(
                "steps[{i}].document_id: a resource step names a document"
            ));
        }
    }
    for (i, step) in definition.steps.iter().enumerate() {
        for (j, choice) in step.choices.iter().enumerate() {
            if choice.label.trim().is_empty() || choice.label.chars().count() > 100 {
                return invalid(format!(
                    "steps[{i}].choices[{j}].label needs 1 to 100 characters"
                ));
            }
            if !keys.contains(choice.next.as_str()) {
                return invalid(format!(
                    "steps[{i}].choices[{j}].next: no step {:?}",
                    choice.next
                ));
            }
        }
    }
    Ok(())
}

/// What the routes answer about a program.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProgramSaved {
    pub id: String,
    pub version: i64,
    pub status: String,
}

/// How an enrolment changes.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnrollmentChange {
    Paused,
    Active,
    Unenrolled,
}

fn program_of(row: ProgramRow, definition: ProgramDefinition) -> Program {
    Program {
        status: if row.published_version == Some(row.latest_version) {
            "published".into()
        } else {
            "draft".into()
        },
        id: row.id,
        version: row.latest_version,
        published_version: row.published_version,
        definition,
        created_at: row.created_at,
    }
}

impl Coaching {
    pub async fn create_program(
        &self,
        scope: &TenantScope,
        definition: ProgramDefinition,
    ) -> Result<ProgramSaved, CoachingError> {
        validate(&definition)?;
        let (scope, id) = (scope.clone(), new_id());
        let saved = id.clone();
        self.db()
            .call(move |c| c.create_program(&scope, &id, &definition))
            .await?;
        Ok(ProgramSaved {
            id: saved,
            version: 1,
            status: "draft".into(),
        })
    }

    /// Saves a new version; people enrolled stay on theirs.
    pub async fn update_program(
        &self,
        scope: &TenantScope,
        id: &str,
        definition: ProgramDefinition,
    ) -> Result<ProgramSaved, CoachingError> {
        validate(&definition)?;
        let (scope, id) = (scope.clone(), id.to_string());
        let saved = id.clone();
        let version = self
            .db()
            .call(move |c| c.add_program_version(&scope, &id, &definition))
            .await?
            .ok_or(CoachingError::NotFound("no such program"))?;
        Ok(ProgramSaved {
            id: saved,
            version,
            status: "draft".into(),
        })
    }

    pub async fn publish_program(
        &self,
        scope: &TenantScope,
        id: &str,
    ) -> Result<ProgramSaved, CoachingError> {
        let (scope, id) = (scope.clone(), id.to_string());
        let saved = id.clone();
        let version = self
            .db()
            .call(move |c| c.publish_program(&scope, &id))
            .await?
            .ok_or(CoachingError::NotFound("no such program"))?;
        Ok(ProgramSaved {
            id: saved,
            version,
            status: "published".into(),
        })
    }

    /// The program's newest version.
    pub async fn program(&self, scope: &TenantScope, id: &str) -> Result<Program, CoachingError> {
        let (scope, id) = (scope.clone(), id.to_string());
        self.db()
            .call(move |c| {
                let row = c
                    .program_row(&scope, &id)?
                    .ok_or(CoachingError::NotFound("no such program"))?;
                let definition = c
                    .program_version(&scope, &id, row.latest_version)?
                    .ok_or(CoachingError::NotFound("no such program"))?;
                Ok(program_of(row, definition))
            })
            .await
    }

    pub async fn programs(&self, scope: &TenantScope) -> Result<Vec<Program>, CoachingError> {
        let scope = scope.clone();
        self.db()
            .call(move |c| {
                let mut programs = Vec::new();
                for row in c.programs(&scope)? {
                    if let Some(definition) =
                        c.program_version(&scope, &row.id, row.latest_version)?
                    {
                        programs.push(program_of(row, definition));
                    }
                }
                Ok::<_, CoachingError>(programs)
            })
            .await
    }

    /// The enrolment and the program version it follows.
    pub(super) async fn enrollment_and_program(
        &self,
        scope: &TenantScope,
        enrollment_id: &str,
    ) -> Result<Option<(Enrollment, ProgramDefinition)>, CoachingError> {
        let (scope, id) = (scope.clone(), enrollment_id.to_string());
        Ok(self
            .db()
            .call(move |c| {
                let Some(enrollment) = c.enrollment(&scope, &id)? else {
                    return Ok::<_, crate::db::DbError>(None);
                };
                let program =
                    c.program_version(&scope, &enrollment.program_id, enrollment.version)?;
                Ok(program.map(|p| (enrollment, p)))
            })
            .await?)
    }

    /// Enrols an end user in the published version: creates the program's goals and plans
    /// the first step. Enrolment is consent to the program's own steps.
    pub async fn enroll(
        &self,
        scope: &TenantScope,
        program_id: &str,
        end_user_id: &str,
    ) -> Result<Enrollment, CoachingError> {
        let user = self.end_user(scope, end_user_id).await?;
        if user.opted_out_at.is_some() {
            return Err(CoachingError::OptedOut(
                "this person opted out of messages from the coach; only they can opt in again (consent in the chat)"
                    .into(),
            ));
        }
        let now = self.now_for(scope, &user).await?;
        let (scope_moved, program, user_moved) =
            (scope.clone(), program_id.to_string(), user.clone());
        let (enrollment, definition, goals) = self
            .db()
            .call(move |c| {
                let row = c
                    .program_row(&scope_moved, &program)?
                    .ok_or(CoachingError::NotFound("no such program"))?;
                let version = row.published_version.ok_or_else(|| {
                    CoachingError::Conflict("publish the program before enrolling anyone".into())
                })?;
                let definition = c
                    .program_version(&scope_moved, &program, version)?
                    .ok_or(CoachingError::NotFound("no such program"))?;
                let enrollment = Enrollment {
                    id: new_id(),
                    program_id: program.clone(),
                    version,
                    end_user_id: user_moved.id.clone(),
                    status: "active".into(),
                    enrolled_at: now,
                    completed_at: None,
                    steps_done: Vec::new(),
                };
                if !c.create_enrollment(&scope_moved, &enrollment)? {
                    return Err(CoachingError::AlreadyEnrolled(
                        "this person is already enrolled in the program".into(),
                    ));
                }
                let mut goals = Vec::new();
                for g in &definition.goals {
                    let goal = Goal {
                        id: new_id(),
                        end_user_id: user_moved.id.clone(),
                        enrollment_id: Some(enrollment.id.clone()),
                        key: Some(g.key.clone()),
                        title: g.title.clone(),
                        metric: g.metric.clone(),
                        unit: g.unit.clone(),
                        baseline: g.baseline,
                        target: g.target,
                        direction: g.direction,
                        due_date: None,
                        every_days: g
                            .check_in
                            .as_ref()
                            .and_then(|s| schedule::parse_every("every", &s.every).ok()),
                        check_in: g.check_in.clone(),
                        status: "open".into(),
                        reached_at: None,
                        created_at: now,
                    };
                    c.create_goal(&scope_moved, &goal)?;
                    goals.push(goal);
                }
                Ok((enrollment, definition, goals))
            })
            .await?;
        for goal in &goals {
            self.start_check_ins(scope, &user, goal).await?;
        }
        self.plan_next_step(scope, &user, &enrollment, &definition, now)
            .await?;
        Ok(enrollment)
    }

    /// When a step fires: on its day after enrolment, at its local time (now if that passed).
    pub(super) fn step_time(
        user: &EndUser,
        enrollment: &Enrollment,
        day: u32,
        at: &str,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, CoachingError> {
        let tz = user.tz();
        let date = schedule::local_date(tz, enrollment.enrolled_at) + Duration::days(day.into());
        let at = LocalTime::parse("at", at)?;
        Ok(schedule::at_local(tz, date, at).max(now))
    }

    /// Plans the next step in order that is neither done nor only reached by a choice; marks
    /// the enrolment completed when none is left.
    async fn plan_next_step(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        enrollment: &Enrollment,
        definition: &ProgramDefinition,
        now: DateTime<Utc>,
    ) -> Result<(), CoachingError> {
        self.step_done_or_next(scope, user, enrollment, definition, None, now)
            .await
    }

    /// Plans one step (once: the dedupe key is enrolment + step). `now_please`: a choice led
    /// here, so it fires now rather than on its day.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn plan_step(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        enrollment: &Enrollment,
        key: &str,
        definition: &ProgramDefinition,
        now: DateTime<Utc>,
        now_please: bool,
    ) -> Result<(), CoachingError> {
        let kind = definition
            .step(key)
            .ok_or(CoachingError::NotFound("no such step"))?
            .kind;
        let ahead = self.writes_ahead(NudgeKind::Step, Some(kind));
        let (scope, user, enrollment, definition, key) = (
            scope.clone(),
            user.clone(),
            enrollment.clone(),
            definition.clone(),
            key.to_string(),
        );
        let planned = self
            .db()
            .call(move |c| {
                let nudge = step_nudge(
                    c,
                    &scope,
                    &user,
                    &enrollment,
                    &definition,
                    &key,
                    now,
                    now_please,
                )?;
                let coach = crate::chat::coach::get(c, &scope)?;
                Ok::<_, CoachingError>(plan_in(c, &scope, &user, &coach, nudge, ahead, now)?)
            })
            .await?;
        if planned {
            self.jobs().wake();
        }
        Ok(())
    }

    /// A step was sent: it is done, and the next one is planned.
    pub(super) async fn step_done(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        enrollment: &Enrollment,
        definition: &ProgramDefinition,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CoachingError> {
        self.step_done_or_next(scope, user, enrollment, definition, Some(key), now)
            .await
    }

    /// In one database call: records `done` (when given) and plans the next step, or completes
    /// the enrolment when none is left.
    async fn step_done_or_next(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        enrollment: &Enrollment,
        definition: &ProgramDefinition,
        done: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), CoachingError> {
        let model = self.inner.inference.chat().is_ok();
        let advance = step_advance(scope, user, enrollment, definition, done, now, model);
        let planned = self
            .db()
            .call(move |c| {
                let coach = crate::chat::coach::get(c, &advance.scope)?;
                advance.apply(c, &coach)
            })
            .await?;
        if planned {
            self.jobs().wake();
        }
        Ok(())
    }

    /// Pauses, resumes or ends an enrolment. Resuming plans again what the pause held back.
    pub async fn change_enrollment(
        &self,
        scope: &TenantScope,
        enrollment_id: &str,
        change: EnrollmentChange,
    ) -> Result<Enrollment, CoachingError> {
        let (mut enrollment, definition) = self
            .enrollment_and_program(scope, enrollment_id)
            .await?
            .ok_or(CoachingError::NotFound("no such enrollment"))?;
        if matches!(enrollment.status.as_str(), "completed" | "unenrolled") {
            return Err(CoachingError::Conflict(format!(
                "this enrollment is {} already",
                enrollment.status
            )));
        }
        let user = self.end_user(scope, &enrollment.end_user_id).await?;
        let now = self.now_for(scope, &user).await?;
        enrollment.status = match change {
            EnrollmentChange::Paused => "paused",
            EnrollmentChange::Active => "active",
            EnrollmentChange::Unenrolled => "unenrolled",
        }
        .into();
        let (scope_moved, stored) = (scope.clone(), enrollment.clone());
        let held = self
            .db()
            .call(move |c| {
                c.update_enrollment(&scope_moved, &stored)?;
                let nudges = c.nudges(&scope_moved, Some(&stored.end_user_id), None, 10_000)?;
                Ok::<_, crate::db::DbError>(
                    nudges
                        .into_iter()
                        .filter(|n| {
                            n.enrollment_id.as_deref() == Some(&stored.id)
                                && matches!(n.planned_status.as_str(), "scheduled" | "deferred")
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .await?;
        match change {
            EnrollmentChange::Active => {
                if held.is_empty() {
                    self.plan_next_step(scope, &user, &enrollment, &definition, now)
                        .await?;
                }
                for nudge in held {
                    self.queue_nudge(scope, &user, &nudge.id, nudge.scheduled_for.max(now))
                        .await?;
                }
            }
            EnrollmentChange::Unenrolled => {
                for nudge in held {
                    self.set_status(scope, &nudge.id, "suppressed", Some("unenrolled"), None)
                        .await?;
                }
            }
            EnrollmentChange::Paused => {}
        }
        Ok(enrollment)
    }

    /// The end user picked a quick reply of a step that was sent: its `next` step fires now.
    pub(super) async fn choose(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CoachingError> {
        let (scope_moved, user_id) = (scope.clone(), user.id.clone());
        let sent = self
            .db()
            .call(move |c| c.nudges(&scope_moved, Some(&user_id), None, 20))
            .await?;
        let answer = text.trim().to_lowercase();
        // The newest step sent that is still waiting for its reply.
        let Some(last) = sent
            .into_iter()
            .find(|n| n.kind == NudgeKind::Step && n.planned_status == "sent")
        else {
            return Ok(false);
        };
        let (Some(enrollment_id), Some(key)) = (&last.enrollment_id, &last.step_key) else {
            return Ok(false);
        };
        let Some((enrollment, definition)) =
            self.enrollment_and_program(scope, enrollment_id).await?
        else {
            return Ok(false);
        };
        let Some(step) = definition.step(key) else {
            return Ok(false);
        };
        let Some(choice) = step
            .choices
            .iter()
            .find(|c| c.label.trim().to_lowercase() == answer)
        else {
            return Ok(false);
        };
        if enrollment.status != "active" || enrollment.steps_done.contains(&choice.next) {
            return Ok(false);
        }
        let next = choice.next.clone();
        self.plan_step(scope, user, &enrollment, &next, &definition, now, true)
            .await?;
        Ok(true)
    }
}

/// What recording `done` and planning the next step will write, ready to apply inside a
/// database call: on its own, or in the transaction that records the step sent. `model`: a
/// chat model is loaded (the next step may be written ahead).
pub(super) fn step_advance(
    scope: &TenantScope,
    user: &EndUser,
    enrollment: &Enrollment,
    definition: &ProgramDefinition,
    done: Option<&str>,
    now: DateTime<Utc>,
    model: bool,
) -> StepAdvance {
    let mut enrollment = enrollment.clone();
    if let Some(key) = done
        && !enrollment.steps_done.iter().any(|k| k == key)
    {
        enrollment.steps_done.push(key.to_string());
    }
    let next = definition
        .ordered_steps()
        .into_iter()
        .find(|s| !definition.is_branch(&s.key) && !enrollment.steps_done.contains(&s.key))
        .map(|s| s.key.clone());
    let ahead = model
        && next.as_ref().is_some_and(|key| {
            needs_writing(NudgeKind::Step, definition.step(key).map(|s| s.kind))
        });
    // A step whose choices are unanswered keeps the enrolment going, even when no other
    // step is left: the branch the person picks is still to come.
    let awaiting_choice = done
        .and_then(|key| definition.step(key))
        .is_some_and(|step| {
            !step.choices.is_empty()
                && !step
                    .choices
                    .iter()
                    .any(|c| enrollment.steps_done.contains(&c.next))
        });
    StepAdvance {
        scope: scope.clone(),
        user: user.clone(),
        enrollment,
        definition: definition.clone(),
        next,
        ahead,
        awaiting_choice,
        now,
    }
}

/// A step recorded done and the next one planned (or the enrolment completed), prepared by
/// [`step_advance`].
pub(super) struct StepAdvance {
    scope: TenantScope,
    user: EndUser,
    enrollment: Enrollment,
    definition: ProgramDefinition,
    next: Option<String>,
    ahead: bool,
    awaiting_choice: bool,
    now: DateTime<Utc>,
}

impl StepAdvance {
    /// Writes it; true when a nudge was planned (the job runner needs a wake).
    pub(super) fn apply<S: ProgramStore + GoalStore + NudgeStore>(
        self,
        c: &S,
        coach: &Coach,
    ) -> Result<bool, CoachingError> {
        let StepAdvance {
            scope,
            user,
            mut enrollment,
            definition,
            next,
            ahead,
            awaiting_choice,
            now,
        } = self;
        if enrollment.status != "active" || (next.is_none() && awaiting_choice) {
            c.update_enrollment(&scope, &enrollment)?;
            return Ok(false);
        }
        let Some(key) = next else {
            enrollment.status = "completed".into();
            enrollment.completed_at = Some(now);
            c.update_enrollment(&scope, &enrollment)?;
            return Ok(false);
        };
        c.update_enrollment(&scope, &enrollment)?;
        let nudge = step_nudge(c, &scope, &user, &enrollment, &definition, &key, now, false)?;
        Ok(plan_in(c, &scope, &user, coach, nudge, ahead, now)?)
    }
}

/// A step's nudge for an enrolment: its time (on its day, or now when chosen) and, for
/// check-ins and milestones, its goal.
#[allow(clippy::too_many_arguments)]
fn step_nudge<S: GoalStore>(
    c: &S,
    scope: &TenantScope,
    user: &EndUser,
    enrollment: &Enrollment,
    definition: &ProgramDefinition,
    key: &str,
    now: DateTime<Utc>,
    now_please: bool,
) -> Result<NewNudge, CoachingError> {
    let step = definition
        .step(key)
        .ok_or(CoachingError::NotFound("no such step"))?;
    let when = if now_please {
        now
    } else {
        Coaching::step_time(user, enrollment, step.day.unwrap_or(0), &step.at, now)?
    };
    // Check-ins ask for a goal's value and milestones show it; other steps name no goal.
    let goal_id = match step.kind {
        StepKind::CheckIn | StepKind::Milestone => {
            let key = match &step.goal_key {
                Some(key) => Some(key.clone()),
                None if definition.goals.len() == 1 => Some(definition.goals[0].key.clone()),
                None => None,
            };
            match key {
                Some(key) => c
                    .goals_of(scope, &enrollment.end_user_id)?
                    .into_iter()
                    .find(|g| {
                        g.enrollment_id.as_deref() == Some(&enrollment.id)
                            && g.key.as_deref() == Some(&key)
                    })
                    .map(|g| g.id),
                None => None,
            }
        }
        StepKind::Message | StepKind::Resource => None,
    };
    Ok(NewNudge {
        end_user_id: user.id.clone(),
        kind: NudgeKind::Step,
        rule_id: None,
        enrollment_id: Some(enrollment.id.clone()),
        step_key: Some(key.to_string()),
        goal_id,
        dedupe_key: format!("step:{}:{key}", enrollment.id),
        scheduled_for: when,
        status: "scheduled",
        // The person asked for it just now (a quick reply, or enrolling when the step's time
        // has passed): it answers them, it does not interrupt.
        reason: if now_please {
            Some(super::nudges::CHOSEN.to_string())
        } else if when <= now && enrollment.enrolled_at == now {
            Some(super::nudges::ENROLLED.to_string())
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn program(steps: serde_json::Value) -> ProgramDefinition {
        serde_json::from_value(json!({
            "name": "Sleep better",
            "goals": [{"key": "sleep", "title": "Sleep 8 h", "metric": "sleep", "unit": "hours",
                       "target": 8, "direction": "increase"}],
            "steps": steps,
        }))
        .unwrap()
    }

    #[test]
    fn programs_that_do_not_hold_together_name_the_field() {
        let ok = program(json!([
            {"key": "hello", "day": 0, "at": "09:00", "kind": "message", "text": "Welcome",
             "choices": [{"label": "Ready", "next": "tips"}]},
            {"key": "tips", "day": 0, "at": "09:00", "kind": "message", "text": "Tips"},
            {"key": "ask", "day": 1, "at": "09:00", "kind": "check_in", "text": ""},
        ]));
        validate(&ok).unwrap();
        assert!(ok.is_branch("tips") && !ok.is_branch("ask"));
        for (steps, field) in [
            (
                json!([{"key": "a", "at": "09:00", "kind": "message", "text": "x"}]),
                "steps[0].day",
            ),
            (
                json!([{"key": "a", "day": 0, "at": "09:00", "kind": "message", "text": "x"},
                    {"key": "a", "day": 1, "at": "09:00", "kind": "message", "text": "y"}]),
                "steps[1].key",
            ),
            (
                json!([{"key": "a", "day": 0, "at": "09:00", "kind": "message", "text": "x",
                     "choices": [{"label": "Go", "next": "nowhere"}]}]),
                "steps[0].choices[0].next",
            ),
        ] {
            let error = validate(&program(steps)).unwrap_err();
            assert!(matches!(error, CoachingError::InvalidProgram(_)), "{error}");
            assert!(error.to_string().contains(field), "{error}");
        }
        let bad_time =
            program(json!([{"key": "a", "day": 0, "at": "25:00", "kind": "message", "text": "x"}]));
        assert!(matches!(
            validate(&bad_time).unwrap_err(),
            CoachingError::InvalidSchedule(_)
        ));
    }
}
