//! Goals, check-ins, progress and streaks, and each goal's own check-in prompts.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::model::{CheckIn, CheckInSchedule, Direction, EndUser, Goal, NewNudge, NudgeKind};
use super::nudges::plan_in;
use super::schedule::{self, LocalTime};
use super::{Coaching, CoachingError, job_scope, kinds};
use crate::auth::{TenantScope, new_id};
use crate::db::coaching::{EndUserStore, GoalStore, ProgramStore};
use crate::jobs::{BoxFuture, Handler, Job, JobError, NewJob, Outcome};

/// A goal as the API takes it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GoalInput {
    pub title: String,
    pub metric: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub baseline: f64,
    pub target: f64,
    pub direction: Direction,
    /// `YYYY-MM-DD`.
    pub due_date: Option<String>,
    pub check_in: Option<CheckInSchedule>,
}

/// A goal with its check-ins and what they add up to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GoalView {
    #[serde(flatten)]
    pub goal: Goal,
    pub check_ins: Vec<CheckIn>,
    pub latest_value: Option<f64>,
    /// 0 to 1, baseline to target.
    pub progress: f64,
    /// Check-in periods in a row up to now (the current period may still be open).
    pub current_streak: u32,
    pub longest_streak: u32,
}

/// A check-in as the API takes it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInInput {
    pub value: serde_json::Value,
    pub note: Option<String>,
}

/// Checks the text fields and the schedule of a goal; returns the days between check-ins.
pub fn validate_goal(
    title: &str,
    metric: &str,
    target: f64,
    baseline: f64,
    check_in: Option<&CheckInSchedule>,
) -> Result<Option<u32>, CoachingError> {
    if title.trim().is_empty() || title.chars().count() > 200 {
        return Err(CoachingError::Invalid(
            "title needs 1 to 200 characters".into(),
        ));
    }
    if metric.trim().is_empty() || metric.chars().count() > 100 {
        return Err(CoachingError::Invalid(
            "metric needs 1 to 100 characters".into(),
        ));
    }
    if !target.is_finite() || !baseline.is_finite() {
        return Err(CoachingError::Invalid(
            "target and baseline must be numbers".into(),
        ));
    }
    match check_in {
        None => Ok(None),
        Some(schedule) => {
            let every = schedule::parse_every("check_in.every", &schedule.every)?;
            LocalTime::parse("check_in.at", &schedule.at)?;
            Ok(Some(every))
        }
    }
}

/// Streaks over check-in periods (`every_days` long, counted from the goal's first local day):
/// (current, longest). The current streak survives while today's period is still open.
pub fn streaks(
    dates: &[NaiveDate],
    start: NaiveDate,
    every_days: u32,
    today: NaiveDate,
) -> (u32, u32) {
    let every = i64::from(every_days.max(1));
    let period = |d: NaiveDate| (d - start).num_days().div_euclid(every);
    let mut periods: Vec<i64> = dates.iter().map(|d| period(*d)).collect();
    periods.sort_unstable();
    periods.dedup();
    let (mut longest, mut run, mut last) = (0u32, 0u32, None::<i64>);
    for p in &periods {
        run = if last == Some(p - 1) { run + 1 } else { 1 };
        longest = longest.max(run);
        last = Some(*p);
    }
    let now = period(today);
    let current = match last {
        Some(p) if p == now || p == now - 1 => run,
        _ => 0,
    };
    (current, longest)
}

pub fn view(goal: Goal, check_ins: Vec<CheckIn>, user: &EndUser, now: DateTime<Utc>) -> GoalView {
    let latest_value = check_ins.last().map(|c| c.value);
    let progress = goal.progress(latest_value.unwrap_or(goal.baseline));
    let tz = user.tz();
    let dates: Vec<NaiveDate> = check_ins.iter().map(|c| c.local_date).collect();
    let (current_streak, longest_streak) = streaks(
        &dates,
        schedule::local_date(tz, goal.created_at),
        goal.every_days.unwrap_or(1),
        schedule::local_date(tz, now),
    );
    GoalView {
        goal,
        check_ins,
        latest_value,
        progress: (progress * 1000.0).round() / 1000.0,
        current_streak,
        longest_streak,
    }
}

/// A check-in value: a JSON number, or a string that is one number.
pub fn parse_value(value: &serde_json::Value) -> Result<f64, CoachingError> {
    let number = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().replace(',', ".").parse::<f64>().ok(),
        _ => None,
    };
    number
        .filter(|n| n.is_finite())
        .ok_or_else(|| CoachingError::Invalid("value must be a number".into()))
}

