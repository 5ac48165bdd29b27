//! Authentication at the HTTP edge: the [`Authenticated`] extractor (bearer access token or API
//! key, plus the role the route requires: the one mechanism every route uses), the client's IP
//! (from `X-Forwarded-For` only behind a trusted proxy), and the account routes.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, routing::delete, routing::get, routing::post};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::request_id;
use super::route_table::Routes;
use crate::auth::accounts::{Accounts, Invitation, Me, Registration, Session, SignupPolicy};
use crate::auth::audit::{self, AuditFilter, AuditView};
use crate::auth::rate_limit::Limiters;
use crate::auth::{
    AuthError, Credential, Principal, RequestContext, Role, TenantScope, access, api_keys, team,
    tenant,
};
use crate::mail::{invitation_link, reset_link};

/// Authentication state shared by the routes.
#[derive(Clone)]
pub struct AuthState {
    pub accounts: Accounts,
    pub limiters: Limiters,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<IpNet>>,
    pub mailer: crate::mail::Mailer,
    /// Base of links in emails, e.g. `https://coach.example.com`.
    pub public_url: Arc<str>,
}

/// What a route requires of its caller.
pub trait Requirement: Send + Sync + 'static {
    const MINIMUM: Role;
    const OWNER: bool = false;
}

/// Any member of the tenant (analysts included).
pub struct Member;
impl Requirement for Member {
    const MINIMUM: Role = Role::Analyst;
}

/// Coaches and admins.
pub struct CoachRole;
impl Requirement for CoachRole {
    const MINIMUM: Role = Role::Coach;
}

/// The tenant's admins.
pub struct AdminRole;
impl Requirement for AdminRole {
    const MINIMUM: Role = Role::Admin;
}

/// The instance owner.
pub struct Owner;
impl Requirement for Owner {
    const MINIMUM: Role = Role::Analyst;
    const OWNER: bool = true;
}

/// An authenticated caller who meets `R`. Missing or bad credentials give 401 `unauthorized`;
/// too weak a role gives 403 `forbidden`.
pub struct Authenticated<R: Requirement = Member> {
    pub principal: Principal,
    _requirement: PhantomData<R>,
}

impl<R: Requirement> Authenticated<R> {
    pub fn scope(&self) -> &TenantScope {
        &self.principal.scope
    }
}

impl<R: Requirement> FromRequestParts<AppState> for Authenticated<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers).ok_or(AuthError::Unauthorized)?;
        let principal = principal_from_token(state, token).await?;
        if (R::OWNER && !principal.is_owner) || principal.role < R::MINIMUM {
            return Err(AuthError::Forbidden.into());
        }
        state.auth.limiters.check_tenant(principal.tenant_id())?;
        Ok(Authenticated {
            principal,
            _requirement: PhantomData,
        })
    }
}

/// The credential in `Authorization: Bearer ...`, if any.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|token| token.trim().to_string())
}

/// The member behind an access token or API key, with their role and tenant as they stand now
/// (no role check). The token only says who it is; the database says what they may do.
pub async fn principal_from_token(state: &AppState, token: String) -> Result<Principal, ApiError> {
    if token.starts_with(api_keys::KEY_PREFIX) {
        return Ok(state
            .db
            .call(move |c| api_keys::authenticate(c, &token))
            .await?);
    }
    let claims = state.auth.accounts.keys().verify(&token)?;
    Ok(state
        .db
        .call(move |c| access::member(c, &claims.sub, &claims.tid, claims.sgn))
        .await?)
}

/// Looks again at a principal that authenticated earlier (an open connection).
pub async fn current_principal(
    state: &AppState,
    principal: &Principal,
) -> Result<Principal, ApiError> {
    let (user_id, tenant_id, credential) = (
        principal.user_id.clone(),
        principal.tenant_id().to_string(),
        principal.credential.clone(),
    );
    Ok(state
        .db
        .call(move |c| match credential {
            Credential::AccessToken { generation } => {
                let user_id = user_id.ok_or(AuthError::AccessEnded)?;
                access::member(c, &user_id, &tenant_id, generation)
            }
            Credential::ApiKey { key_id } => api_keys::by_id(c, &key_id),
        })
        .await?)
}

