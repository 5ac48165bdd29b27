//! What the coaching engine works with: end users, goals and check-ins, programs and their
//! steps, enrolments, nudge rules and nudges. Shared by the domain, the store and the routes.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A person the coach works with.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndUser {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    /// IANA zone: program steps and check-ins fire at local times in it.
    pub time_zone: String,
    pub locale: String,
    pub tags: Vec<String>,
    pub last_active_at: Option<DateTime<Utc>>,
    /// Agreed to proactive messages (nudges).
    pub consent: bool,
    pub consent_at: Option<DateTime<Utc>>,
    pub consent_channel: Option<String>,
    pub opted_out_at: Option<DateTime<Utc>>,
    /// Set for test end users: they live on this test clock.
    pub test_clock_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub awaiting_goal_id: Option<String>,
    #[serde(skip)]
    pub awaiting_retried: bool,
}

impl EndUser {
    pub fn is_test(&self) -> bool {
        self.test_clock_id.is_some()
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Increase,
    Decrease,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Increase => "increase",
            Direction::Decrease => "decrease",
        }
    }

    pub fn parse(text: &str) -> Direction {
        if text == "decrease" {
            Direction::Decrease
        } else {
            Direction::Increase
        }
    }
}

/// When a goal asks for its value: every `every` (ISO 8601 days or weeks) at local `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckInSchedule {
    /// "P1D", "P7D", "P2W"...
    pub every: String,
    /// "HH:MM" in the end user's zone.
    pub at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Goal {
    pub id: String,
    pub end_user_id: String,
    pub enrollment_id: Option<String>,
    /// The program's key for the goal, for goals an enrolment created.
    pub key: Option<String>,
    pub title: String,
    pub metric: String,
    pub unit: String,
    pub baseline: f64,
    pub target: f64,
    pub direction: Direction,
    pub due_date: Option<NaiveDate>,
    pub check_in: Option<CheckInSchedule>,
    /// open, reached or closed.
    pub status: String,
    pub reached_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Days between check-ins (`check_in.every`), for the scheduler.
    #[serde(skip)]
    pub every_days: Option<u32>,
}

impl Goal {
    /// 0..1 from baseline to target, in the goal's direction.
    pub fn progress(&self, value: f64) -> f64 {
        let span = self.target - self.baseline;
        if span.abs() < f64::EPSILON {
            return if self.reached(value) { 1.0 } else { 0.0 };
        }
        ((value - self.baseline) / span).clamp(0.0, 1.0)
    }

    pub fn reached(&self, value: f64) -> bool {
        match self.direction {
            Direction::Increase => value >= self.target,
            Direction::Decrease => value <= self.target,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckIn {
    pub value: f64,
    pub note: Option<String>,
    pub at: DateTime<Utc>,
    /// Who gave it: `end_user` (the API with their token), `staff`, or `chat` (a reply to the
    /// coach's question).
    pub source: String,
    /// The end user's local date, which streaks count.
    pub local_date: NaiveDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Message,
    CheckIn,
    Resource,
    Milestone,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Choice {
    pub label: String,
    /// The key of the step this reply leads to.
    pub next: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    pub key: String,
    /// Days after enrolment (0: the day of enrolment).
    pub day: Option<u32>,
    /// "HH:MM" in the end user's zone.
    pub at: String,
    pub kind: StepKind,
    /// For messages and resources an instruction to the coach; otherwise the text to send.
    pub text: String,
    pub goal_key: Option<String>,
    pub document_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgramGoal {
    pub key: String,
    pub title: String,
    pub metric: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub baseline: f64,
    pub target: f64,
    pub direction: Direction,
    pub check_in: Option<CheckInSchedule>,
}

/// A program as the creator wrote it; each save is a version.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgramDefinition {
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub goals: Vec<ProgramGoal>,
    pub steps: Vec<Step>,
}

impl ProgramDefinition {
    /// Steps that only a choice leads to: they fire when chosen, not on their day.
    pub fn is_branch(&self, key: &str) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.choices)
            .any(|c| c.next == key)
    }

    /// Steps in the order they fire: by day, then time.
    pub fn ordered_steps(&self) -> Vec<&Step> {
        let mut steps: Vec<&Step> = self.steps.iter().collect();
        steps.sort_by_key(|s| (s.day.unwrap_or(0), s.at.clone()));
        steps
    }

    pub fn step(&self, key: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.key == key)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Program {
    pub id: String,
    /// The newest saved version.
    pub version: i64,
    pub published_version: Option<i64>,
    /// draft: the newest version is not published; published: it is.
    pub status: String,
    #[serde(flatten)]
    pub definition: ProgramDefinition,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Enrollment {
    pub id: String,
    pub program_id: String,
    pub version: i64,
    pub end_user_id: String,
    /// active, paused, completed or unenrolled.
    pub status: String,
    pub enrolled_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub steps_done: Vec<String>,
}

/// What sets a rule off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// No message from the end user for `days` (from creation for someone who never wrote).
    Inactivity {
        days: u32,
    },
    /// A scheduled check-in passed without a value.
    MissedCheckIn,
    /// A daily check-in not yet done by its time, with a streak of 2 or more.
    StreakAtRisk,
    GoalReached,
    /// An RFC 5545 rule ("FREQ=WEEKLY;BYDAY=MO") at local `at`.
    Schedule {
        rrule: String,
        at: String,
    },
}

/// Who a rule is for; empty: every end user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Audience {
    pub program_id: Option<String>,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NudgeRule {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub trigger: Trigger,
    pub audience: Audience,
    pub instruction: String,
    pub created_at: DateTime<Utc>,
}

/// What a nudge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NudgeKind {
    Rule,
    Step,
    CheckIn,
}

impl NudgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NudgeKind::Rule => "rule",
            NudgeKind::Step => "step",
            NudgeKind::CheckIn => "check_in",
        }
    }

    pub fn parse(text: &str) -> NudgeKind {
        match text {
            "rule" => NudgeKind::Rule,
            "step" => NudgeKind::Step,
            _ => NudgeKind::CheckIn,
        }
    }
}

/// One planned proactive message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Nudge {
    pub id: String,
    pub end_user_id: String,
    pub kind: NudgeKind,
    pub rule_id: Option<String>,
    pub enrollment_id: Option<String>,
    pub step_key: Option<String>,
    pub goal_id: Option<String>,
    /// scheduled, deferred, sent, delivered, read, replied, suppressed or failed.
    pub status: String,
    /// Why it was deferred, suppressed or failed.
    pub reason: Option<String>,
    pub scheduled_for: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub channel: Option<String>,
    pub content: Option<String>,
    pub message_id: Option<String>,
    #[serde(skip)]
    pub dedupe_key: String,
    /// The stored state before delivery receipts and replies are folded in.
    #[serde(skip)]
    pub planned_status: String,
}

/// A nudge to plan.
#[derive(Debug, Clone)]
pub struct NewNudge {
    pub end_user_id: String,
    pub kind: NudgeKind,
    pub rule_id: Option<String>,
    pub enrollment_id: Option<String>,
    pub step_key: Option<String>,
    pub goal_id: Option<String>,
    pub dedupe_key: String,
    pub scheduled_for: DateTime<Utc>,
    /// `deferred` with a reason when planned inside quiet hours.
    pub status: &'static str,
    pub reason: Option<String>,
}