impl Coaching {
    pub async fn create_goal(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        input: GoalInput,
    ) -> Result<GoalView, CoachingError> {
        let every = validate_goal(
            &input.title,
            &input.metric,
            input.target,
            input.baseline,
            input.check_in.as_ref(),
        )?;
        let due_date =
            match &input.due_date {
                None => None,
                Some(text) => Some(text.parse::<NaiveDate>().map_err(|_| {
                    CoachingError::InvalidSchedule("due_date: use YYYY-MM-DD".into())
                })?),
            };
        let user = self.end_user(scope, end_user_id).await?;
        let now = self.now_for(scope, &user).await?;
        let goal = Goal {
            id: new_id(),
            end_user_id: user.id.clone(),
            enrollment_id: None,
            key: None,
            title: input.title.trim().to_string(),
            metric: input.metric.trim().to_string(),
            unit: input.unit.trim().to_string(),
            baseline: input.baseline,
            target: input.target,
            direction: input.direction,
            due_date,
            check_in: input.check_in,
            status: "open".into(),
            reached_at: None,
            created_at: now,
            every_days: every,
        };
        let (scope_moved, stored) = (scope.clone(), goal.clone());
        self.db()
            .call(move |c| c.create_goal(&scope_moved, &stored))
            .await?;
        self.start_check_ins(scope, &user, &goal).await?;
        Ok(view(goal, Vec::new(), &user, now))
    }

    /// Queues the goal's recurring check-in prompt, if it has a schedule.
    pub(super) async fn start_check_ins(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        goal: &Goal,
    ) -> Result<(), CoachingError> {
        let (Some(every), Some(schedule)) = (goal.every_days, &goal.check_in) else {
            return Ok(());
        };
        let at = LocalTime::parse("check_in.at", &schedule.at)?;
        let tz = user.tz();
        let first = schedule::next_repeat(
            tz,
            schedule::local_date(tz, goal.created_at),
            every,
            at,
            goal.created_at,
        );
        self.jobs()
            .enqueue(NewJob {
                kind: kinds::CHECK_IN,
                tenant_id: Some(scope.tenant_id().to_string()),
                subject_id: goal.id.clone(),
                payload: serde_json::json!({}),
                run_at: first,
                dedupe_key: Some(format!("checkin:{}", goal.id)),
                clock_id: user.test_clock_id.clone(),
            })
            .await?;
        Ok(())
    }

    /// A goal, if the end user (when given) owns it.
    async fn goal_of(
        &self,
        scope: &TenantScope,
        goal_id: &str,
        visitor_id: Option<&str>,
    ) -> Result<(Goal, EndUser), CoachingError> {
        let (scope_moved, id, visitor) = (
            scope.clone(),
            goal_id.to_string(),
            visitor_id.map(str::to_string),
        );
        self.db()
            .call(move |c| {
                let goal = c
                    .goal(&scope_moved, &id)?
                    .ok_or(CoachingError::NotFound("no such goal"))?;
                let user = c
                    .end_user(&scope_moved, &goal.end_user_id)?
                    .ok_or(CoachingError::NotFound("no such goal"))?;
                if let Some(visitor) = visitor {
                    let me = c.end_user_of_visitor(&scope_moved, &visitor)?;
                    if me.map(|u| u.id) != Some(user.id.clone()) {
                        return Err(CoachingError::NotFound("no such goal"));
                    }
                }
                Ok((goal, user))
            })
            .await
    }

    /// The goal with its check-ins; `visitor_id`: only the end user's own.
    pub async fn goal(
        &self,
        scope: &TenantScope,
        goal_id: &str,
        visitor_id: Option<&str>,
    ) -> Result<GoalView, CoachingError> {
        let (goal, user) = self.goal_of(scope, goal_id, visitor_id).await?;
        let now = self.now_for(scope, &user).await?;
        let (scope_moved, id) = (scope.clone(), goal.id.clone());
        let check_ins = self
            .db()
            .call(move |c| c.check_ins(&scope_moved, &id))
            .await?;
        Ok(view(goal, check_ins, &user, now))
    }

    /// Records a value (from the API or a chat reply); a value that reaches the target marks
    /// the goal reached and sets off `goal_reached` rules.
    pub async fn check_in(
        &self,
        scope: &TenantScope,
        goal_id: &str,
        visitor_id: Option<&str>,
        value: f64,
        note: Option<String>,
        source: &str,
    ) -> Result<GoalView, CoachingError> {
        if let Some(note) = &note
            && note.chars().count() > 1000
        {
            return Err(CoachingError::Invalid(
                "note needs at most 1000 characters".into(),
            ));
        }
        let (goal, user) = self.goal_of(scope, goal_id, visitor_id).await?;
        let now = self.now_for(scope, &user).await?;
        let check_in = CheckIn {
            value,
            note,
            at: now,
            source: source.to_string(),
            local_date: schedule::local_date(user.tz(), now),
        };
        let newly_reached = goal.status == "open" && goal.reached(value);
        let (scope_moved, id) = (scope.clone(), goal.id.clone());
        let check_ins = self
            .db()
            .call(move |c| {
                c.add_check_in(&scope_moved, &id, &check_in)?;
                if newly_reached {
                    c.set_goal_status(&scope_moved, &id, "reached", Some(now))?;
                }
                c.check_ins(&scope_moved, &id)
            })
            .await?;
        let mut goal = goal;
        if newly_reached {
            goal.status = "reached".into();
            goal.reached_at = Some(now);
            self.on_goal_reached(scope, &user, &goal, now).await?;
        }
        Ok(view(goal, check_ins, &user, now))
    }
}

