//! Outcomes of a program for real end users (test end users are left out): enrolment,
//! completion, drop-off per step, weekly cohorts, goal progress, check-in adherence and how
//! often nudges get a reply.

use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, Duration, Utc};
use serde::Serialize;

use super::model::{NudgeKind, StepKind};
use super::{Coaching, CoachingError};
use crate::auth::TenantScope;
use crate::db::coaching::{EndUserStore, GoalStore, NudgeStore, ProgramStore};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StepDropOff {
    pub step_key: String,
    /// Enrolments that reached the step.
    pub reached: i64,
    /// Share of all enrolments that did not reach it.
    pub drop_off: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cohort {
    /// Monday of the enrolment week, `YYYY-MM-DD`.
    pub week: String,
    pub enrolled: i64,
    /// Share of the cohort who wrote to the coach in the last 7 days.
    pub retained: f64,
    /// The retention heat-map's row: for week 0, 1, 2... after each person enrolled (as many
    /// as have passed, at most 12), the share of the cohort who checked in that week.
    pub weeks: Vec<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Outcomes {
    pub program_id: String,
    pub enrolled: i64,
    /// Enrolments active now.
    pub active: i64,
    pub completed: i64,
    pub completion_rate: f64,
    pub drop_off: Vec<StepDropOff>,
    pub retention: Vec<Cohort>,
    /// Median progress (0 to 1) of the program's goals.
    pub median_goal_progress: Option<f64>,
    /// How the program's goals are spread by progress: how many are at 0–20 %, 20–40 %,
    /// 40–60 %, 60–80 % and 80–100 % of the way from baseline to target.
    pub goal_progress_distribution: Vec<i64>,
    /// Check-in prompts and check-in steps answered with a value within a day / sent.
    pub check_in_adherence: Option<f64>,
    /// Rule nudges replied to / sent.
    pub nudge_reply_rate: Option<f64>,
}

/// Weeks after enrolment the retention heat-map shows.
const HEAT_MAP_WEEKS: i64 = 12;

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        ((part as f64 / whole as f64) * 1000.0).round() / 1000.0
    }
}

