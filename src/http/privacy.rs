//! Data-protection routes: exports (one end user, the whole tenant, an end user's own from
//! the chat page with a 24-hour link) and erasure (by an admin, or the end user themselves).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{AdminRole, Authenticated, Client};
use super::chat::Caller;
use super::coaching::visitor_only;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use crate::db::privacy::ExportRecord;
use crate::db::retention::RetentionPolicy;
use crate::privacy::erasure::Erasure;
use crate::privacy::retention::{RetentionRun, RetentionView};
use crate::privacy::{PrivacyError, Requester};

/// Routes of this module; `DELETE /api/v1/end-users/{id}` is registered with the end user's
/// other methods in `coaching::routes` (one path, one method router).
pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/end-users/{id}/export", post(export_end_user))
        .route(
            "/api/v1/end-users/{id}/export/{export_id}",
            get(end_user_export),
        )
        .route("/api/v1/tenant/export", post(export_tenant))
        .route("/api/v1/tenant/export/{id}", get(tenant_export))
        .route("/api/v1/public/me/export", post(export_myself))
        .route("/api/v1/public/me/data", delete(erase_myself))
        .route("/api/v1/public/exports/{token}", get(download_by_link))
        .route("/api/v1/retention", get(get_retention).put(set_retention))
        .route("/api/v1/retention/run", post(run_retention))
}

impl From<PrivacyError> for ApiError {
    fn from(error: PrivacyError) -> ApiError {
        let message = error.to_string();
        match error {
            PrivacyError::NotFound(_) => ApiError::not_found(message),
            PrivacyError::Expired => ApiError::new(ErrorCode::ExportExpired, message),
            PrivacyError::Db(error) => error.into(),
            PrivacyError::Coaching(error) => error.into(),
            PrivacyError::Io(_) => ApiError::new(ErrorCode::Internal, message),
            PrivacyError::Invalid(_) => ApiError::new(ErrorCode::InvalidRequest, message),
        }
    }
}

