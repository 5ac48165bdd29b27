//! The OpenAPI document (`/api/openapi.json`), generated from the route annotations, and the
//! interactive docs page (`/docs`, RapiDoc served from the embedded assets).
//!
//! Every new route gets a `#[utoipa::path]` annotation and a line in `paths(...)` below; the
//! test `the_openapi_document_lists_every_route` checks the routes it knows about.

use axum::Json;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{
    admin, auth, channels, chat, coaching, health, insights, knowledge, metrics, mfa, openai,
    privacy, push, realtime,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Compañero API",
        description = "Self-hosted AI coaching. Every error body is `{\"error\": {\"code\", \"message\"}}`; \
                       clients match on `code`. Authenticate with `Authorization: Bearer <access token or API key>`."
    ),
    paths(
        health::healthz,
        health::readyz,
        metrics::render,
        auth::instance,
        admin::update_instance,
        admin::suspend_tenant,
        admin::resume_tenant,
        admin::delete_tenant,
        admin::change_tenant,
        admin::list_models,
        admin::pull_model,
        auth::register,
        auth::login,
        auth::refresh,
        auth::logout,
        auth::me,
        auth::change_password,
        auth::request_reset,
        auth::confirm_reset,
        auth::list_api_keys,
        auth::create_api_key,
        auth::revoke_api_key,
        auth::list_team,
        auth::invite,
        auth::revoke_invitation,
        auth::member_reset_link,
        auth::change_role,
        auth::remove_member,
        auth::get_tenant,
        auth::update_tenant,
        auth::list_tenants,
        auth::tenant_audit_log,
        auth::instance_audit_log,
        knowledge::upload,
        knowledge::list,
        knowledge::get_document,
        knowledge::update,
        knowledge::delete,
        knowledge::original,
        knowledge::reingest,
        knowledge::collections,
        knowledge::search,
        chat::get_coach,
        chat::update_coach,
        chat::create_visitor,
        chat::create_conversation,
        chat::list_messages,
        chat::send_message,
        insights::knowledge_gaps,
        insights::gap_groups,
        insights::resolve_gaps,
        insights::analytics_report,
        coaching::list_end_users,
        coaching::create_end_user,
        coaching::get_end_user,
        coaching::update_end_user,
        coaching::end_user_session,
        coaching::create_goal,
        coaching::get_goal,
        coaching::check_in,
        coaching::list_programs,
        coaching::create_program,
        coaching::get_program,
        coaching::update_program,
        coaching::publish_program,
        coaching::enroll,
        coaching::change_enrollment,
        coaching::list_rules,
        coaching::create_rule,
        coaching::update_rule,
        coaching::delete_rule,
        coaching::list_nudges,
        coaching::outcomes,
        coaching::rule_occurrences,
        coaching::create_test_clock,
        coaching::get_test_clock,
        coaching::advance_test_clock,
        coaching::about_me,
        coaching::give_consent,
        coaching::enroll_myself,
        channels::list_channels,
        channels::get_telegram,
        channels::connect_telegram,
        channels::disconnect_telegram,
        channels::telegram_webhook,
        channels::get_whatsapp,
        channels::connect_whatsapp,
        channels::disconnect_whatsapp,
        channels::whatsapp_handshake,
        channels::whatsapp_webhook,
        push::push_status,
        push::subscribe,
        push::unsubscribe,
        chat::public_coach,
        chat::get_conversation,
        chat::typing,
        chat::receipt,
        chat::request_person,
        chat::take_over,
        chat::hand_back,
        chat::inbox,
        realtime::websocket,
        realtime::events,
        openai::list_models,
        openai::chat_completions,
        openai::embeddings,
        privacy::export_end_user,
        privacy::end_user_export,
        privacy::export_tenant,
        privacy::tenant_export,
        privacy::export_myself,
        privacy::download_by_link,
        privacy::erase_end_user,
        privacy::erase_myself,
        privacy::get_retention,
        mfa::status,
        mfa::disable,
        mfa::begin_enrollment,
        mfa::confirm_enrollment,
        mfa::new_recovery_codes,
        mfa::second_step,
        mfa::enrollment_at_sign_in,
        mfa::require_for_tenant,
        mfa::require_for_instance,
        privacy::set_retention,
        privacy::run_retention,
    ),
    // Types used only in query strings are not collected from the paths.
    components(schemas(crate::chat::conversations::InboxFilter)),
    modifiers(&BearerScheme, &CommonResponses),
    tags(
        (name = "accounts", description = "Registration, sign-in, tokens and passwords"),
        (name = "team", description = "Members, roles and invitations of a tenant"),
        (name = "api keys", description = "Keys for server-to-server use"),
        (name = "chat", description = "The coach, visitors, conversations and knowledge gaps"),
        (name = "knowledge", description = "Documents the coach answers from, and search over them"),
        (name = "audit", description = "Who did what, when and from where"),
        (name = "channels", description = "Telegram and WhatsApp: connecting them, each channel's state, the platforms' webhooks"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "privacy", description = "Data protection: exports (one end user, the whole tenant) and erasure"),
        (name = "openai", description = "The OpenAI-compatible API (`/v1`, docs/openai-api.md): `coach` and the chat model, embeddings; errors in OpenAI's envelope"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from /api/v1/auth/login, or an API key (cmp_...)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The refusals every route of a kind can give, added where an operation does not list them
/// itself: the extractors refuse the same way on every route (credentials, a body that is not
/// JSON or does not fit, a bad query or path parameter), so they are listed once here and the
/// document stays true to what the server answers (`scripts/api-schema-test` checks it).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            // The OpenAI-compatible API answers in OpenAI's error envelope and lists its own.
            if path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                add_common_responses(operation);
            }
        }
    }
}

fn add_common_responses(operation: &mut Operation) {
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|body| match body {
            RefOr::T(body) => body.content.contains_key("application/json"),
            RefOr::Ref(_) => true,
        });
    let parameters = operation.parameters.iter().flatten().any(|p| {
        matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Path))
    });
    let mut common = Vec::new();
    if secured {
        common.push(("401", "Missing or invalid credentials"));
    }
    if json_body {
        common.push(("400", "The body is not valid JSON"));
        common.push((
            "415",
            "The body is not JSON: send `Content-Type: application/json`",
        ));
        common.push((
            "422",
            "A field of the body is missing or has the wrong type",
        ));
    }
    if parameters {
        common.push(("400", "A query or path parameter is not valid"));
    }
    for (status, description) in common {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                        )
                        .build(),
                )
            });
    }
}

pub async fn document() -> impl IntoResponse {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    ([(header::CACHE_CONTROL, "no-cache")], Json(doc))
}

pub async fn docs_page() -> impl IntoResponse {
    Html(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Compañero API</title><link rel=\"icon\" href=\"/favicon.svg\">\
         <script type=\"module\" src=\"/docs/rapidoc-min.js\"></script></head>\
         <body style=\"margin:0\"><rapi-doc spec-url=\"/api/openapi.json\" render-style=\"read\" \
         theme=\"light\" primary-color=\"#0f766e\" show-header=\"false\" allow-try=\"true\" \
         allow-server-selection=\"false\"></rapi-doc></body></html>",
    )
}