impl Coaching {
    pub async fn outcomes(
        &self,
        scope: &TenantScope,
        program_id: &str,
    ) -> Result<Outcomes, CoachingError> {
        let program = self.program(scope, program_id).await?;
        let (scope, id) = (scope.clone(), program_id.to_string());
        let (enrollments, nudges, progress, check_ins, last_active, activity) = self
            .db()
            .read(move |c| {
                let enrollments = c.real_enrollments_in(&scope, &id)?;
                let ids: Vec<&str> = enrollments.iter().map(|e| e.id.as_str()).collect();
                let mut users: Vec<&str> =
                    enrollments.iter().map(|e| e.end_user_id.as_str()).collect();
                users.sort_unstable();
                users.dedup();
                let nudges: Vec<_> = c
                    .real_nudges(&scope)?
                    .into_iter()
                    .filter(|n| {
                        users.contains(&n.end_user_id.as_str())
                            && n.enrollment_id.as_deref().is_none_or(|e| ids.contains(&e))
                    })
                    .collect();
                let mut progress = Vec::new();
                let mut check_ins = HashMap::new();
                let mut last_active = HashMap::new();
                // When each person checked in on the program's goals (the heat-map's activity).
                let mut activity: HashMap<String, Vec<chrono::DateTime<Utc>>> = HashMap::new();
                for user in &users {
                    if let Some(person) = c.end_user(&scope, user)? {
                        last_active.insert(person.id.clone(), person.last_active_at);
                    }
                    for goal in c.goals_of(&scope, user)? {
                        if goal
                            .enrollment_id
                            .as_deref()
                            .is_some_and(|e| ids.contains(&e))
                        {
                            let values = c.check_ins(&scope, &goal.id)?;
                            let latest = values.last().map(|c| c.value);
                            progress.push(goal.progress(latest.unwrap_or(goal.baseline)));
                            activity
                                .entry(user.to_string())
                                .or_default()
                                .extend(values.iter().map(|v| v.at));
                            check_ins.insert(goal.id.clone(), values);
                        }
                    }
                }
                Ok::<_, crate::db::DbError>((
                    enrollments,
                    nudges,
                    progress,
                    check_ins,
                    last_active,
                    activity,
                ))
            })
            .await?;
        let enrolled = enrollments.len() as i64;
        let count = |status: &str| enrollments.iter().filter(|e| e.status == status).count() as i64;
        let completed = count("completed");
        let drop_off = program
            .definition
            .ordered_steps()
            .into_iter()
            .map(|step| {
                let reached = enrollments
                    .iter()
                    .filter(|e| e.steps_done.contains(&step.key))
                    .count() as i64;
                StepDropOff {
                    step_key: step.key.clone(),
                    reached,
                    drop_off: ratio(enrolled - reached, enrolled),
                }
            })
            .collect();
        let week_ago = Utc::now() - Duration::days(7);
        let mut cohorts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut heat: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        let now = Utc::now();
        for e in &enrollments {
            let date = e.enrolled_at.date_naive();
            let monday = date - Duration::days(date.weekday().num_days_from_monday().into());
            // Wrote to the coach in the last seven days.
            let active = last_active
                .get(&e.end_user_id)
                .copied()
                .flatten()
                .is_some_and(|at| at >= week_ago);
            let entry = cohorts.entry(monday.to_string()).or_default();
            entry.0 += 1;
            entry.1 += i64::from(active);
            // Week k after enrolling: did they check in? Counted for the weeks that began.
            let weeks = ((now - e.enrolled_at).num_days() / 7 + 1).clamp(1, HEAT_MAP_WEEKS);
            let row = heat.entry(monday.to_string()).or_default();
            let times = activity.get(&e.end_user_id);
            for week in 0..weeks {
                let from = e.enrolled_at + Duration::days(7 * week);
                let to = from + Duration::days(7);
                let took_part =
                    times.is_some_and(|times| times.iter().any(|at| *at >= from && *at < to));
                if row.len() <= week as usize {
                    row.push((0, 0));
                }
                let cell = &mut row[week as usize];
                cell.0 += 1;
                cell.1 += i64::from(took_part);
            }
        }
        let mut goal_progress_distribution = vec![0; 5];
        for p in &progress {
            goal_progress_distribution[((p.clamp(0.0, 1.0) * 5.0) as usize).min(4)] += 1;
        }
        let mut progress = progress;
        progress.sort_by(f64::total_cmp);
        let median_goal_progress = (!progress.is_empty()).then(|| {
            let middle = progress.len() / 2;
            if progress.len() % 2 == 1 {
                progress[middle]
            } else {
                (progress[middle - 1] + progress[middle]) / 2.0
            }
        });
        let sent = |n: &&super::model::Nudge| {
            matches!(n.status.as_str(), "sent" | "delivered" | "read" | "replied")
        };
        // Prompts for a value (goal prompts and check-in steps) answered with one within a day.
        let check_in_steps: Vec<&str> = program
            .definition
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::CheckIn)
            .map(|s| s.key.as_str())
            .collect();
        let prompts: Vec<_> = nudges
            .iter()
            .filter(|n| {
                n.kind == NudgeKind::CheckIn
                    || n.step_key
                        .as_deref()
                        .is_some_and(|k| check_in_steps.contains(&k))
            })
            .filter(sent)
            .collect();
        let answered = prompts
            .iter()
            .filter(|n| {
                let (Some(goal), Some(at)) = (&n.goal_id, n.sent_at) else {
                    return false;
                };
                check_ins.get(goal).is_some_and(|values| {
                    values
                        .iter()
                        .any(|v| v.at >= at && v.at < at + Duration::days(1))
                })
            })
            .count() as i64;
        let rule_nudges: Vec<_> = nudges
            .iter()
            .filter(|n| n.kind == NudgeKind::Rule)
            .filter(sent)
            .collect();
        let replied = |list: &[&super::model::Nudge]| {
            list.iter().filter(|n| n.status == "replied").count() as i64
        };
        Ok(Outcomes {
            program_id: program.id,
            enrolled,
            active: count("active"),
            completed,
            completion_rate: ratio(completed, enrolled),
            drop_off,
            retention: cohorts
                .into_iter()
                .map(|(week, (enrolled, retained))| Cohort {
                    weeks: heat
                        .get(&week)
                        .map(|row| {
                            row.iter()
                                .map(|(all, took_part)| ratio(*took_part, *all))
                                .collect()
                        })
                        .unwrap_or_default(),
                    week,
                    enrolled,
                    retained: ratio(retained, enrolled),
                })
                .collect(),
            median_goal_progress,
            goal_progress_distribution,
            check_in_adherence: (!prompts.is_empty())
                .then(|| ratio(answered, prompts.len() as i64)),
            nudge_reply_rate: (!rule_nudges.is_empty())
                .then(|| ratio(replied(&rule_nudges), rule_nudges.len() as i64)),
        })
    }
}