/// 202 with the export's state while it is written; the ZIP once it is ready.
async fn export_response(state: &AppState, record: ExportRecord) -> Result<Response, ApiError> {
    match record.status.as_str() {
        "ready" => {}
        "failed" => {
            return Err(ApiError::new(
                ErrorCode::ExportFailed,
                format!(
                    "the export failed ({}); ask for a new one",
                    record.error.as_deref().unwrap_or("no reason recorded")
                ),
            ));
        }
        _ => return Ok((StatusCode::ACCEPTED, Json(record)).into_response()),
    }
    let path = state.privacy.ready_file(&record)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::from(PrivacyError::Expired))?;
    let mut response =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    let name = match &record.end_user_id {
        Some(_) => format!("attachment; filename=\"export-{}.zip\"", record.id),
        None => format!("attachment; filename=\"tenant-export-{}.zip\"", record.id),
    };
    if let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(bytes) = record.bytes {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(post, path = "/api/v1/end-users/{id}/export", tag = "privacy",
    params(("id" = String, Path, description = "End user id")),
    responses((status = 202, description = "The export was started; poll its URL", body = ExportRecord),
              (status = 404, description = "No such end user", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn export_end_user(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ExportRecord>), ApiError> {
    let requester = Requester::Staff(auth.principal.clone());
    let record = state
        .privacy
        .start_export(auth.scope(), Some(&id), &requester)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

#[utoipa::path(get, path = "/api/v1/end-users/{id}/export/{export_id}", tag = "privacy",
    params(("id" = String, Path, description = "End user id"),
           ("export_id" = String, Path, description = "Export id")),
    responses((status = 200, description = "The ZIP: profile, conversations (JSON and Markdown), goals and check-ins, enrolments, nudges, consent, identities, README.txt", content_type = "application/zip"),
              (status = 202, description = "Still being written", body = ExportRecord),
              (status = 404, description = "No such export of this end user", body = ErrorBody),
              (status = 409, description = "The export failed (`export_failed`)", body = ErrorBody),
              (status = 410, description = "The export expired (`export_expired`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn end_user_export(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Path((id, export_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let record = state
        .privacy
        .export(auth.scope(), &export_id, Some(&id))
        .await?;
    export_response(&state, record).await
}

#[utoipa::path(post, path = "/api/v1/tenant/export", tag = "privacy",
    responses((status = 202, description = "An export of everything the tenant holds was started", body = ExportRecord)),
    security(("bearer" = [])))]
pub(crate) async fn export_tenant(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
) -> Result<(StatusCode, Json<ExportRecord>), ApiError> {
    let requester = Requester::Staff(auth.principal.clone());
    let record = state
        .privacy
        .start_export(auth.scope(), None, &requester)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

#[utoipa::path(get, path = "/api/v1/tenant/export/{id}", tag = "privacy",
    params(("id" = String, Path, description = "Export id")),
    responses((status = 200, description = "The ZIP: settings, team, documents with their originals, programs, rules, end users and their data, knowledge gaps, the audit log (JSON Lines), README.txt", content_type = "application/zip"),
              (status = 202, description = "Still being written", body = ExportRecord),
              (status = 404, description = "No such export", body = ErrorBody),
              (status = 409, description = "The export failed", body = ErrorBody),
              (status = 410, description = "The export expired", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn tenant_export(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.privacy.export(auth.scope(), &id, None).await?;
    export_response(&state, record).await
}

/// An end user's own export, asked for on the chat page.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OwnExport {
    #[serde(flatten)]
    export: ExportRecord,
    /// Where to download it, for 24 hours (202 while it is written), at `--public-url`.
    download_url: String,
    /// The same, relative to this server (for the chat page and the widget).
    download_path: String,
}

#[utoipa::path(post, path = "/api/v1/public/me/export", tag = "privacy",
    responses((status = 202, description = "The export was started; `download_url` works for 24 hours", body = OwnExport),
              (status = 403, description = "Not an end user (a visitor token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn export_myself(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
) -> Result<(StatusCode, Json<OwnExport>), ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    let (export, secret) = state.privacy.start_own_export(scope, visitor).await?;
    let download_path = format!("/api/v1/public/exports/{secret}");
    let download_url = format!(
        "{}{download_path}",
        state.auth.public_url.trim_end_matches('/')
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(OwnExport {
            export,
            download_url,
            download_path,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/public/exports/{token}", tag = "privacy",
    params(("token" = String, Path, description = "The secret of the link the chat page gave")),
    responses((status = 200, description = "The end user's ZIP", content_type = "application/zip"),
              (status = 202, description = "Still being written", body = ExportRecord),
              (status = 404, description = "No such link", body = ErrorBody),
              (status = 410, description = "The link expired (24 hours)", body = ErrorBody)))]
pub(crate) async fn download_by_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.privacy.export_by_link(&token).await?;
    export_response(&state, record).await
}

#[utoipa::path(delete, path = "/api/v1/end-users/{id}", tag = "privacy",
    params(("id" = String, Path, description = "End user id")),
    responses((status = 200, description = "Erased: what was removed, per kind", body = Erasure),
              (status = 404, description = "No such end user", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn erase_end_user(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Path(id): Path<String>,
) -> Result<Json<Erasure>, ApiError> {
    let requester = Requester::Staff(auth.principal.clone());
    Ok(Json(
        state
            .privacy
            .erase_end_user(auth.scope(), &id, &requester, &context)
            .await?,
    ))
}

/// The end user's "delete my data", confirmed.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EraseConfirmation {
    /// Must be true: everything of theirs is deleted for good.
    confirm: bool,
}

#[utoipa::path(delete, path = "/api/v1/public/me/data", tag = "privacy", request_body = EraseConfirmation,
    responses((status = 200, description = "Everything of theirs was erased; the visitor token no longer works", body = Erasure),
              (status = 400, description = "`confirm` is not true (`confirmation_required`)", body = ErrorBody),
              (status = 403, description = "Not an end user (a visitor token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn erase_myself(
    State(state): State<AppState>,
    Client(context): Client,
    Caller(speaker, _): Caller,
    body: Option<Json<EraseConfirmation>>,
) -> Result<Json<Erasure>, ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    if !body.is_some_and(|Json(b)| b.confirm) {
        return Err(ApiError::new(
            ErrorCode::ConfirmationRequired,
            "erasing your data cannot be undone: send {\"confirm\": true}",
        ));
    }
    Ok(Json(
        state.privacy.erase_myself(scope, visitor, &context).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/retention", tag = "privacy",
    responses((status = 200, description = "How long the tenant keeps each kind of data, the next run and the last one", body = RetentionView)),
    security(("bearer" = [])))]
pub(crate) async fn get_retention(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<RetentionView>, ApiError> {
    Ok(Json(state.privacy.retention(auth.scope()).await?))
}

#[utoipa::path(put, path = "/api/v1/retention", tag = "privacy", request_body = RetentionPolicy,
    responses((status = 200, description = "The new policy; its first run is queued at once", body = RetentionView),
              (status = 422, description = "A period out of bounds (the audit log: at least 30 days)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set_retention(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Json(policy): Json<RetentionPolicy>,
) -> Result<Json<RetentionView>, ApiError> {
    let requester = Requester::Staff(auth.principal.clone());
    Ok(Json(
        state
            .privacy
            .set_retention(auth.scope(), policy, &requester, &context)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/retention/run", tag = "privacy",
    responses((status = 200, description = "The policy was applied now: what it removed", body = RetentionRun)),
    security(("bearer" = [])))]
pub(crate) async fn run_retention(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
) -> Result<Json<RetentionRun>, ApiError> {
    Ok(Json(
        state
            .privacy
            .apply_retention(auth.scope(), chrono::Utc::now(), &context)
            .await?,
    ))
}
