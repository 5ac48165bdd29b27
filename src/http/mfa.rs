//! Two-step sign-in routes: a person sets up, checks, re-issues recovery codes for and turns
//! off their own authenticator; a sign-in's second step (and its enrolment, where two-step
//! sign-in is required); an admin requires it of the tenant, the owner of the instance.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use serde::Deserialize;

use super::AppState;
use super::auth::{AdminRole, Authenticated, Client, Owner};
use super::error::{ApiError, ErrorBody};
use super::route_table::Routes;
use crate::auth::accounts::Session;
use crate::auth::audit::AuditEvent;
use crate::auth::mfa::{Code, Enrollment, MfaStatus, RecoveryCodes};
use crate::auth::{AuthError, Credential, Principal, tenant};

pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/auth/mfa", get(status).delete(disable))
        .route("/api/v1/auth/mfa/enrollment", post(begin_enrollment))
        .route(
            "/api/v1/auth/mfa/enrollment/confirm",
            post(confirm_enrollment),
        )
        .route("/api/v1/auth/mfa/recovery-codes", post(new_recovery_codes))
        .route("/api/v1/auth/login/mfa", post(second_step))
        .route(
            "/api/v1/auth/login/mfa/enrollment",
            post(enrollment_at_sign_in),
        )
        .route("/api/v1/tenant/mfa-requirement", put(require_for_tenant))
        .route("/api/v1/admin/mfa-requirement", put(require_for_instance))
}

/// Two-step sign-in belongs to a person: an API key cannot change it.
fn person(principal: &Principal) -> Result<(&str, &str), ApiError> {
    match (&principal.credential, principal.user_id.as_deref()) {
        (Credential::AccessToken { .. }, Some(user)) => Ok((user, principal.label.as_str())),
        _ => Err(AuthError::Forbidden.into()),
    }
}

/// A code from the authenticator app, or one recovery code.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecondFactor {
    /// The 6-digit code the authenticator app shows now.
    #[serde(default)]
    code: Option<String>,
    /// One of the ten recovery codes (each works once).
    #[serde(default)]
    recovery_code: Option<String>,
}

impl SecondFactor {
    fn into_code(self) -> Result<Code, AuthError> {
        Code::from_fields(self.code, self.recovery_code)
    }
}