/// The client's address and the request id, for rate limits and the audit log.
pub struct Client(pub RequestContext);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        Ok(Client(RequestContext {
            ip: peer.map(|peer| client_ip(peer, forwarded, &state.auth.trusted_proxies)),
            request_id: request_id::of_parts(parts).to_string(),
        }))
    }
}

/// Behind trusted proxies, the client is the right-most address in `X-Forwarded-For` that is
/// not itself a trusted proxy; otherwise the header is ignored (anyone can send it).
pub fn client_ip(peer: IpAddr, forwarded: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    forwarded
        .into_iter()
        .flat_map(|v| v.split(','))
        .rev()
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> ApiError {
        let error = match error {
            AuthError::Db(db) => return db.into(),
            other => other,
        };
        let code = match &error {
            AuthError::Unauthorized => ErrorCode::Unauthorized,
            AuthError::InvalidCredentials => ErrorCode::InvalidCredentials,
            AuthError::WeakPassword(_) => ErrorCode::WeakPassword,
            AuthError::EmailTaken => ErrorCode::EmailTaken,
            AuthError::SignupClosed(_) => ErrorCode::SignupClosed,
            AuthError::TokenReused => ErrorCode::TokenReused,
            AuthError::InvalidToken => ErrorCode::InvalidToken,
            AuthError::Forbidden => ErrorCode::Forbidden,
            AuthError::Suspended => ErrorCode::TenantSuspended,
            AuthError::AccessEnded => ErrorCode::Unauthorized,
            AuthError::SetupTokenRequired => ErrorCode::SetupTokenRequired,
            AuthError::Busy => {
                return ApiError::new(ErrorCode::ServiceUnavailable, error.to_string())
                    .with_retry_after(std::time::Duration::from_secs(1));
            }
            AuthError::Conflict(_) => ErrorCode::Conflict,
            AuthError::NotFound(_) => ErrorCode::NotFound,
            AuthError::Invalid(_) => ErrorCode::InvalidRequest,
            AuthError::RateLimited { retry_after } => {
                return ApiError::new(ErrorCode::RateLimited, error.to_string())
                    .with_retry_after(*retry_after);
            }
            AuthError::MfaRequired { challenge, enroll } => {
                let code = if *enroll {
                    ErrorCode::MfaEnrollmentRequired
                } else {
                    ErrorCode::MfaRequired
                };
                return ApiError::new(code, error.to_string())
                    .with_field("challenge", challenge.as_str())
                    .with_field(
                        "expires_in",
                        crate::auth::mfa::CHALLENGE_LIFETIME.num_seconds(),
                    );
            }
            AuthError::InvalidMfaCode(_) => ErrorCode::InvalidMfaCode,
            AuthError::MfaChallengeExpired => ErrorCode::MfaChallengeExpired,
            AuthError::MfaNotEnabled => ErrorCode::MfaNotEnabled,
            AuthError::MfaPolicy(_) => ErrorCode::MfaPolicy,
            AuthError::Db(_) => unreachable!("answered above"),
        };
        ApiError::new(code, error.to_string())
    }
}

