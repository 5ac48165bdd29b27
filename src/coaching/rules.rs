//! Nudge rules: what sets them off, who they are for, and the recurring sweep that plans a
//! nudge for each person and occurrence (the dedupe key makes a second sweep a no-op).

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::model::{Audience, EndUser, Goal, NewNudge, NudgeKind, NudgeRule, Trigger};
use super::schedule::{self, LocalTime, Recurrence};
use super::{Coaching, CoachingError, job_scope};
use crate::auth::{TenantScope, new_id};
use crate::db::coaching::{EndUserStore, GoalStore, NudgeStore, ProgramStore};
use crate::jobs::{BoxFuture, Handler, Job, JobError, Outcome};

/// How often a timeline's rules are evaluated.
pub const SWEEP_EVERY: Duration = Duration::minutes(15);
/// Nudges due this far ahead are planned (so they are written before they are due).
const HORIZON: Duration = Duration::minutes(20);
/// A scheduled check-in counts as missed this long after its time.
pub const MISSED_AFTER: Duration = Duration::hours(6);

/// A rule as the API takes it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub trigger: Trigger,
    #[serde(default)]
    pub audience: Audience,
    /// What the coach is to write, e.g. "Check in warmly and ask what got in the way".
    pub instruction: String,
}

fn yes() -> bool {
    true
}

