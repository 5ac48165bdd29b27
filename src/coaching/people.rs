//! End users (a visitor who writes becomes one), their profile, consent and opt-out, test
//! clocks and test end users with a visitor session of their own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::goals::{self, GoalView};
use super::model::{EndUser, Enrollment, Nudge};
use super::schedule;
use super::{Coaching, CoachingError, kinds};
use crate::auth::{TenantScope, new_id};
use crate::db::coaching::{
    ClockStore, ConversationRef, EndUserFilter, EndUserStore, GoalStore, NudgeStore, ProgramStore,
};
use crate::db::jobs::JobStore;
use crate::jobs::NewJob;

/// A test clock as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestClock {
    pub id: String,
    pub now: DateTime<Utc>,
    /// Jobs run by the last advance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_run: Option<usize>,
    /// When the next planned message on this clock (a program step, a check-in prompt, a
    /// rule's nudge) is due: "next step" in the preview advances to it.
    pub next_message_at: Option<DateTime<Utc>>,
}

/// An end user created through the API (a test end user with `test_clock_id`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndUser {
    pub name: String,
    #[serde(default = "utc")]
    pub time_zone: String,
    pub test_clock_id: Option<String>,
    /// Consent to proactive messages, given now on the web channel.
    #[serde(default)]
    pub consent: bool,
    pub email: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// A change to an end user; absent fields stay.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndUserUpdate {
    pub name: Option<String>,
    pub time_zone: Option<String>,
    pub tags: Option<Vec<String>>,
}

/// Everything about one end user.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Profile {
    #[serde(flatten)]
    pub end_user: EndUser,
    pub goals: Vec<GoalView>,
    pub enrollments: Vec<Enrollment>,
    pub recent_nudges: Vec<Nudge>,
    pub conversations: Vec<ConversationRef>,
}

/// An end user's own view of their coaching (`GET /api/v1/public/me`): their check-in
/// setting and their progress.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[schema(as = MyCoaching)]
pub struct Me {
    /// Whether the coach may check in on its own: `null` until they were asked and answered.
    pub consent: Option<bool>,
    /// They said STOP (saying yes to check-ins again opts back in).
    pub opted_out: bool,
    /// Open and reached goals.
    pub goals: Vec<MyGoal>,
    /// Programs they are (or were, to the end) enrolled in.
    pub programs: Vec<MyProgram>,
}

/// A goal as its end user sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MyGoal {
    pub title: String,
    pub metric: String,
    pub unit: String,
    pub target: f64,
    pub latest_value: Option<f64>,
    /// 0 to 1, baseline to target.
    pub progress: f64,
    pub current_streak: u32,
    pub status: String,
}

/// An enrolment as its end user sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MyProgram {
    pub name: String,
    /// active, paused or completed.
    pub status: String,
    /// Steps sent so far, of `steps` (branch steps count once chosen).
    pub steps_done: usize,
    pub steps: usize,
    /// What the newest step they received said (the coach's words, not the creator's
    /// instruction), and when: the widget shows it as the current step.
    pub latest_step: Option<String>,
    pub latest_step_at: Option<DateTime<Utc>>,
}

fn clean_tags(tags: Vec<String>) -> Result<Vec<String>, CoachingError> {
    if tags.len() > 50 {
        return Err(CoachingError::Invalid("tags: at most 50".into()));
    }
    let mut clean: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.trim().to_string();
        if tag.is_empty() || tag.chars().count() > 50 {
            return Err(CoachingError::Invalid(
                "tags: each needs 1 to 50 characters".into(),
            ));
        }
        if !clean.contains(&tag) {
            clean.push(tag);
        }
    }
    Ok(clean)
}

fn clean_name(name: &str) -> Result<String, CoachingError> {
    let name = name.trim();
    if name.chars().count() > 100 {
        return Err(CoachingError::Invalid(
            "name needs at most 100 characters".into(),
        ));
    }
    Ok(name.to_string())
}

impl Coaching {
    pub async fn create_test_clock(
        &self,
        scope: &TenantScope,
        now: DateTime<Utc>,
    ) -> Result<TestClock, CoachingError> {
        let (scope_moved, id) = (scope.clone(), new_id());
        let saved = id.clone();
        self.db()
            .call(move |c| c.create_clock(&scope_moved, &id, now))
            .await?;
        self.ensure_rule_sweeps(scope).await?;
        Ok(TestClock {
            id: saved,
            now,
            jobs_run: None,
            next_message_at: None,
        })
    }