/// The account and tenant-administration routes.
pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/instance", get(instance))
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/auth/password-reset", post(request_reset))
        .route("/api/v1/auth/password-reset/confirm", post(confirm_reset))
        .route("/api/v1/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api/v1/api-keys/{id}", delete(revoke_api_key))
        .route("/api/v1/team", get(list_team))
        .route("/api/v1/team/invitations", post(invite))
        .route("/api/v1/team/invitations/{id}", delete(revoke_invitation))
        .route(
            "/api/v1/team/{user_id}",
            axum::routing::patch(change_role).delete(remove_member),
        )
        .route("/api/v1/team/{user_id}/reset-link", post(member_reset_link))
        .route("/api/v1/tenant", get(get_tenant).patch(update_tenant))
        .route("/api/v1/admin/tenants", get(list_tenants))
        .route("/api/v1/audit-log", get(tenant_audit_log))
        .route("/api/v1/admin/audit-log", get(instance_audit_log))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "accounts",
    request_body = Registration,
    responses(
        (status = 201, description = "Registered and signed in", body = Session),
        (status = 403, description = "Sign-up needs an invitation", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 422, description = "Weak password or invalid input", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
    ),
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<Registration>,
) -> Result<Response, ApiError> {
    state.auth.limiters.check_auth(context.ip)?;
    let session = state.auth.accounts.register(input, &context).await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in", body = Session),
        (status = 401, description = "Wrong email or password; or the password was right and two-step sign-in needs a code (`mfa_required`) or setting up (`mfa_enrollment_required`): the error carries the `challenge` for POST /api/v1/auth/login/mfa", body = ErrorBody),
        (status = 429, description = "Too many attempts or account locked", body = ErrorBody),
    ),
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<Credentials>,
) -> Result<Response, ApiError> {
    state.auth.limiters.check_auth(context.ip)?;
    let session = state
        .auth
        .accounts
        .login(&input.email, &input.password, &context)
        .await?;
    Ok(Json(session).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RefreshToken {
    refresh_token: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct Logout {
    refresh_token: String,
    /// End every sign-in of this account, on every device [default: false].
    #[serde(default)]
    everywhere: bool,
}

/// What a sign-in page needs to know before anyone is signed in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InstanceInfo {
    version: &'static str,
    /// `open`, `invite` or `closed`.
    #[schema(value_type = String)]
    signup: SignupPolicy,
    /// No account exists yet: the first one to register becomes the instance owner, with the
    /// set-up token `serve` printed.
    needs_owner: bool,
    /// Whether the server sends email (reset links, invitations). Without it, admins pass links
    /// on themselves: the team screen makes them.
    email: bool,
    /// The owner requires two-step sign-in of every account.
    require_mfa: bool,
}

#[utoipa::path(get, path = "/api/v1/instance", tag = "accounts",
    responses((status = 200, description = "Sign-up policy and first-run state", body = InstanceInfo)))]
