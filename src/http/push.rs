//! Web Push routes for the end user's browser: the key it subscribes with, and keeping or
//! dropping its subscription. Staff never subscribe here (a visitor token only).

use axum::Json;
use axum::extract::State;
use axum::routing::get;

use super::AppState;
use super::chat::Caller;
use super::coaching::visitor_only;
use super::error::{ApiError, ErrorBody};
use super::route_table::Routes;
use crate::channels::push::{NewPushSubscription, PushStatus};

pub fn routes() -> Routes {
    Routes::new().route(
        "/api/v1/public/me/push",
        get(push_status).put(subscribe).delete(unsubscribe),
    )
}

#[utoipa::path(get, path = "/api/v1/public/me/push", tag = "coaching",
    responses((status = 200, description = "The server's VAPID public key and how many of this visitor's browsers get pushes", body = PushStatus),
              (status = 403, description = "Not an end user (a visitor token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn push_status(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
) -> Result<Json<PushStatus>, ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    Ok(Json(state.channels.push_status(scope, visitor).await?))
}

#[utoipa::path(put, path = "/api/v1/public/me/push", tag = "coaching", request_body = NewPushSubscription,
    responses((status = 200, description = "Subscribed: staff replies, nudges and program steps reach this browser while the page is closed", body = PushStatus),
              (status = 400, description = "Not a push subscription (an https:// endpoint, a P-256 key, a 16-byte auth secret)", body = ErrorBody),
              (status = 403, description = "Not an end user (a visitor token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Json(input): Json<NewPushSubscription>,
) -> Result<Json<PushStatus>, ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    Ok(Json(
        state.channels.subscribe_push(scope, visitor, input).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/public/me/push", tag = "coaching",
    responses((status = 200, description = "No more pushes to this visitor's browsers", body = PushStatus),
              (status = 403, description = "Not an end user (a visitor token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn unsubscribe(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
) -> Result<Json<PushStatus>, ApiError> {
    let (scope, visitor) = visitor_only(&speaker)?;
    Ok(Json(state.channels.unsubscribe_push(scope, visitor).await?))
}