    pub async fn test_clock(
        &self,
        scope: &TenantScope,
        id: &str,
    ) -> Result<TestClock, CoachingError> {
        let (scope, id) = (scope.clone(), id.to_string());
        let saved = id.clone();
        let (now, next_message_at) = self
            .db()
            .read(move |c| {
                let now = c.clock_now(&scope, &id)?;
                let next = c.next_clock_job(&scope, &id, kinds::NUDGE)?;
                Ok::<_, crate::db::DbError>(now.map(|now| (now, next)))
            })
            .await?
            .ok_or(CoachingError::NotFound("no such test clock"))?;
        Ok(TestClock {
            id: saved,
            now,
            jobs_run: None,
            next_message_at,
        })
    }

    /// Moves the clock to `to`, running every job due by then (and jobs those schedule).
    pub async fn advance_clock(
        &self,
        scope: &TenantScope,
        id: &str,
        to: DateTime<Utc>,
    ) -> Result<TestClock, CoachingError> {
        let clock = self.test_clock(scope, id).await?;
        if to < clock.now {
            return Err(CoachingError::Invalid(format!(
                "to: a test clock only moves forward (it is at {})",
                crate::db::instant(clock.now)
            )));
        }
        if to - clock.now > chrono::Duration::days(400) {
            return Err(CoachingError::Invalid(
                "to: advance at most 400 days at a time".into(),
            ));
        }
        let ran = self.jobs().advance(scope, id, to).await?;
        Ok(TestClock {
            jobs_run: Some(ran),
            ..self.test_clock(scope, id).await?
        })
    }

    pub async fn end_user(&self, scope: &TenantScope, id: &str) -> Result<EndUser, CoachingError> {
        let (scope, id) = (scope.clone(), id.to_string());
        self.db()
            .call(move |c| c.end_user(&scope, &id))
            .await?
            .ok_or(CoachingError::NotFound("no such end user"))
    }