pub async fn instance(State(state): State<AppState>) -> Result<Json<InstanceInfo>, ApiError> {
    let (signup, needs_owner) = state.auth.accounts.instance().await?;
    let require_mfa = state.auth.accounts.mfa().instance_requires().await?;
    Ok(Json(InstanceInfo {
        require_mfa,
        version: env!("CARGO_PKG_VERSION"),
        signup,
        needs_owner,
        email: state.auth.mailer.is_configured(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "accounts",
    request_body = RefreshToken,
    responses(
        (status = 200, description = "A new token pair; the old refresh token is spent", body = Session),
        (status = 401, description = "Invalid, expired, revoked (invalid_token) or reused (token_reused) refresh token", body = ErrorBody),
    ),
)]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<RefreshToken>,
) -> Result<Response, ApiError> {
    let session = state
        .auth
        .accounts
        .refresh(&input.refresh_token, &context)
        .await?;
    Ok(Json(session).into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "accounts",
    request_body = Logout,
    responses(
        (status = 204, description = "Signed out (everywhere, with `everywhere: true`)"),
        (status = 401, description = "Unknown or revoked refresh token", body = ErrorBody),
    ),
)]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<Logout>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .accounts
        .logout(&input.refresh_token, input.everywhere, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "accounts",
    responses(
        (status = 200, description = "The caller, their role and tenant", body = Me),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn me(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<Value>, ApiError> {
    if let Credential::ApiKey { .. } = auth.principal.credential {
        return Ok(Json(json!({
            "api_key": auth.principal.label,
            "role": auth.principal.role,
            "tenant": {"id": auth.principal.tenant_id()},
        })));
    }
    let me = state.auth.accounts.me(&auth.principal).await?;
    Ok(Json(json!(me)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PasswordChange {
    current_password: String,
    new_password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/password",
    tag = "accounts",
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; every sign-in of the account ended, and this is the caller's new one", body = Session),
        (status = 422, description = "Weak new password", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated,
    Json(input): Json<PasswordChange>,
) -> Result<Json<Session>, ApiError> {
    let session = state
        .auth
        .accounts
        .change_password(
            &auth.principal,
            &input.current_password,
            &input.new_password,
            &context,
        )
        .await?;
    Ok(Json(session))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ResetRequest {
    email: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/password-reset",
    tag = "accounts",
    request_body = ResetRequest,
    responses(
        (status = 202, description = "A reset link is sent if the account exists"),
        (status = 429, description = "Too many attempts", body = ErrorBody),
    ),
)]
pub(crate) async fn request_reset(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<ResetRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.auth.limiters.check_auth(context.ip)?;
    state.auth.limiters.check_reset(&input.email)?;
    // Queued whether or not the email has an account (the job finds out), so the answer takes
    // the same time either way.
    crate::mail::queue(
        &state.jobs,
        crate::mail::Mail::PasswordReset {
            email: input.email.trim().to_string(),
            ip: context.ip,
            request_id: context.request_id.clone(),
        },
    )
    .await
    .map_err(ApiError::from)?;
    // The same answer whether or not the email has an account.
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "if an account exists for this email, a reset link is on its way"})),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ResetConfirmation {
    token: String,
    new_password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/password-reset/confirm",
    tag = "accounts",
    request_body = ResetConfirmation,
    responses(
        (status = 204, description = "Password set; all sign-ins ended"),
        (status = 401, description = "Invalid, used or expired token", body = ErrorBody),
        (status = 422, description = "Weak password", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address", body = ErrorBody),
    ),
)]
pub(crate) async fn confirm_reset(
    State(state): State<AppState>,
    Client(context): Client,
    Json(input): Json<ResetConfirmation>,
) -> Result<StatusCode, ApiError> {
    state.auth.limiters.check_auth(context.ip)?;
    state
        .auth
        .accounts
        .confirm_reset(&input.token, &input.new_password, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "api keys",
    responses(
        (status = 200, description = "The tenant's API keys (never the keys themselves)", body = ApiKeyList),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list_api_keys(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
) -> Result<Json<Value>, ApiError> {
    let scope = auth.scope().clone();
    let keys = state
        .db
        .call(move |c| api_keys::list(c, &scope).map_err(AuthError::from))
        .await?;
    Ok(Json(json!(ApiKeyList { api_keys: keys })))
}

#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "api keys",
    request_body = api_keys::NewApiKey,
    responses(
        (status = 201, description = "Created; the key is shown this once", body = api_keys::CreatedApiKey),
        (status = 403, description = "Admins only, and never a stronger role than the creator's", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create_api_key(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Json(input): Json<api_keys::NewApiKey>,
) -> Result<(StatusCode, Json<api_keys::CreatedApiKey>), ApiError> {
    let principal = auth.principal;
    let created = state
        .db
        .call(move |c| api_keys::create(c, &principal, &input, &context))
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/api-keys/{id}",
    tag = "api keys",
    params(("id" = String, Path, description = "API key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn revoke_api_key(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = auth.principal;
    let tenant_id = principal.tenant_id().to_string();
    state
        .db
        .call(move |c| api_keys::revoke(c, &principal, &id, &context))
        .await?;
    state.auth.accounts.changes().changed(&tenant_id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct NewInvitation {
    email: String,
    role: Role,
}

#[utoipa::path(
    post,
    path = "/api/v1/team/invitations",
    tag = "team",
    request_body = NewInvitation,
    responses(
        (status = 201, description = "Invitation created; its token is shown once", body = Invitation),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn invite(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Json(input): Json<NewInvitation>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let invitation = state
        .auth
        .accounts
        .invite(&auth.principal, &input.email, input.role, &context)
        .await?;
    let link = invitation_link(&state.auth.public_url, &invitation.token);
    crate::mail::queue(
        &state.jobs,
        crate::mail::Mail::Invitation {
            invitation_id: invitation.id.clone(),
        },
    )
    .await
    .map_err(ApiError::from)?;
    let mut answer = json!(invitation);
    answer["link"] = json!(link);
    answer["emailed"] = json!(state.auth.mailer.is_configured());
    Ok((StatusCode::CREATED, Json(answer)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/team/invitations/{id}",
    tag = "team",
    params(("id" = String, Path, description = "Invitation id")),
    responses(
        (status = 204, description = "Withdrawn; its code no longer works"),
        (status = 404, description = "No such pending invitation in this tenant", body = ErrorBody),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn revoke_invitation(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .accounts
        .revoke_invitation(&auth.principal, &id, &context)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A reset link the admin passes on.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ResetLink {
    link: String,
    expires_at: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/team/{user_id}/reset-link",
    tag = "team",
    params(("user_id" = String, Path, description = "Member's user id")),
    responses(
        (status = 201, description = "A single-use link (one hour) to set a new password; shown once, never logged", body = ResetLink),
        (status = 404, description = "No such member in this tenant", body = ErrorBody),
        (status = 422, description = "The account also belongs to another team (or is the server owner's)", body = ErrorBody),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn member_reset_link(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, Json<ResetLink>), ApiError> {
    let (token, expires_at) = state
        .auth
        .accounts
        .reset_token_for_member(&auth.principal, &user_id, &context)
        .await?;
    let link = reset_link(&state.auth.public_url, &token);
    Ok((StatusCode::CREATED, Json(ResetLink { link, expires_at })))
}

#[utoipa::path(
    get,
    path = "/api/v1/team",
    tag = "team",
    responses(
        (status = 200, description = "Members and pending invitations", body = team::Team),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list_team(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<team::Team>, ApiError> {
    let scope = auth.scope().clone();
    let team = state
        .db
        .call(move |c| team::list(c, &scope).map_err(AuthError::from))
        .await?;
    Ok(Json(team))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RoleChange {
    role: Role,
}

#[utoipa::path(
    patch,
    path = "/api/v1/team/{user_id}",
    tag = "team",
    request_body = RoleChange,
    params(("user_id" = String, Path, description = "Member's user id")),
    responses(
        (status = 200, description = "Role changed", body = team::Member),
        (status = 404, description = "No such member in this tenant", body = ErrorBody),
        (status = 422, description = "The tenant would have no admin left", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn change_role(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Path(user_id): Path<String>,
    Json(input): Json<RoleChange>,
) -> Result<Json<team::Member>, ApiError> {
    let principal = auth.principal;
    let tenant_id = principal.tenant_id().to_string();
    let member = state
        .db
        .call(move |c| team::change_role(c, &principal, &user_id, input.role, &context))
        .await?;
    state.auth.accounts.changes().changed(&tenant_id);
    Ok(Json(member))
}

#[utoipa::path(
    delete,
    path = "/api/v1/team/{user_id}",
    tag = "team",
    params(("user_id" = String, Path, description = "Member's user id")),
    responses(
        (status = 204, description = "Removed; their sign-ins into this tenant ended"),
        (status = 404, description = "No such member in this tenant", body = ErrorBody),
        (status = 422, description = "The tenant would have no admin left", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = auth.principal;
    let tenant_id = principal.tenant_id().to_string();
    state
        .db
        .call(move |c| team::remove(c, &principal, &user_id, &context))
        .await?;
    state.auth.accounts.changes().changed(&tenant_id);
    Ok(StatusCode::NO_CONTENT)
}

/// A tenant's settings with its storage use, for its members (the dashboard shows the quota).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = TenantWithUsage)]
pub struct TenantView {
    #[serde(flatten)]
    pub settings: tenant::TenantSettings,
    #[serde(flatten)]
    pub storage: crate::knowledge::quota::StorageUse,
}

async fn tenant_view(
    state: &AppState,
    scope: TenantScope,
    settings: tenant::TenantSettings,
) -> Result<Json<TenantView>, ApiError> {
    let default = state.knowledge.settings().storage_quota_bytes;
    let storage = state
        .db
        .call(move |c| crate::knowledge::quota::of(c, &scope, default))
        .await?;
    Ok(Json(TenantView { settings, storage }))
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "team",
    responses(
        (status = 200, description = "The tenant's settings and storage use", body = TenantView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn get_tenant(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<TenantView>, ApiError> {
    let scope = auth.scope().clone();
    let settings = {
        let scope = scope.clone();
        state.db.call(move |c| tenant::get(c, &scope)).await?
    };
    tenant_view(&state, scope, settings).await
}

#[utoipa::path(patch, path = "/api/v1/tenant", tag = "team", request_body = tenant::TenantUpdate,
    responses(
        (status = 200, description = "Updated settings", body = TenantView),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 422, description = "An origin is not scheme://host[:port]", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn update_tenant(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Json(update): Json<tenant::TenantUpdate>,
) -> Result<Json<TenantView>, ApiError> {
    let scope = auth.scope().clone();
    let principal = auth.principal;
    let settings = state
        .db
        .call(move |c| tenant::update(c, &principal, &update, &context))
        .await?;
    tenant_view(&state, scope, settings).await
}

/// `{"tenants": [...]}`
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TenantList {
    pub tenants: Vec<tenant::TenantSummary>,
}

#[utoipa::path(get, path = "/api/v1/admin/tenants", tag = "team",
    responses(
        (status = 200, description = "Every tenant on the instance", body = TenantList),
        (status = 403, description = "The instance owner only", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list_tenants(
    State(state): State<AppState>,
    _owner: Authenticated<Owner>,
) -> Result<Json<TenantList>, ApiError> {
    let tenants = state
        .db
        .call(|c| tenant::list_all(c).map_err(AuthError::from))
        .await?;
    Ok(Json(TenantList { tenants }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct Page {
    /// Entries with ids below this (the last id of the previous page).
    before: Option<i64>,
    /// Page size, 1 to 500 [default: 50].
    limit: Option<u32>,
    /// Only actions starting with this, e.g. `auth.` or `document.uploaded`.
    action: Option<String>,
    /// Only entries whose actor (email or key prefix) contains this.
    actor: Option<String>,
}

/// `{"api_keys": [...]}`
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<api_keys::ApiKeyView>,
}

/// `{"entries": [...]}`
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AuditList {
    pub entries: Vec<audit::AuditEntry>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit-log",
    tag = "audit",
    params(Page),
    responses(
        (status = 200, description = "Newest first", body = AuditList),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn tenant_audit_log(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let scope = auth.scope().clone();
    let entries = state
        .db
        .call(move |c| {
            audit::list(
                c,
                AuditView::Tenant(&scope),
                &AuditFilter {
                    before: page.before,
                    limit: page_size(page.limit),
                    action: page.action,
                    actor: page.actor,
                },
            )
            .map_err(AuthError::from)
        })
        .await?;
    Ok(Json(json!(AuditList { entries })))
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/audit-log",
    tag = "audit",
    params(Page),
    responses(
        (status = 200, description = "The whole instance's log, newest first", body = AuditList),
        (status = 403, description = "The instance owner only", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn instance_audit_log(
    State(state): State<AppState>,
    _owner: Authenticated<Owner>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let entries = state
        .db
        .call(move |c| {
            let filter = AuditFilter {
                before: page.before,
                limit: page_size(page.limit),
                action: page.action,
                actor: page.actor,
            };
            audit::list(c, AuditView::Instance, &filter).map_err(AuthError::from)
        })
        .await?;
    Ok(Json(json!(AuditList { entries })))
}

fn page_size(limit: Option<u32>) -> u32 {
    limit.unwrap_or(50).clamp(1, 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let header = Some("203.0.113.9, 198.51.100.7, 10.0.0.4");
        assert_eq!(
            client_ip(proxy, header, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            client_ip(stranger, header, &trusted),
            stranger,
            "spoofed header ignored"
        );
        assert_eq!(client_ip(proxy, None, &trusted), proxy);
    }
}
