//! What the coach could not answer (knowledge gaps) and how it is doing (analytics).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Authenticated, CoachRole};
use super::error::{ApiError, ErrorBody};
use super::route_table::Routes;
use crate::chat::ChatError;
use crate::chat::analytics::{self, Analytics};
use crate::chat::gaps::{self, GapGroup, KnowledgeGap};

pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/knowledge-gaps", get(knowledge_gaps))
        .route("/api/v1/knowledge-gaps/groups", get(gap_groups))
        .route("/api/v1/knowledge-gaps/resolve", post(resolve_gaps))
        .route("/api/v1/analytics", get(analytics_report))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct GapQuery {
    /// Most recent first, 1 to 500 [default: 100].
    limit: Option<u32>,
    /// Include gaps the team already answered [default: false].
    #[serde(default)]
    include_resolved: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct GapList {
    gaps: Vec<KnowledgeGap>,
}

#[utoipa::path(get, path = "/api/v1/knowledge-gaps", tag = "chat", params(GapQuery),
    responses(
        (status = 200, description = "Questions the coach could not answer from the knowledge base", body = GapList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn knowledge_gaps(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<GapQuery>,
) -> Result<Json<GapList>, ApiError> {
    let scope = auth.scope().clone();
    let limit = query.limit.unwrap_or(100);
    let gaps = state
        .db
        .call(move |c| {
            gaps::list(c, &scope, limit, query.include_resolved).map_err(ChatError::from)
        })
        .await?;
    Ok(Json(GapList { gaps }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct GapGroups {
    groups: Vec<GapGroup>,
}

#[utoipa::path(get, path = "/api/v1/knowledge-gaps/groups", tag = "chat",
    responses(
        (status = 200, description = "Open gaps grouped by similar meaning, the most asked first", body = GapGroups),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn gap_groups(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<GapGroups>, ApiError> {
    let groups = state.chat.gap_groups(auth.scope(), 500).await?;
    Ok(Json(GapGroups { groups }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ResolveGaps {
    gap_ids: Vec<String>,
    /// The document that now answers them (for example one written from the dashboard).
    document_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Resolved {
    resolved: usize,
}

#[utoipa::path(post, path = "/api/v1/knowledge-gaps/resolve", tag = "chat", request_body = ResolveGaps,
    responses(
        (status = 200, description = "How many open gaps were marked answered (others' ids are ignored)", body = Resolved),
        (status = 403, description = "Needs the coach role or above", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn resolve_gaps(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Json(input): Json<ResolveGaps>,
) -> Result<Json<Resolved>, ApiError> {
    let scope = auth.scope().clone();
    let resolved = state
        .db
        .call(move |c| {
            gaps::resolve(c, &scope, &input.gap_ids, input.document_id.as_deref())
                .map_err(ChatError::from)
        })
        .await?;
    Ok(Json(Resolved { resolved }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct AnalyticsQuery {
    /// First day, `YYYY-MM-DD` [default: 29 days before `to`].
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` [default: today, UTC].
    to: Option<String>,
    /// `json` (default) or `csv` (one row per day).
    format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/analytics", tag = "chat", params(AnalyticsQuery),
    responses(
        (status = 200, description = "Per day and in total: conversations, active end users, questions, answered and fallback answers, confidence, handoffs; top questions; questions per hour (UTC)", body = Analytics),
        (status = 422, description = "A date is not YYYY-MM-DD, or from is after to", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn analytics_report(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<AnalyticsQuery>,
) -> Result<Response, ApiError> {
    let scope = auth.scope().clone();
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ChatError::Invalid(format!("format is json or csv, not '{other}'")).into());
        }
    };
    let report = state
        .db
        .read(move |c| analytics::compute(c, &scope, query.from.as_deref(), query.to.as_deref()))
        .await?;
    if csv {
        let filename = format!(
            "attachment; filename=\"analytics-{}-{}.csv\"",
            report.from, report.to
        );
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, filename),
            ],
            analytics::csv(&report),
        )
            .into_response());
    }
    Ok(Json(report).into_response())
}
