//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: every component the
//! service needs works, reported one by one so an operator sees what is missing).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use crate::db::DbError;

/// A readiness check that takes longer than this counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\", \"version\"}`")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// One component's state in `/readyz`.
#[derive(Debug, Serialize)]
pub struct ComponentReport {
    pub ready: bool,
    #[serde(flatten)]
    pub detail: Value,
}

/// Readiness: each component (database, chat model, embedder) with its state; 503 names what is
/// missing and how to get it.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Every component is ready"),
    (status = 503, description = "Something is not ready; `components` says what and how to fix it"),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut components = vec![("database", database(&state).await)];
    components.extend(
        state
            .inference
            .readiness()
            .into_iter()
            .map(|(name, ready, detail)| (name, ComponentReport { ready, detail })),
    );
    let ready = components.iter().all(|(_, report)| report.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let components: serde_json::Map<String, Value> = components
        .into_iter()
        .map(|(name, report)| (name.to_string(), json!(report)))
        .collect();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "components": components,
    });
    (status, Json(body))
}

async fn database(state: &AppState) -> ComponentReport {
    let query = state.db.call(|connection| {
        connection
            .query_row("SELECT max(version) FROM schema_migrations", [], |row| {
                row.get::<_, Option<i64>>(0)
            })
            .map_err(DbError::from)
    });
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(version)) => ComponentReport {
            ready: true,
            detail: json!({"schema_version": version.unwrap_or(0)}),
        },
        Ok(Err(error)) => ComponentReport {
            ready: false,
            detail: json!({"error": error.to_string()}),
        },
        Err(_) => ComponentReport {
            ready: false,
            detail: json!({"error": format!("no answer within {CHECK_TIMEOUT:?}")}),
        },
    }
}