/// Plans a goal's check-in prompt at each of its times, while the goal is open.
pub struct CheckInJob(pub Coaching);

impl Handler for CheckInJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let scope = job_scope(job)?;
            let coaching = &self.0;
            let (scope_moved, id) = (scope.clone(), job.subject_id.clone());
            let occurrence = job.run_at;
            // One call reads the goal, its person and enrolment, and plans this time's prompt.
            let found = coaching
                .db()
                .call(move |c| {
                    let Some(goal) = c.goal(&scope_moved, &id)? else {
                        return Ok(None);
                    };
                    let Some(user) = c.end_user(&scope_moved, &goal.end_user_id)? else {
                        return Ok(None);
                    };
                    if goal.status != "open"
                        || user.opted_out_at.is_some()
                        || goal.every_days.is_none()
                        || goal.check_in.is_none()
                    {
                        return Ok(None);
                    }
                    // A program's goal asks only while its enrolment runs (or after it
                    // completed); paused, it skips this time; unenrolled, it stops.
                    let enrollment = match &goal.enrollment_id {
                        Some(id) => c.enrollment(&scope_moved, id)?.map(|e| e.status),
                        None => None,
                    };
                    if enrollment.as_deref() == Some("unenrolled") {
                        return Ok(None);
                    }
                    let mut planned = false;
                    if enrollment.as_deref() != Some("paused") {
                        let coach = crate::chat::coach::get(c, &scope_moved)?;
                        let nudge = NewNudge {
                            end_user_id: user.id.clone(),
                            kind: NudgeKind::CheckIn,
                            rule_id: None,
                            enrollment_id: goal.enrollment_id.clone(),
                            step_key: None,
                            goal_id: Some(goal.id.clone()),
                            dedupe_key: format!(
                                "checkin:{}:{}",
                                goal.id,
                                schedule::local_date(user.tz(), occurrence)
                            ),
                            scheduled_for: occurrence.max(now),
                            status: "scheduled",
                            reason: None,
                        };
                        planned = plan_in(c, &scope_moved, &user, &coach, nudge, false, now)?;
                    }
                    Ok::<_, CoachingError>(Some((goal, user, planned)))
                })
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            let Some((goal, user, planned)) = found else {
                return Ok(Outcome::Done);
            };
            if planned {
                coaching.jobs().wake();
            }
            let (Some(every), Some(check_in)) = (goal.every_days, &goal.check_in) else {
                return Ok(Outcome::Done);
            };
            let tz = user.tz();
            let at = LocalTime::parse("check_in.at", &check_in.at)
                .map_err(|e| JobError::Fatal(e.to_string()))?;
            let next = schedule::next_repeat(
                tz,
                schedule::local_date(tz, goal.created_at),
                every,
                at,
                occurrence + chrono::Duration::seconds(1),
            );
            Ok(Outcome::Again {
                at: next,
                payload: job.payload.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn streaks_count_consecutive_periods_and_survive_an_open_today() {
        let start = d("2026-01-01");
        let dates = [
            d("2026-01-01"),
            d("2026-01-02"),
            d("2026-01-04"),
            d("2026-01-05"),
            d("2026-01-06"),
        ];
        // Today (the 7th) is still open: the run of three holds.
        assert_eq!(streaks(&dates, start, 1, d("2026-01-07")), (3, 3));
        // A missed day breaks it.
        assert_eq!(streaks(&dates, start, 1, d("2026-01-08")), (0, 3));
        // Weekly: two weeks in a row.
        assert_eq!(streaks(&dates, start, 7, d("2026-01-08")), (1, 1));
        assert_eq!(streaks(&[], start, 1, start), (0, 0));
    }

    #[test]
    fn values_must_be_numbers() {
        assert_eq!(parse_value(&serde_json::json!(42)).unwrap(), 42.0);
        assert_eq!(parse_value(&serde_json::json!("7,5")).unwrap(), 7.5);
        assert!(parse_value(&serde_json::json!("lots")).is_err());
        assert!(parse_value(&serde_json::json!(null)).is_err());
    }
}