#[utoipa::path(get, path = "/api/v1/auth/mfa", tag = "accounts",
    responses((status = 200, description = "Whether two-step sign-in is on for the caller, and whether it is required", body = MfaStatus),
              (status = 403, description = "An API key (two-step sign-in belongs to a person)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn status(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<MfaStatus>, ApiError> {
    let (user, _) = person(&auth.principal)?;
    Ok(Json(state.auth.accounts.mfa().status(user).await?))
}

#[utoipa::path(post, path = "/api/v1/auth/mfa/enrollment", tag = "accounts",
    responses((status = 200, description = "A new secret and its QR code, shown once; confirm with a first code", body = Enrollment),
              (status = 409, description = "Two-step sign-in is already on", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn begin_enrollment(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<Enrollment>, ApiError> {
    let (user, email) = person(&auth.principal)?;
    Ok(Json(
        state
            .auth
            .accounts
            .mfa()
            .begin_enrollment(user, email)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FirstCode {
    /// The code the newly set-up authenticator app shows.
    code: String,
}

#[utoipa::path(post, path = "/api/v1/auth/mfa/enrollment/confirm", tag = "accounts", request_body = FirstCode,
    responses((status = 200, description = "Two-step sign-in is on: the ten recovery codes, shown once", body = RecoveryCodes),
              (status = 401, description = "Wrong code (`invalid_mfa_code`)", body = ErrorBody),
              (status = 429, description = "Five wrong codes in a row: locked for 15 minutes", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn confirm_enrollment(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated,
    Json(input): Json<FirstCode>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let (user, email) = person(&auth.principal)?;
    Ok(Json(
        state
            .auth
            .accounts
            .mfa()
            .confirm_enrollment(user, email, &input.code, &context)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/auth/mfa/recovery-codes", tag = "accounts", request_body = SecondFactor,
    responses((status = 200, description = "Ten new recovery codes; the old ones stop working", body = RecoveryCodes),
              (status = 401, description = "Wrong code (`invalid_mfa_code`)", body = ErrorBody),
              (status = 409, description = "Two-step sign-in is off (`mfa_not_enabled`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn new_recovery_codes(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated,
    Json(input): Json<SecondFactor>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let (user, email) = person(&auth.principal)?;
    let code = input.into_code()?;
    Ok(Json(
        state
            .auth
            .accounts
            .mfa()
            .regenerate_recovery_codes(user, email, &code, &context)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/auth/mfa", tag = "accounts", request_body = SecondFactor,
    responses((status = 204, description = "Two-step sign-in is off"),
              (status = 401, description = "Wrong code (`invalid_mfa_code`)", body = ErrorBody),
              (status = 403, description = "Required by the tenant or the instance (`mfa_policy`)", body = ErrorBody),
              (status = 409, description = "It was not on (`mfa_not_enabled`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn disable(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated,
    body: Option<Json<SecondFactor>>,
) -> Result<StatusCode, ApiError> {
    let (user, email) = person(&auth.principal)?;
    let code = body
        .map(|Json(b)| b)
        .unwrap_or(SecondFactor {
            code: None,
            recovery_code: None,
        })
        .into_code()?;
    state
        .auth
        .accounts
        .mfa()
        .disable(user, email, &code, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecondStep {
    /// The `challenge` of the `mfa_required` (or `mfa_enrollment_required`) answer.
    challenge: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/login/mfa", tag = "accounts", request_body = SecondStep,
    responses((status = 200, description = "Signed in (after an enrolment, with the recovery codes)", body = Session),
              (status = 401, description = "Wrong code (`invalid_mfa_code`), or the challenge expired (`mfa_challenge_expired`)", body = ErrorBody),
              (status = 429, description = "Too many attempts, or codes locked for 15 minutes", body = ErrorBody)))]
pub(crate) async fn second_step(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<SecondStep>,
) -> Result<Json<Session>, ApiError> {
    state.auth.limiters.check_auth(context.ip)?;
    let code = Code::from_fields(input.code, input.recovery_code)?;
    Ok(Json(
        state
            .auth
            .accounts
            .login_second_step(&input.challenge, code, &context)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChallengeOnly {
    /// The `challenge` of the `mfa_enrollment_required` answer.
    challenge: String,
}

#[utoipa::path(post, path = "/api/v1/auth/login/mfa/enrollment", tag = "accounts", request_body = ChallengeOnly,
    responses((status = 200, description = "The new authenticator's secret and QR code; finish with POST /api/v1/auth/login/mfa and its first code", body = Enrollment),
              (status = 401, description = "The challenge expired (`mfa_challenge_expired`)", body = ErrorBody),
              (status = 409, description = "Two-step sign-in is already set up for this account", body = ErrorBody),
              (status = 429, description = "Too many attempts from this address", body = ErrorBody)))]
pub(crate) async fn enrollment_at_sign_in(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<ChallengeOnly>,
) -> Result<Json<Enrollment>, ApiError> {
    state.auth.limiters.check_auth(context.ip)?;
    Ok(Json(
        state
            .auth
            .accounts
            .login_enrollment(&input.challenge)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Requirement {
    required: bool,
}

/// Whether two-step sign-in is required, and how many were signed out to set it up.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RequirementChanged {
    required: bool,
    /// Accounts without two-step sign-in, signed out now; they set it up at their next
    /// sign-in.
    signed_out: usize,
}

#[utoipa::path(put, path = "/api/v1/tenant/mfa-requirement", tag = "team", request_body = Requirement,
    responses((status = 200, description = "Required (or not) of every member; members without it are signed out", body = RequirementChanged),
              (status = 403, description = "Admins only, with two-step sign-in on themselves (`mfa_policy`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn require_for_tenant(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Json(input): Json<Requirement>,
) -> Result<Json<RequirementChanged>, ApiError> {
    let (user, _) = person(&auth.principal)?;
    let event = AuditEvent::by(&auth.principal, "tenant.mfa_requirement_changed", &context);
    let signed_out = state
        .auth
        .accounts
        .mfa()
        .set_required(
            user,
            Some(auth.principal.tenant_id()),
            input.required,
            event,
        )
        .await?;
    state
        .auth
        .accounts
        .changes()
        .changed(auth.principal.tenant_id());
    Ok(Json(RequirementChanged {
        required: input.required,
        signed_out: signed_out.len(),
    }))
}

#[utoipa::path(put, path = "/api/v1/admin/mfa-requirement", tag = "team", request_body = Requirement,
    responses((status = 200, description = "Required (or not) of every account on the instance; those without it are signed out", body = RequirementChanged),
              (status = 403, description = "The owner only, with two-step sign-in on themselves (`mfa_policy`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn require_for_instance(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<Owner>,
    Json(input): Json<Requirement>,
) -> Result<Json<RequirementChanged>, ApiError> {
    let (user, _) = person(&auth.principal)?;
    let event = AuditEvent::by(
        &auth.principal,
        "instance.mfa_requirement_changed",
        &context,
    );
    let signed_out = state
        .auth
        .accounts
        .mfa()
        .set_required(user, None, input.required, event)
        .await?;
    if !signed_out.is_empty() {
        let tenants = state
            .db
            .read(|c| tenant::list_all(c).map_err(AuthError::from))
            .await?;
        for tenant in tenants {
            state.auth.accounts.changes().changed(&tenant.id);
        }
    }
    Ok(Json(RequirementChanged {
        required: input.required,
        signed_out: signed_out.len(),
    }))
}