fn validate(input: &RuleInput) -> Result<(), CoachingError> {
    if input.name.trim().is_empty() || input.name.chars().count() > 100 {
        return Err(CoachingError::Invalid(
            "name needs 1 to 100 characters".into(),
        ));
    }
    if input.instruction.trim().is_empty() || input.instruction.chars().count() > 2000 {
        return Err(CoachingError::Invalid(
            "instruction needs 1 to 2000 characters".into(),
        ));
    }
    match &input.trigger {
        Trigger::Inactivity { days } if !(1..=365).contains(days) => Err(CoachingError::Invalid(
            "trigger.days must be 1 to 365".into(),
        )),
        Trigger::Schedule { rrule, at } => {
            let at = LocalTime::parse("trigger.at", at)?;
            Recurrence::parse(rrule, at)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Coaching {
    pub async fn create_rule(
        &self,
        scope: &TenantScope,
        input: RuleInput,
    ) -> Result<NudgeRule, CoachingError> {
        validate(&input)?;
        self.check_audience(scope, &input.audience).await?;
        let rule = NudgeRule {
            id: new_id(),
            name: input.name.trim().to_string(),
            enabled: input.enabled,
            trigger: input.trigger,
            audience: input.audience,
            instruction: input.instruction.trim().to_string(),
            created_at: Utc::now(),
        };
        let (scope_moved, stored) = (scope.clone(), rule.clone());
        self.db()
            .call(move |c| c.create_rule(&scope_moved, &stored))
            .await?;
        self.ensure_rule_sweeps(scope).await?;
        Ok(rule)
    }

    /// Replaces a rule's settings (all fields, as on creation).
    pub async fn update_rule(
        &self,
        scope: &TenantScope,
        id: &str,
        input: RuleInput,
    ) -> Result<NudgeRule, CoachingError> {
        validate(&input)?;
        self.check_audience(scope, &input.audience).await?;
        let mut rule = self.rule(scope, id).await?;
        rule.name = input.name.trim().to_string();
        rule.enabled = input.enabled;
        rule.trigger = input.trigger;
        rule.audience = input.audience;
        rule.instruction = input.instruction.trim().to_string();
        let (scope_moved, stored) = (scope.clone(), rule.clone());
        self.db()
            .call(move |c| c.update_rule(&scope_moved, &stored))
            .await?;
        self.ensure_rule_sweeps(scope).await?;
        Ok(rule)
    }

    pub async fn rule(&self, scope: &TenantScope, id: &str) -> Result<NudgeRule, CoachingError> {
        let (scope, id) = (scope.clone(), id.to_string());
        self.db()
            .call(move |c| c.rule(&scope, &id))
            .await?
            .ok_or(CoachingError::NotFound("no such nudge rule"))
    }

    /// When a schedule fires next: the rule's next `count` occurrences for a person in
    /// `time_zone`, from now (what the rule picker shows before the rule is saved).
    pub fn occurrences(
        &self,
        rrule: &str,
        at: &str,
        time_zone: &str,
        count: usize,
    ) -> Result<Vec<DateTime<Utc>>, CoachingError> {
        let at = LocalTime::parse("at", at)?;
        let tz = schedule::parse_time_zone("time_zone", time_zone)?;
        let recurrence = Recurrence::parse(rrule, at)?;
        let now = Utc::now();
        let mut found = Vec::new();
        let mut after = now;
        while found.len() < count.clamp(1, 20) {
            let Some(next) = recurrence.next_after(tz, now, after) else {
                break;
            };
            found.push(next);
            after = next;
        }
        Ok(found)
    }

    pub async fn rules(&self, scope: &TenantScope) -> Result<Vec<NudgeRule>, CoachingError> {
        let scope = scope.clone();
        Ok(self.db().call(move |c| c.rules(&scope)).await?)
    }

    pub async fn delete_rule(&self, scope: &TenantScope, id: &str) -> Result<(), CoachingError> {
        let (scope, id) = (scope.clone(), id.to_string());
        if self.db().call(move |c| c.delete_rule(&scope, &id)).await? {
            Ok(())
        } else {
            Err(CoachingError::NotFound("no such nudge rule"))
        }
    }

    async fn check_audience(
        &self,
        scope: &TenantScope,
        audience: &Audience,
    ) -> Result<(), CoachingError> {
        if let Some(program) = &audience.program_id {
            let (scope, program) = (scope.clone(), program.clone());
            let found = self
                .db()
                .call(move |c| c.program_row(&scope, &program))
                .await?;
            if found.is_none() {
                return Err(CoachingError::Invalid(
                    "audience.program_id: no such program".into(),
                ));
            }
        }
        Ok(())
    }

    /// A goal was reached: `goal_reached` rules for the person fire now.
    pub(super) async fn on_goal_reached(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        goal: &Goal,
        now: DateTime<Utc>,
    ) -> Result<(), CoachingError> {
        let rules = self.rules(scope).await?;
        let programs = self.programs_of(scope, user).await?;
        for rule in rules
            .iter()
            .filter(|r| r.enabled && r.trigger == Trigger::GoalReached)
            .filter(|r| in_audience(&r.audience, user, &programs))
        {
            self.plan(
                scope,
                user,
                rule_nudge(
                    rule,
                    user,
                    Some(&goal.id),
                    format!("rule:{}:{}", rule.id, goal.id),
                    now,
                ),
                None,
                now,
            )
            .await?;
        }
        Ok(())
    }

    async fn programs_of(
        &self,
        scope: &TenantScope,
        user: &EndUser,
    ) -> Result<Vec<String>, CoachingError> {
        let (scope, id) = (scope.clone(), user.id.clone());
        Ok(self
            .db()
            .call(move |c| c.enrolled_programs(&scope, &id))
            .await?)
    }

    /// One sweep of a timeline: plans every nudge due within the horizon. Returns false when
    /// the tenant has no enabled rule (the sweep then stops until one is enabled).
    async fn sweep(
        &self,
        scope: &TenantScope,
        clock_id: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<bool, CoachingError> {
        let rules: Vec<NudgeRule> = self
            .rules(scope)
            .await?
            .into_iter()
            .filter(|r| r.enabled && r.trigger != Trigger::GoalReached)
            .collect();
        if rules.is_empty() {
            return Ok(false);
        }
        let scope_moved = scope.clone();
        let needs_programs = rules.iter().any(|r| r.audience.program_id.is_some());
        let needs_goals = rules
            .iter()
            .any(|r| matches!(r.trigger, Trigger::MissedCheckIn | Trigger::StreakAtRisk));
        // Read beside the writer: a sweep over everyone does not hold up deliveries.
        // When every rule is about inactivity, only people quiet long enough for one of them
        // to be due within the horizon are candidates: most people are not.
        let quiet_since = rules
            .iter()
            .map(|r| match r.trigger {
                Trigger::Inactivity { days } => Some(now + HORIZON - Duration::days(days.into())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|cutoffs| cutoffs.into_iter().max());
        let people = self
            .db()
            .read(move |c| {
                let mut people = Vec::new();
                for user in c.end_users_on(&scope_moved, clock_id.as_deref(), quiet_since)? {
                    let programs = if needs_programs {
                        c.enrolled_programs(&scope_moved, &user.id)?
                    } else {
                        Vec::new()
                    };
                    let mut goals = Vec::new();
                    if needs_goals {
                        for goal in c.goals_of(&scope_moved, &user.id)? {
                            if goal.status == "open" && goal.every_days.is_some() {
                                let check_ins = c.check_ins(&scope_moved, &goal.id)?;
                                goals.push((goal, check_ins));
                            }
                        }
                    }
                    people.push((user, programs, goals));
                }
                Ok::<_, crate::db::DbError>(people)
            })
            .await?;
        for (user, programs, goals) in &people {
            for rule in rules
                .iter()
                .filter(|r| in_audience(&r.audience, user, programs))
            {
                for (key, due, goal) in occurrences(rule, user, goals, now) {
                    self.plan(
                        scope,
                        user,
                        rule_nudge(rule, user, goal.as_deref(), key, due.max(now)),
                        None,
                        now,
                    )
                    .await?;
                }
            }
        }
        Ok(true)
    }
}

/// Why a rule nudge that is due should not go out after all: the rule is gone or off, or the
/// person already did what it is about.
pub(super) fn rule_no_longer_due<S: NudgeStore + GoalStore>(
    c: &S,
    scope: &TenantScope,
    rule_id: &str,
    user: &EndUser,
    nudge: &super::model::Nudge,
    now: DateTime<Utc>,
) -> Result<Option<&'static str>, crate::db::DbError> {
    let Some(rule) = c.rule(scope, rule_id)? else {
        return Ok(Some("rule_deleted"));
    };
    if !rule.enabled {
        return Ok(Some("rule_disabled"));
    }
    let check_ins = match &nudge.goal_id {
        Some(goal) => c.check_ins(scope, goal)?,
        None => Vec::new(),
    };
    let today = schedule::local_date(user.tz(), now);
    Ok(match rule.trigger {
        Trigger::Inactivity { days } => user
            .last_active_at
            .is_some_and(|at| now - at < Duration::days(days.into()))
            .then_some("active_again"),
        Trigger::StreakAtRisk => check_ins
            .iter()
            .any(|c| c.local_date == today)
            .then_some("checked_in"),
        Trigger::MissedCheckIn => check_ins
            .iter()
            .any(|c| c.at >= nudge.scheduled_for - MISSED_AFTER)
            .then_some("checked_in"),
        Trigger::GoalReached | Trigger::Schedule { .. } => None,
    })
}

fn in_audience(audience: &Audience, user: &EndUser, programs: &[String]) -> bool {
    audience.tag.as_ref().is_none_or(|t| user.tags.contains(t))
        && audience
            .program_id
            .as_ref()
            .is_none_or(|p| programs.contains(p))
}

fn rule_nudge(
    rule: &NudgeRule,
    user: &EndUser,
    goal: Option<&str>,
    dedupe_key: String,
    due: DateTime<Utc>,
) -> NewNudge {
    NewNudge {
        end_user_id: user.id.clone(),
        kind: NudgeKind::Rule,
        rule_id: Some(rule.id.clone()),
        enrollment_id: None,
        step_key: None,
        goal_id: goal.map(str::to_string),
        dedupe_key,
        scheduled_for: due,
        status: "scheduled",
        reason: None,
    }
}

/// The occurrences of a rule for one person due by `now + HORIZON`: (dedupe key, due, goal).
fn occurrences(
    rule: &NudgeRule,
    user: &EndUser,
    goals: &[(Goal, Vec<super::model::CheckIn>)],
    now: DateTime<Utc>,
) -> Vec<(String, DateTime<Utc>, Option<String>)> {
    let tz = user.tz();
    let horizon = now + HORIZON;
    let mut found = Vec::new();
    // A rule counts from its creation; test end users live on their clock, so for them it
    // counts from their own creation on it.
    let rule_start = if user.is_test() {
        user.created_at
    } else {
        rule.created_at
    };
    match &rule.trigger {
        Trigger::Inactivity { days } => {
            // Counted from the last message, or from creation for someone who never wrote; a
            // new rule counts from its own creation, so it does not nudge everyone who has
            // been quiet for long at once.
            let since = user
                .last_active_at
                .unwrap_or(user.created_at)
                .max(rule_start);
            let due = since + Duration::days((*days).into());
            if due <= horizon {
                found.push((
                    format!("rule:{}:{}:{}", rule.id, user.id, crate::db::instant(since)),
                    due,
                    None,
                ));
            }
        }
        Trigger::Schedule { rrule, at } => {
            let Ok(at) = LocalTime::parse("at", at) else {
                return found;
            };
            let Ok(recurrence) = Recurrence::parse(rrule, at) else {
                return found;
            };
            let anchor = rule_start.max(user.created_at);
            if let Some(due) =
                recurrence.next_after(tz, anchor, now - SWEEP_EVERY - Duration::minutes(1))
                && due <= horizon
            {
                found.push((
                    format!("rule:{}:{}:{}", rule.id, user.id, crate::db::instant(due)),
                    due,
                    None,
                ));
            }
        }
        Trigger::MissedCheckIn => {
            for (goal, check_ins) in goals {
                let (Some(every), Some(schedule)) = (goal.every_days, &goal.check_in) else {
                    continue;
                };
                let Ok(at) = LocalTime::parse("at", &schedule.at) else {
                    continue;
                };
                let Some(last) = last_occurrence(tz, goal, every, at, now - MISSED_AFTER) else {
                    continue;
                };
                // A value given in the half period before the time counts as on time.
                let window = Duration::hours(12 * i64::from(every));
                let answered = check_ins.iter().any(|c| c.at >= last - window);
                if !answered && last >= rule_start.max(goal.created_at) {
                    found.push((
                        format!(
                            "rule:{}:{}:{}",
                            rule.id,
                            goal.id,
                            schedule::local_date(tz, last)
                        ),
                        last + MISSED_AFTER,
                        Some(goal.id.clone()),
                    ));
                }
            }
        }
        Trigger::StreakAtRisk => {
            for (goal, check_ins) in goals {
                let (Some(1), Some(schedule)) = (goal.every_days, &goal.check_in) else {
                    continue;
                };
                let Ok(at) = LocalTime::parse("at", &schedule.at) else {
                    continue;
                };
                let today = schedule::local_date(tz, now);
                let due = schedule::at_local(tz, today, at);
                if due > horizon || due < goal.created_at {
                    continue;
                }
                if check_ins.iter().any(|c| c.local_date == today) {
                    continue;
                }
                let dates: Vec<_> = check_ins.iter().map(|c| c.local_date).collect();
                let (streak, _) = super::goals::streaks(
                    &dates,
                    schedule::local_date(tz, goal.created_at),
                    1,
                    today,
                );
                if streak >= 2 {
                    found.push((
                        format!("rule:{}:{}:{today}", rule.id, goal.id),
                        due,
                        Some(goal.id.clone()),
                    ));
                }
            }
        }
        Trigger::GoalReached => {}
    }
    found
}

/// The goal's latest check-in time at or before `by` (none before the goal existed).
fn last_occurrence(
    tz: chrono_tz::Tz,
    goal: &Goal,
    every: u32,
    at: LocalTime,
    by: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let start = schedule::local_date(tz, goal.created_at);
    let mut occurrence = schedule::next_repeat(
        tz,
        start,
        every,
        at,
        (by - Duration::days(i64::from(every) + 1)).max(goal.created_at),
    );
    if occurrence > by {
        return None;
    }
    loop {
        let next = schedule::next_repeat(tz, start, every, at, occurrence + Duration::seconds(1));
        if next > by {
            return Some(occurrence);
        }
        occurrence = next;
    }
}

/// Evaluates a tenant's rules on one timeline every [`SWEEP_EVERY`].
pub struct RuleSweep(pub Coaching);

impl Handler for RuleSweep {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let scope = job_scope(job)?;
            let active = self
                .0
                .sweep(&scope, job.clock_id.clone(), now)
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            if !active {
                return Ok(Outcome::Done);
            }
            Ok(Outcome::Again {
                at: now + SWEEP_EVERY,
                payload: job.payload.clone(),
            })
        })
    }
}
