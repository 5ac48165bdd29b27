//! Channel routes: connecting a Telegram bot, every channel's state, and the webhook Telegram
//! calls. The webhook answers at once; the work happens in jobs (Telegram retries slow calls).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{AdminRole, Authenticated, Client, Member};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use crate::auth::RequestContext;
use crate::auth::audit::{self, AuditEvent};
use crate::channels::whatsapp_account::{WhatsAppInput, WhatsAppStatus};
use crate::channels::{ChannelError, ChannelOverview, TelegramStatus};

pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/channels", get(list_channels))
        .route(
            "/api/v1/channels/telegram",
            get(get_telegram)
                .put(connect_telegram)
                .delete(disconnect_telegram),
        )
        .route(
            "/api/v1/channels/whatsapp",
            get(get_whatsapp)
                .put(connect_whatsapp)
                .delete(disconnect_whatsapp),
        )
        .route("/hooks/telegram/{tenant_id}", post(telegram_webhook))
        .route(
            "/hooks/whatsapp/{tenant_id}",
            get(whatsapp_handshake).post(whatsapp_webhook),
        )
}

impl From<ChannelError> for ApiError {
    fn from(error: ChannelError) -> ApiError {
        let message = error.to_string();
        match error {
            ChannelError::NotFound(_) => ApiError::not_found(message),
            ChannelError::Forbidden(_) => ApiError::new(ErrorCode::Forbidden, message),
            ChannelError::InvalidCredentials(_) => {
                ApiError::new(ErrorCode::PlatformRefusedCredentials, message)
            }
            ChannelError::Invalid(_) => ApiError::new(ErrorCode::InvalidField, message),
            ChannelError::Unreachable(_) => ApiError::new(ErrorCode::PlatformUnavailable, message),
            ChannelError::Db(error) => error.into(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ChannelList {
    channels: Vec<ChannelOverview>,
}

#[utoipa::path(get, path = "/api/v1/channels", tag = "channels",
    responses((status = 200, description = "Each channel's state, last error and figures", body = ChannelList)),
    security(("bearer" = [])))]
pub(crate) async fn list_channels(
    State(state): State<AppState>,
    auth: Authenticated<Member>,
) -> Result<Json<ChannelList>, ApiError> {
    Ok(Json(ChannelList {
        channels: state.channels.overview(auth.scope()).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/channels/telegram", tag = "channels",
    responses((status = 200, description = "The Telegram bot, if one is connected (never its token)", body = TelegramStatus)),
    security(("bearer" = [])))]
pub(crate) async fn get_telegram(
    State(state): State<AppState>,
    auth: Authenticated<Member>,
) -> Result<Json<TelegramStatus>, ApiError> {
    Ok(Json(state.channels.telegram(auth.scope()).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct TelegramInput {
    /// The token @BotFather gave the bot.
    bot_token: String,
}

#[utoipa::path(put, path = "/api/v1/channels/telegram", tag = "channels", request_body = TelegramInput,
    responses((status = 200, description = "Connected: a webhook when the server has an https public URL, else long polling", body = TelegramStatus),
              (status = 400, description = "`invalid_credentials`: Telegram refused the token", body = ErrorBody),
              (status = 502, description = "`platform_unavailable`: Telegram could not be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn connect_telegram(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Client(context): Client,
    Json(input): Json<TelegramInput>,
) -> Result<Json<TelegramStatus>, ApiError> {
    let status = state
        .channels
        .connect_telegram(auth.scope(), &input.bot_token)
        .await?;
    // The audit names the bot and its mode; the token never reaches it.
    let detail = serde_json::json!({ "channel": "telegram", "bot": status.bot_username, "mode": status.mode });
    record(&state, &auth, context, "channel.connected", detail).await?;
    Ok(Json(status))
}

#[utoipa::path(delete, path = "/api/v1/channels/telegram", tag = "channels",
    responses((status = 204, description = "Disconnected: no more updates are taken in or sent"),
              (status = 404, description = "No bot is connected", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn disconnect_telegram(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Client(context): Client,
) -> Result<StatusCode, ApiError> {
    state.channels.disconnect_telegram(auth.scope()).await?;
    let detail = serde_json::json!({ "channel": "telegram" });
    record(&state, &auth, context, "channel.disconnected", detail).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/channels/whatsapp", tag = "channels",
    responses((status = 200, description = "The WhatsApp number, if one is connected, with the callback URL and verify token for Meta's console (never the access token or app secret)", body = WhatsAppStatus)),
    security(("bearer" = [])))]
pub(crate) async fn get_whatsapp(
    State(state): State<AppState>,
    auth: Authenticated<Member>,
) -> Result<Json<WhatsAppStatus>, ApiError> {
    Ok(Json(state.channels.whatsapp(auth.scope()).await?))
}

#[utoipa::path(put, path = "/api/v1/channels/whatsapp", tag = "channels", request_body = WhatsAppInput,
    responses((status = 200, description = "Connected: paste `callback_url` and `verify_token` into Meta's console", body = WhatsAppStatus),
              (status = 400, description = "`invalid_credentials`: the Graph API refused the number id and token; `invalid_field`", body = ErrorBody),
              (status = 502, description = "`platform_unavailable`: the Graph API could not be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn connect_whatsapp(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Client(context): Client,
    Json(input): Json<WhatsAppInput>,
) -> Result<Json<WhatsAppStatus>, ApiError> {
    let status = state
        .channels
        .connect_whatsapp(auth.scope(), &input)
        .await?;
    let detail =
        serde_json::json!({ "channel": "whatsapp", "phone_number_id": status.phone_number_id });
    record(&state, &auth, context, "channel.connected", detail).await?;
    Ok(Json(status))
}

#[utoipa::path(delete, path = "/api/v1/channels/whatsapp", tag = "channels",
    responses((status = 204, description = "Disconnected: events are refused and nothing more is sent"),
              (status = 404, description = "No number is connected", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn disconnect_whatsapp(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Client(context): Client,
) -> Result<StatusCode, ApiError> {
    state.channels.disconnect_whatsapp(auth.scope()).await?;
    let detail = serde_json::json!({ "channel": "whatsapp" });
    record(&state, &auth, context, "channel.disconnected", detail).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct Handshake {
    #[serde(rename = "hub.mode")]
    #[param(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    #[param(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    #[param(rename = "hub.challenge")]
    challenge: Option<String>,
}

#[utoipa::path(get, path = "/hooks/whatsapp/{tenant_id}", tag = "channels",
    params(("tenant_id" = String, Path, description = "The tenant whose number this is"), Handshake),
    responses((status = 200, description = "The challenge, as plain text", body = String, content_type = "text/plain"),
              (status = 403, description = "Not `subscribe`, or a wrong verify token", body = ErrorBody),
              (status = 404, description = "No number is connected for this tenant", body = ErrorBody)))]
pub(crate) async fn whatsapp_handshake(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    Query(query): Query<Handshake>,
) -> Result<String, ApiError> {
    Ok(state
        .channels
        .whatsapp_handshake(
            &tenant_id,
            query.mode.as_deref(),
            query.verify_token.as_deref(),
            query.challenge.as_deref(),
        )
        .await?)
}

#[utoipa::path(post, path = "/hooks/whatsapp/{tenant_id}", tag = "channels",
    params(("tenant_id" = String, Path, description = "The tenant whose number this is"),
           ("X-Hub-Signature-256" = String, Header, description = "sha256=<HMAC-SHA256 of the raw body with the app secret>")),
    request_body = Object,
    responses((status = 200, description = "Taken in (messages once per `wamid`, receipts applied); answered in the background"),
              (status = 403, description = "A missing or wrong signature: nothing is read", body = ErrorBody),
              (status = 404, description = "No number is connected for this tenant", body = ErrorBody)))]
pub(crate) async fn whatsapp_webhook(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    state
        .channels
        .whatsapp_webhook(&tenant_id, signature, &body)
        .await?;
    Ok(StatusCode::OK)
}

async fn record(
    state: &AppState,
    auth: &Authenticated<AdminRole>,
    context: RequestContext,
    action: &'static str,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let principal = auth.principal.clone();
    state
        .db
        .call(move |c| {
            audit::record(
                c,
                &AuditEvent::by(&principal, action, &context).detail(detail),
            )
            .map_err(crate::db::DbError::from)
        })
        .await?;
    Ok(())
}

#[utoipa::path(post, path = "/hooks/telegram/{tenant_id}", tag = "channels",
    params(("tenant_id" = String, Path, description = "The tenant whose bot this is"),
           ("X-Telegram-Bot-Api-Secret-Token" = String, Header, description = "The secret set with the webhook")),
    request_body = Object,
    responses((status = 200, description = "Taken in (once per `update_id`); answered in the background"),
              (status = 403, description = "Wrong secret, or the bot polls: nothing is stored", body = ErrorBody),
              (status = 404, description = "No bot is connected for this tenant", body = ErrorBody)))]
pub(crate) async fn telegram_webhook(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let secret = headers
        .get("x-telegram-bot-api-secret-token")
        .and_then(|v| v.to_str().ok());
    state
        .channels
        .telegram_webhook(&tenant_id, secret, &body)
        .await?;
    Ok(StatusCode::OK)
}
