//! Coaching routes: end users, goals and check-ins, programs and enrolments, nudge rules and
//! nudges, outcomes, test clocks, and the end user's own consent and self-enrolment.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post, put};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Authenticated, CoachRole};
use super::chat::Caller;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use crate::auth::{Role, TenantScope};
use crate::chat::conversations::Speaker;
use crate::coaching::CoachingError;
use crate::coaching::analytics::Outcomes;
use crate::coaching::goals::{CheckInInput, GoalInput, GoalView, parse_value};
use crate::coaching::model::{EndUser, Enrollment, Nudge, NudgeRule, Program, ProgramDefinition};
use crate::coaching::people::{EndUserUpdate, Me, NewEndUser, Profile, TestClock};
use crate::coaching::programs::{EnrollmentChange, ProgramSaved};
use crate::coaching::rules::RuleInput;
use crate::db::coaching::EndUserFilter;

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/api/v1/end-users",
            get(list_end_users).post(create_end_user),
        )
        .route(
            "/api/v1/end-users/{id}",
            get(get_end_user)
                .patch(update_end_user)
                .delete(super::privacy::erase_end_user),
        )
        .route("/api/v1/end-users/{id}/session", post(end_user_session))
        .route("/api/v1/end-users/{id}/goals", post(create_goal))
        .route("/api/v1/goals/{id}", get(get_goal))
        .route("/api/v1/goals/{id}/check-ins", post(check_in))
        .route("/api/v1/programs", get(list_programs).post(create_program))
        .route(
            "/api/v1/programs/{id}",
            get(get_program).put(update_program),
        )
        .route("/api/v1/programs/{id}/publish", post(publish_program))
        .route("/api/v1/programs/{id}/enrollments", post(enroll))
        .route("/api/v1/enrollments/{id}", patch(change_enrollment))
        .route("/api/v1/nudge-rules", get(list_rules).post(create_rule))
        .route(
            "/api/v1/nudge-rules/{id}",
            put(update_rule).delete(delete_rule),
        )
        .route("/api/v1/nudge-rules/occurrences", get(rule_occurrences))
        .route("/api/v1/nudges", get(list_nudges))
        .route("/api/v1/analytics/outcomes", get(outcomes))
        .route("/api/v1/test-clocks", post(create_test_clock))
        .route("/api/v1/test-clocks/{id}", get(get_test_clock))
        .route("/api/v1/test-clocks/{id}/advance", post(advance_test_clock))
        .route("/api/v1/public/me", get(about_me))
        .route("/api/v1/public/me/consent", post(give_consent))
        .route("/api/v1/public/me/enrollments", post(enroll_myself))
}

impl From<CoachingError> for ApiError {
    fn from(error: CoachingError) -> ApiError {
        let message = error.to_string();
        match error {
            CoachingError::NotFound(message) => ApiError::not_found(message),
            CoachingError::InvalidSchedule(_) => ApiError::new(ErrorCode::InvalidSchedule, message),
            CoachingError::InvalidProgram(_) => ApiError::new(ErrorCode::InvalidProgram, message),
            CoachingError::Invalid(_) => ApiError::new(ErrorCode::InvalidField, message),
            CoachingError::OptedOut(_) => ApiError::new(ErrorCode::OptedOut, message),
            CoachingError::AlreadyEnrolled(_) => ApiError::new(ErrorCode::AlreadyEnrolled, message),
            CoachingError::Conflict(_) => ApiError::new(ErrorCode::Conflict, message),
            CoachingError::Db(error) => error.into(),
        }
    }
}