    pub async fn create_end_user(
        &self,
        scope: &TenantScope,
        input: NewEndUser,
    ) -> Result<EndUser, CoachingError> {
        schedule::parse_time_zone("time_zone", &input.time_zone)?;
        // Real end users come from the chat (and channels), where they can read what the coach
        // sends; one made here would have nowhere to read it.
        if input.test_clock_id.is_none() {
            return Err(CoachingError::Invalid(
                "test_clock_id: end users created through the API are test end users; real ones \
                 appear when a visitor writes"
                    .into(),
            ));
        }
        let name = clean_name(&input.name)?;
        let tags = clean_tags(input.tags)?;
        let now = match &input.test_clock_id {
            Some(clock) => self.test_clock(scope, clock).await?.now,
            None => Utc::now(),
        };
        let user = EndUser {
            id: new_id(),
            name,
            email: input
                .email
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty()),
            time_zone: input.time_zone,
            locale: "en".into(),
            tags,
            last_active_at: None,
            consent: input.consent,
            consent_at: input.consent.then_some(now),
            consent_channel: input.consent.then(|| "web".to_string()),
            opted_out_at: None,
            test_clock_id: input.test_clock_id,
            created_at: now,
            awaiting_goal_id: None,
            awaiting_retried: false,
        };
        let (scope_moved, stored) = (scope.clone(), user.clone());
        self.db()
            .call(move |c| c.create_end_user(&scope_moved, &stored))
            .await?;
        // Their web visitor now, so two messages due at once never open two conversations.
        self.web_visitor(scope, &user).await?;
        Ok(user)
    }

    pub async fn end_users(
        &self,
        scope: &TenantScope,
        filter: EndUserFilter,
    ) -> Result<(Vec<EndUser>, i64), CoachingError> {
        let scope = scope.clone();
        Ok(self
            .db()
            .call(move |c| c.list_end_users(&scope, &filter))
            .await?)
    }

    pub async fn profile(&self, scope: &TenantScope, id: &str) -> Result<Profile, CoachingError> {
        let user = self.end_user(scope, id).await?;
        let now = self.now_for(scope, &user).await?;
        let (scope, user_moved) = (scope.clone(), user.clone());
        self.db()
            .call(move |c| {
                let mut goals = Vec::new();
                for goal in c.goals_of(&scope, &user_moved.id)? {
                    let check_ins = c.check_ins(&scope, &goal.id)?;
                    goals.push(goals::view(goal, check_ins, &user_moved, now));
                }
                Ok::<_, CoachingError>(Profile {
                    goals,
                    enrollments: c.enrollments_of(&scope, &user_moved.id)?,
                    recent_nudges: c.nudges(&scope, Some(&user_moved.id), None, 20)?,
                    conversations: c.end_user_conversations(&scope, &user_moved.id)?,
                    end_user: user_moved,
                })
            })
            .await
    }

    pub async fn update_end_user(
        &self,
        scope: &TenantScope,
        id: &str,
        change: EndUserUpdate,
    ) -> Result<EndUser, CoachingError> {
        let mut user = self.end_user(scope, id).await?;
        if let Some(zone) = change.time_zone {
            schedule::parse_time_zone("time_zone", &zone)?;
            user.time_zone = zone;
        }
        if let Some(name) = change.name {
            user.name = clean_name(&name)?;
        }
        if let Some(tags) = change.tags {
            user.tags = clean_tags(tags)?;
        }
        self.save_end_user(scope, &user).await?;
        Ok(user)
    }

    pub(super) async fn save_end_user(
        &self,
        scope: &TenantScope,
        user: &EndUser,
    ) -> Result<(), CoachingError> {
        let (scope, stored) = (scope.clone(), user.clone());
        self.db()
            .call(move |c| c.update_end_user(&scope, &stored))
            .await?;
        Ok(())
    }

    /// The end user a visitor is, created on first need (with the zone the browser sent).
    pub async fn end_user_of_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<EndUser, CoachingError> {
        let (scope, visitor) = (scope.clone(), visitor_id.to_string());
        Ok(self
            .db()
            .call(move |c| {
                if let Some(user) = c.end_user_of_visitor(&scope, &visitor)? {
                    return Ok::<_, crate::db::DbError>(user);
                }
                let time_zone = c
                    .visitor_time_zone(&scope, &visitor)?
                    .filter(|z| schedule::parse_time_zone("time_zone", z).is_ok())
                    .unwrap_or_else(utc);
                let user = EndUser {
                    id: new_id(),
                    name: String::new(),
                    email: None,
                    time_zone,
                    locale: "en".into(),
                    tags: Vec::new(),
                    last_active_at: None,
                    consent: false,
                    consent_at: None,
                    consent_channel: None,
                    opted_out_at: None,
                    test_clock_id: None,
                    created_at: Utc::now(),
                    awaiting_goal_id: None,
                    awaiting_retried: false,
                };
                c.create_end_user(&scope, &user)?;
                c.link_visitor(&scope, &visitor, &user.id)?;
                Ok(user)
            })
            .await?)
    }

    /// A visitor token for a test end user, so the creator can chat as them. The end user
    /// keeps one visitor: its token is replaced, its conversations stay.
    pub async fn session(&self, scope: &TenantScope, id: &str) -> Result<String, CoachingError> {
        let user = self.end_user(scope, id).await?;
        if !user.is_test() {
            return Err(CoachingError::Invalid(
                "sessions are only for test end users (created with a test_clock_id)".into(),
            ));
        }
        let visitor = self.web_visitor(scope, &user).await?;
        Ok(self
            .inner
            .chat
            .reissue_visitor_token(scope, &visitor)
            .await?)
    }

    /// The end user's web visitor, created when they have none (made through the API).
    pub(super) async fn web_visitor(
        &self,
        scope: &TenantScope,
        user: &EndUser,
    ) -> Result<String, CoachingError> {
        let (scope_moved, user_id) = (scope.clone(), user.id.clone());
        let existing = self
            .db()
            .call(move |c| c.visitor_of_end_user(&scope_moved, &user_id))
            .await?;
        if let Some(visitor) = existing {
            return Ok(visitor);
        }
        let visitor = self.inner.chat.create_visitor_for(scope).await?;
        let (scope_moved, user_id, visitor_moved) =
            (scope.clone(), user.id.clone(), visitor.clone());
        self.db()
            .call(move |c| c.link_visitor(&scope_moved, &visitor_moved, &user_id))
            .await?;
        Ok(visitor)
    }

    /// What the widget needs to know of its end user, without making one of a visitor who
    /// never took part in coaching.
    pub async fn me(&self, scope: &TenantScope, visitor_id: &str) -> Result<Me, CoachingError> {
        let (scope_moved, visitor) = (scope.clone(), visitor_id.to_string());
        let user = self
            .db()
            .read(move |c| c.end_user_of_visitor(&scope_moved, &visitor))
            .await?;
        let Some(user) = user else {
            return Ok(Me::default());
        };
        let now = self.now_for(scope, &user).await?;
        let (scope, user_moved) = (scope.clone(), user.clone());
        let (goals, programs) = self
            .db()
            .read(move |c| {
                let mut goals = Vec::new();
                for goal in c.goals_of(&scope, &user_moved.id)? {
                    if goal.status == "closed" {
                        continue;
                    }
                    let check_ins = c.check_ins(&scope, &goal.id)?;
                    let view = goals::view(goal, check_ins, &user_moved, now);
                    goals.push(MyGoal {
                        title: view.goal.title,
                        metric: view.goal.metric,
                        unit: view.goal.unit,
                        target: view.goal.target,
                        latest_value: view.latest_value,
                        progress: view.progress,
                        current_streak: view.current_streak,
                        status: view.goal.status,
                    });
                }
                let mut programs = Vec::new();
                for enrollment in c.enrollments_of(&scope, &user_moved.id)? {
                    if enrollment.status == "unenrolled" {
                        continue;
                    }
                    let Some(definition) =
                        c.program_version(&scope, &enrollment.program_id, enrollment.version)?
                    else {
                        continue;
                    };
                    let steps = definition
                        .steps
                        .iter()
                        .filter(|s| {
                            !definition.is_branch(&s.key) || enrollment.steps_done.contains(&s.key)
                        })
                        .count();
                    let latest = c.latest_step_sent(&scope, &enrollment.id)?;
                    programs.push(MyProgram {
                        name: definition.name,
                        status: enrollment.status,
                        steps_done: enrollment.steps_done.len(),
                        steps,
                        latest_step_at: latest.as_ref().map(|(_, at)| *at),
                        latest_step: latest.map(|(text, _)| text),
                    });
                }
                Ok::<_, crate::db::DbError>((goals, programs))
            })
            .await?;
        Ok(Me {
            consent: (user.consent_at.is_some())
                .then_some(user.consent && user.opted_out_at.is_none()),
            opted_out: user.opted_out_at.is_some(),
            goals,
            programs,
        })
    }

    /// The end user's answer to "May I check in with you?".
    pub async fn set_consent(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        consent: bool,
    ) -> Result<EndUser, CoachingError> {
        let mut user = self.end_user_of_visitor(scope, visitor_id).await?;
        let now = self.now_for(scope, &user).await?;
        user.consent = consent;
        user.consent_at = Some(now);
        user.consent_channel = Some("web".into());
        if consent {
            // Saying yes again after STOP is opting back in.
            user.opted_out_at = None;
        }
        self.save_end_user(scope, &user).await?;
        Ok(user)
    }

    /// Ensures a tenant's rule sweeps run on real time and on each of its test clocks.
    pub(super) async fn ensure_rule_sweeps(
        &self,
        scope: &TenantScope,
    ) -> Result<(), CoachingError> {
        let scope_moved = scope.clone();
        let (any_rule, clocks) = self
            .db()
            .call(move |c| {
                let rules = c.rules(&scope_moved)?;
                let mut clocks = Vec::new();
                for clock in c.clocks_of(&scope_moved)? {
                    if let Some(now) = c.clock_now(&scope_moved, &clock)? {
                        clocks.push((clock, now));
                    }
                }
                Ok::<_, crate::db::DbError>((rules.iter().any(|r| r.enabled), clocks))
            })
            .await?;
        if !any_rule {
            return Ok(());
        }
        let timelines = std::iter::once((None, Utc::now()))
            .chain(clocks.into_iter().map(|(id, now)| (Some(id), now)));
        for (clock, now) in timelines {
            self.jobs()
                .ensure(NewJob {
                    kind: kinds::RULES,
                    tenant_id: Some(scope.tenant_id().to_string()),
                    subject_id: scope.tenant_id().to_string(),
                    payload: serde_json::json!({}),
                    run_at: now,
                    dedupe_key: Some(format!(
                        "rules:{}:{}",
                        scope.tenant_id(),
                        clock.as_deref().unwrap_or("real")
                    )),
                    clock_id: clock,
                })
                .await?;
        }
        Ok(())
    }
}
