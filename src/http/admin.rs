//! The instance owner's controls: the sign-up policy, creators' storage quotas, and suspending
//! or deleting creators.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{patch, post};
use serde::Deserialize;

use super::AppState;
use super::auth::{Authenticated, Client, InstanceInfo, Owner, instance};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use crate::auth::AuthError;
use crate::auth::accounts::SignupPolicy;
use crate::auth::instance as settings;
use crate::inference::downloads::ModelListing;
use crate::knowledge::quota::{self, StorageUse};

pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/admin/instance", patch(update_instance))
        .route("/api/v1/admin/tenants/{id}/suspend", post(suspend_tenant))
        .route("/api/v1/admin/tenants/{id}/resume", post(resume_tenant))
        .route(
            "/api/v1/admin/tenants/{id}",
            axum::routing::delete(delete_tenant).patch(change_tenant),
        )
        .route("/api/v1/admin/models", axum::routing::get(list_models))
        .route("/api/v1/admin/models/{name}/pull", post(pull_model))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ModelList {
    models: Vec<ModelListing>,
}

#[utoipa::path(get, path = "/api/v1/admin/models", tag = "team",
    responses(
        (status = 200, description = "The catalog: installed or not, and downloads started from here with their progress", body = ModelList),
        (status = 403, description = "The instance owner only", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list_models(
    State(state): State<AppState>,
    _owner: Authenticated<Owner>,
) -> Json<ModelList> {
    let downloads = state.downloads.clone();
    let models = tokio::task::spawn_blocking(move || downloads.list())
        .await
        .unwrap_or_default();
    Json(ModelList { models })
}

#[utoipa::path(post, path = "/api/v1/admin/models/{name}/pull", tag = "team",
    params(("name" = String, Path, description = "Catalog name")),
    responses(
        (status = 202, description = "Downloading in the background; follow it in GET /api/v1/admin/models. The server uses a new default model at its next start."),
        (status = 403, description = "The instance owner only", body = ErrorBody),
        (status = 409, description = "Already installed or downloading", body = ErrorBody),
        (status = 422, description = "Not in the catalog", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn pull_model(
    State(state): State<AppState>,
    _owner: Authenticated<Owner>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    use crate::inference::store::StoreError;
    match state.downloads.pull(&name) {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(StoreError::AlreadyInstalled(name)) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{name} is already installed"),
        )),
        Err(error @ StoreError::Invalid(_))
            if error.to_string().contains("already downloading") =>
        {
            Err(ApiError::new(ErrorCode::Conflict, error.to_string()))
        }
        Err(error) => Err(ApiError::new(ErrorCode::InvalidRequest, error.to_string())),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct InstanceUpdate {
    /// `open`, `invite` or `closed`; stored, it wins over `serve --signup`.
    #[schema(value_type = String)]
    signup: SignupPolicy,
}

#[utoipa::path(patch, path = "/api/v1/admin/instance", tag = "team", request_body = InstanceUpdate,
    responses(
        (status = 200, description = "The instance now", body = InstanceInfo),
        (status = 403, description = "The instance owner only", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn update_instance(
    State(state): State<AppState>,
    Client(context): Client,
    owner: Authenticated<Owner>,
    Json(input): Json<InstanceUpdate>,
) -> Result<Json<InstanceInfo>, ApiError> {
    let principal = owner.principal;
    state
        .db
        .call(move |c| settings::set_signup_policy(c, &principal, input.signup, &context))
        .await?;
    instance(State(state)).await
}

async fn set_suspended(
    state: AppState,
    context: crate::auth::RequestContext,
    owner: Authenticated<Owner>,
    id: String,
    suspended: bool,
) -> Result<StatusCode, ApiError> {
    let principal = owner.principal;
    let tenant = id.clone();
    state
        .db
        .call(move |c| settings::set_suspended(c, &principal, &tenant, suspended, &context))
        .await?;
    // Open connections of the tenant (staff and end users) are closed at once.
    state.auth.accounts.changes().changed(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/admin/tenants/{id}/suspend", tag = "team",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "Suspended: its members cannot sign in (their sessions end), its coach is unreachable"),
        (status = 403, description = "The instance owner only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The owner's own tenant", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn suspend_tenant(
    State(state): State<AppState>,
    Client(context): Client,
    owner: Authenticated<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_suspended(state, context, owner, id, true).await
}

#[utoipa::path(post, path = "/api/v1/admin/tenants/{id}/resume", tag = "team",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "Active again"),
        (status = 403, description = "The instance owner only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The owner's own tenant", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn resume_tenant(
    State(state): State<AppState>,
    Client(context): Client,
    owner: Authenticated<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_suspended(state, context, owner, id, false).await
}

#[utoipa::path(delete, path = "/api/v1/admin/tenants/{id}", tag = "team",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "Deleted with its documents, conversations, members (who belong nowhere else) and files"),
        (status = 403, description = "The instance owner only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The owner's own tenant", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn delete_tenant(
    State(state): State<AppState>,
    Client(context): Client,
    owner: Authenticated<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = owner.principal;
    let tenant = id.clone();
    state
        .db
        .call(move |c| settings::delete_tenant(c, &principal, &tenant, &context))
        .await?;
    state.auth.accounts.changes().changed(&id);
    state.knowledge.forget_tenant(&id).await?;
    state.privacy.forget_tenant(&id).await?;
    state.privacy.scrub_database().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The owner's change to a tenant. Absent fields stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct TenantChange {
    /// Storage for the tenant's uploaded originals in MB, 0 for unlimited; `null` returns it
    /// to the server's `storage_quota_mb`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    storage_quota_mb: Option<Option<u64>>,
}

/// Distinguishes an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// A tenant's storage as the owner sees it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TenantStorage {
    id: String,
    /// The tenant's own quota in MB (0: unlimited); null when it follows the server's
    /// `storage_quota_mb`.
    storage_quota_mb: Option<u64>,
    #[serde(flatten)]
    storage: StorageUse,
}

#[utoipa::path(patch, path = "/api/v1/admin/tenants/{id}", tag = "team", request_body = TenantChange,
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's quota and storage use now; documents already stored stay, new uploads over the quota are refused with `quota_exceeded`", body = TenantStorage),
        (status = 403, description = "The instance owner only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn change_tenant(
    State(state): State<AppState>,
    Client(context): Client,
    owner: Authenticated<Owner>,
    Path(id): Path<String>,
    Json(change): Json<TenantChange>,
) -> Result<Json<TenantStorage>, ApiError> {
    let principal = owner.principal;
    let default = state.knowledge.settings().storage_quota_bytes;
    let storage = state
        .db
        .call(move |c| {
            if let Some(quota_mb) = change.storage_quota_mb {
                settings::set_storage_quota(c, &principal, &id, quota_mb, &context)?;
            }
            let own: Option<i64> = settings::storage_quota_mb(c, &id)?;
            let storage =
                quota::of_tenant(c, &id, default)?.ok_or(AuthError::NotFound("tenant"))?;
            Ok::<_, AuthError>(TenantStorage {
                id,
                storage_quota_mb: own.map(|mb| mb as u64),
                storage,
            })
        })
        .await?;
    Ok(Json(storage))
}