/// The end user behind a visitor token; staff are refused (these routes are the end user's).
pub(crate) fn visitor_only(speaker: &Speaker) -> Result<(&TenantScope, &str), ApiError> {
    match speaker {
        Speaker::Visitor { scope, visitor_id } => Ok((scope, visitor_id)),
        Speaker::Staff { .. } => Err(ApiError::new(
            ErrorCode::Forbidden,
            "this route is for end users (a visitor token)",
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct EndUserQuery {
    tag: Option<String>,
    program_id: Option<String>,
    /// `active`: wrote in the last 7 days; `inactive`: did not.
    activity: Option<String>,
    /// Part of the name or email.
    q: Option<String>,
    /// 1 to 500 [default: 50].
    limit: Option<u32>,
    #[serde(default)]
    offset: u32,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EndUserList {
    end_users: Vec<EndUser>,
    total: i64,
}

#[utoipa::path(get, path = "/api/v1/end-users", tag = "coaching", params(EndUserQuery),
    responses((status = 200, description = "End users, most recently active first", body = EndUserList),
              (status = 400, description = "A bad filter", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_end_users(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<EndUserQuery>,
) -> Result<Json<EndUserList>, ApiError> {
    let week_ago = Utc::now() - chrono::Duration::days(7);
    let (active_since, inactive_since) = match query.activity.as_deref() {
        None => (None, None),
        Some("active") => (Some(week_ago), None),
        Some("inactive") => (None, Some(week_ago)),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "activity: use active or inactive",
            ));
        }
    };
    let filter = EndUserFilter {
        tag: query.tag,
        program_id: query.program_id,
        active_since,
        inactive_since,
        search: query
            .q
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty()),
        limit: query.limit.unwrap_or(50).clamp(1, 500),
        offset: query.offset,
    };
    let (end_users, total) = state.coaching.end_users(auth.scope(), filter).await?;
    Ok(Json(EndUserList { end_users, total }))
}

#[utoipa::path(post, path = "/api/v1/end-users", tag = "coaching", request_body = NewEndUser,
    responses((status = 201, description = "The end user (a test end user with `test_clock_id`)", body = EndUser),
              (status = 400, description = "A bad time zone (`invalid_schedule`) or field", body = ErrorBody),
              (status = 404, description = "No such test clock", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_end_user(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Json(input): Json<NewEndUser>,
) -> Result<(StatusCode, Json<EndUser>), ApiError> {
    let user = state.coaching.create_end_user(auth.scope(), input).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(get, path = "/api/v1/end-users/{id}", tag = "coaching",
    params(("id" = String, Path, description = "End user id")),
    responses((status = 200, description = "Profile, goals, enrolments, recent nudges and conversations", body = Profile),
              (status = 404, description = "No such end user", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_end_user(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(state.coaching.profile(auth.scope(), &id).await?))
}

#[utoipa::path(patch, path = "/api/v1/end-users/{id}", tag = "coaching", request_body = EndUserUpdate,
    params(("id" = String, Path, description = "End user id")),
    responses((status = 200, description = "The end user", body = EndUser),
              (status = 400, description = "A bad time zone or field", body = ErrorBody),
              (status = 404, description = "No such end user", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_end_user(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(change): Json<EndUserUpdate>,
) -> Result<Json<EndUser>, ApiError> {
    Ok(Json(
        state
            .coaching
            .update_end_user(auth.scope(), &id, change)
            .await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TestEndUserSession)]
pub(crate) struct Session {
    /// A visitor token (`vis_...`) that acts as the test end user on the ordinary routes.
    token: String,
}

#[utoipa::path(post, path = "/api/v1/end-users/{id}/session", tag = "coaching",
    params(("id" = String, Path, description = "A test end user's id")),
    responses((status = 200, description = "A visitor token for the test end user", body = Session),
              (status = 400, description = "Not a test end user", body = ErrorBody),
              (status = 404, description = "No such end user", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn end_user_session(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
) -> Result<Json<Session>, ApiError> {
    let token = state.coaching.session(auth.scope(), &id).await?;
    Ok(Json(Session { token }))
}

#[utoipa::path(post, path = "/api/v1/end-users/{id}/goals", tag = "coaching", request_body = GoalInput,
    params(("id" = String, Path, description = "End user id")),
    responses((status = 201, description = "The goal", body = GoalView),
              (status = 400, description = "A bad schedule (`invalid_schedule`) or field", body = ErrorBody),
              (status = 404, description = "No such end user", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_goal(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(input): Json<GoalInput>,
) -> Result<(StatusCode, Json<GoalView>), ApiError> {
    let goal = state.coaching.create_goal(auth.scope(), &id, input).await?;
    Ok((StatusCode::CREATED, Json(goal)))
}

/// Staff of any role read; the end user reads and checks in on their own goals.
fn goal_reader(speaker: &Speaker) -> (&TenantScope, Option<&str>) {
    match speaker {
        Speaker::Visitor { scope, visitor_id } => (scope, Some(visitor_id.as_str())),
        Speaker::Staff { scope, .. } => (scope, None),
    }
}

#[utoipa::path(get, path = "/api/v1/goals/{id}", tag = "coaching",
    params(("id" = String, Path, description = "Goal id")),
    responses((status = 200, description = "The goal with check-ins, progress and streaks", body = GoalView),
              (status = 404, description = "No such goal for this caller", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_goal(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<GoalView>, ApiError> {
    let (scope, visitor) = goal_reader(&speaker);
    Ok(Json(state.coaching.goal(scope, &id, visitor).await?))
}

#[utoipa::path(post, path = "/api/v1/goals/{id}/check-ins", tag = "coaching", request_body = CheckInInput,
    params(("id" = String, Path, description = "Goal id")),
    responses((status = 201, description = "Recorded; the goal as it stands now", body = GoalView),
              (status = 400, description = "The value is not a number", body = ErrorBody),
              (status = 404, description = "No such goal for this caller", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn check_in(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
    Json(input): Json<CheckInInput>,
) -> Result<(StatusCode, Json<GoalView>), ApiError> {
    if let Speaker::Staff { role, .. } = &speaker
        && *role < Role::Coach
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the analyst role only reads",
        ));
    }
    let value = parse_value(&input.value)?;
    let (scope, visitor) = goal_reader(&speaker);
    let source = if visitor.is_some() {
        "end_user"
    } else {
        "staff"
    };
    let goal = state
        .coaching
        .check_in(scope, &id, visitor, value, input.note, source)
        .await?;
    Ok((StatusCode::CREATED, Json(goal)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ProgramList {
    programs: Vec<Program>,
}

#[utoipa::path(get, path = "/api/v1/programs", tag = "coaching",
    responses((status = 200, description = "Programs, newest version of each", body = ProgramList)),
    security(("bearer" = [])))]
pub(crate) async fn list_programs(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<ProgramList>, ApiError> {
    let programs = state.coaching.programs(auth.scope()).await?;
    Ok(Json(ProgramList { programs }))
}

#[utoipa::path(post, path = "/api/v1/programs", tag = "coaching", request_body = ProgramDefinition,
    responses((status = 201, description = "Saved as version 1, a draft", body = ProgramSaved),
              (status = 400, description = "`invalid_program` or `invalid_schedule`, naming the field", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_program(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Json(definition): Json<ProgramDefinition>,
) -> Result<(StatusCode, Json<ProgramSaved>), ApiError> {
    let saved = state
        .coaching
        .create_program(auth.scope(), definition)
        .await?;
    Ok((StatusCode::CREATED, Json(saved)))
}

#[utoipa::path(get, path = "/api/v1/programs/{id}", tag = "coaching",
    params(("id" = String, Path, description = "Program id")),
    responses((status = 200, description = "The newest version", body = Program),
              (status = 404, description = "No such program", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_program(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Program>, ApiError> {
    Ok(Json(state.coaching.program(auth.scope(), &id).await?))
}

#[utoipa::path(put, path = "/api/v1/programs/{id}", tag = "coaching", request_body = ProgramDefinition,
    params(("id" = String, Path, description = "Program id")),
    responses((status = 200, description = "Saved as a new version (a draft until published)", body = ProgramSaved),
              (status = 400, description = "`invalid_program` or `invalid_schedule`", body = ErrorBody),
              (status = 404, description = "No such program", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_program(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(definition): Json<ProgramDefinition>,
) -> Result<Json<ProgramSaved>, ApiError> {
    Ok(Json(
        state
            .coaching
            .update_program(auth.scope(), &id, definition)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/programs/{id}/publish", tag = "coaching",
    params(("id" = String, Path, description = "Program id")),
    responses((status = 200, description = "The newest version is published; people enrolled before stay on theirs", body = ProgramSaved),
              (status = 404, description = "No such program", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn publish_program(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
) -> Result<Json<ProgramSaved>, ApiError> {
    Ok(Json(
        state.coaching.publish_program(auth.scope(), &id).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollInput {
    end_user_id: String,
}

#[utoipa::path(post, path = "/api/v1/programs/{id}/enrollments", tag = "coaching", request_body = EnrollInput,
    params(("id" = String, Path, description = "Program id")),
    responses((status = 201, description = "Enrolled in the published version; the program's goals were created", body = Enrollment),
              (status = 404, description = "No such program or end user", body = ErrorBody),
              (status = 409, description = "`opted_out`, `already_enrolled`, or the program is not published", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn enroll(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(input): Json<EnrollInput>,
) -> Result<(StatusCode, Json<Enrollment>), ApiError> {
    let enrollment = state
        .coaching
        .enroll(auth.scope(), &id, &input.end_user_id)
        .await?;
    Ok((StatusCode::CREATED, Json(enrollment)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollmentPatch {
    /// `paused`, `active` (resume) or `unenrolled`.
    status: EnrollmentChange,
}

#[utoipa::path(patch, path = "/api/v1/enrollments/{id}", tag = "coaching", request_body = EnrollmentPatch,
    params(("id" = String, Path, description = "Enrollment id")),
    responses((status = 200, description = "The enrolment", body = Enrollment),
              (status = 404, description = "No such enrolment", body = ErrorBody),
              (status = 409, description = "It is completed or ended already", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn change_enrollment(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(input): Json<EnrollmentPatch>,
) -> Result<Json<Enrollment>, ApiError> {
    Ok(Json(
        state
            .coaching
            .change_enrollment(auth.scope(), &id, input.status)
            .await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RuleList {
    nudge_rules: Vec<NudgeRule>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct OccurrenceQuery {
    /// An RFC 5545 rule, like `FREQ=WEEKLY;BYDAY=MO,TH`.
    rrule: String,
    /// `HH:MM`, the person's local time.
    at: String,
    /// The IANA zone to show them in [default: UTC].
    time_zone: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Occurrences {
    /// The next five, as instants.
    occurrences: Vec<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/api/v1/nudge-rules/occurrences", tag = "coaching", params(OccurrenceQuery),
    responses((status = 200, description = "When a schedule fires next, from now", body = Occurrences),
              (status = 400, description = "`invalid_schedule`, naming the field", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn rule_occurrences(
    State(state): State<AppState>,
    _auth: Authenticated,
    Query(query): Query<OccurrenceQuery>,
) -> Result<Json<Occurrences>, ApiError> {
    let zone = query.time_zone.as_deref().unwrap_or("UTC");
    Ok(Json(Occurrences {
        occurrences: state
            .coaching
            .occurrences(&query.rrule, &query.at, zone, 5)?,
    }))
}

#[utoipa::path(get, path = "/api/v1/nudge-rules", tag = "coaching",
    responses((status = 200, description = "The tenant's nudge rules", body = RuleList)),
    security(("bearer" = [])))]
pub(crate) async fn list_rules(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<RuleList>, ApiError> {
    let nudge_rules = state.coaching.rules(auth.scope()).await?;
    Ok(Json(RuleList { nudge_rules }))
}

#[utoipa::path(post, path = "/api/v1/nudge-rules", tag = "coaching", request_body = RuleInput,
    responses((status = 201, description = "The rule", body = NudgeRule),
              (status = 400, description = "A bad rrule or time (`invalid_schedule`) or field", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_rule(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Json(input): Json<RuleInput>,
) -> Result<(StatusCode, Json<NudgeRule>), ApiError> {
    let rule = state.coaching.create_rule(auth.scope(), input).await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

#[utoipa::path(put, path = "/api/v1/nudge-rules/{id}", tag = "coaching", request_body = RuleInput,
    params(("id" = String, Path, description = "Rule id")),
    responses((status = 200, description = "The rule", body = NudgeRule),
              (status = 400, description = "A bad schedule or field", body = ErrorBody),
              (status = 404, description = "No such rule", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_rule(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(input): Json<RuleInput>,
) -> Result<Json<NudgeRule>, ApiError> {
    Ok(Json(
        state.coaching.update_rule(auth.scope(), &id, input).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/nudge-rules/{id}", tag = "coaching",
    params(("id" = String, Path, description = "Rule id")),
    responses((status = 204, description = "Deleted; nudges it planned stay in the history"),
              (status = 404, description = "No such rule", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete_rule(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.coaching.delete_rule(auth.scope(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct NudgeQuery {
    end_user_id: Option<String>,
    /// scheduled, deferred, sent, delivered, read, replied, suppressed or failed.
    status: Option<String>,
    /// Newest first, 1 to 10000 [default: 500].
    limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NudgeList {
    nudges: Vec<Nudge>,
}

const NUDGE_STATUSES: [&str; 8] = [
    "scheduled",
    "deferred",
    "sent",
    "delivered",
    "read",
    "replied",
    "suppressed",
    "failed",
];

#[utoipa::path(get, path = "/api/v1/nudges", tag = "coaching", params(NudgeQuery),
    responses((status = 200, description = "Rule nudges, program steps and check-in prompts, newest first", body = NudgeList),
              (status = 400, description = "An unknown status", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_nudges(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<NudgeQuery>,
) -> Result<Json<NudgeList>, ApiError> {
    if let Some(status) = &query.status
        && !NUDGE_STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("status: one of {}", NUDGE_STATUSES.join(", ")),
        ));
    }
    let nudges = state
        .coaching
        .nudges(
            auth.scope(),
            query.end_user_id,
            query.status,
            query.limit.unwrap_or(500).clamp(1, 10_000),
        )
        .await?;
    Ok(Json(NudgeList { nudges }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct OutcomeQuery {
    program_id: String,
}

#[utoipa::path(get, path = "/api/v1/analytics/outcomes", tag = "coaching", params(OutcomeQuery),
    responses((status = 200, description = "A program's outcomes for real end users", body = Outcomes),
              (status = 404, description = "No such program", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn outcomes(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<OutcomeQuery>,
) -> Result<Json<Outcomes>, ApiError> {
    Ok(Json(
        state
            .coaching
            .outcomes(auth.scope(), &query.program_id)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTestClock {
    /// RFC 3339, e.g. `2026-03-01T08:00:00Z` [default: now].
    now: Option<DateTime<Utc>>,
}

#[utoipa::path(post, path = "/api/v1/test-clocks", tag = "coaching", request_body = NewTestClock,
    responses((status = 201, description = "The clock", body = TestClock)),
    security(("bearer" = [])))]
pub(crate) async fn create_test_clock(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Json(input): Json<NewTestClock>,
) -> Result<(StatusCode, Json<TestClock>), ApiError> {
    let clock = state
        .coaching
        .create_test_clock(auth.scope(), input.now.unwrap_or_else(Utc::now))
        .await?;
    Ok((StatusCode::CREATED, Json(clock)))
}

#[utoipa::path(get, path = "/api/v1/test-clocks/{id}", tag = "coaching",
    params(("id" = String, Path, description = "Test clock id")),
    responses((status = 200, description = "The clock", body = TestClock),
              (status = 404, description = "No such clock", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_test_clock(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<TestClock>, ApiError> {
    Ok(Json(state.coaching.test_clock(auth.scope(), &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Advance {
    /// RFC 3339; not before the clock's now.
    to: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/test-clocks/{id}/advance", tag = "coaching", request_body = Advance,
    params(("id" = String, Path, description = "Test clock id")),
    responses((status = 200, description = "Every job due by `to` has run (with the jobs they queued before `to`)", body = TestClock),
              (status = 400, description = "`to` is before the clock's now", body = ErrorBody),
              (status = 404, description = "No such clock", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn advance_test_clock(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(input): Json<Advance>,
) -> Result<Json<TestClock>, ApiError> {
    Ok(Json(
        state
            .coaching
            .advance_clock(auth.scope(), &id, input.to)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/public/me", tag = "coaching",
    responses((status = 200, description = "What the coach knows of the end user: whether they were asked about check-ins, and their answer", body = Me),
              (status = 403, description = "Not an end user (a visitor token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn about_me(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
) -> Result<Json<Me>, ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    Ok(Json(state.coaching.me(scope, visitor).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsentInput {
    /// true: the coach may check in on its own; false: it may not.
    consent: bool,
}

#[utoipa::path(post, path = "/api/v1/public/me/consent", tag = "coaching", request_body = ConsentInput,
    responses((status = 200, description = "The end user's consent as recorded", body = EndUser),
              (status = 403, description = "Not an end user (a visitor token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn give_consent(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Json(input): Json<ConsentInput>,
) -> Result<Json<EndUser>, ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    Ok(Json(
        state
            .coaching
            .set_consent(scope, visitor, input.consent)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelfEnrollment {
    program_id: String,
}

#[utoipa::path(post, path = "/api/v1/public/me/enrollments", tag = "coaching", request_body = SelfEnrollment,
    responses((status = 201, description = "Enrolled (the link `/c/{slug}?program={id}` does this)", body = Enrollment),
              (status = 403, description = "Not an end user", body = ErrorBody),
              (status = 404, description = "No such program", body = ErrorBody),
              (status = 409, description = "`already_enrolled`, `opted_out`, or not published", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn enroll_myself(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Json(input): Json<SelfEnrollment>,
) -> Result<(StatusCode, Json<Enrollment>), ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    let user = state.coaching.end_user_of_visitor(scope, visitor).await?;
    let enrollment = state
        .coaching
        .enroll(scope, &input.program_id, &user.id)
        .await?;
    Ok((StatusCode::CREATED, Json(enrollment)))
}
