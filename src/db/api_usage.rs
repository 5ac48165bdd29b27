//! Storage for the OpenAI-compatible API's use: requests and tokens per tenant, day (UTC),
//! credential and endpoint.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::DbError;
use crate::auth::TenantScope;

/// One call to count.
#[derive(Debug, Clone)]
pub struct ApiCall<'a> {
    /// `key:<id>` or `user:<id>`: what the totals are kept per.
    pub credential: &'a str,
    /// The key's prefix or the member's email, for people reading the figures.
    pub label: &'a str,
    /// `chat.completions` or `embeddings`.
    pub endpoint: &'a str,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// Totals of one credential on one endpoint over a range of days.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiUsageRow {
    /// The API key's prefix (`cmp_…`) or the signed-in member's email.
    pub credential: String,
    /// `chat.completions` or `embeddings`.
    pub endpoint: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

pub trait ApiUsageStore {
    /// Adds one call to today's totals.
    fn count_api_call(&self, scope: &TenantScope, call: &ApiCall) -> Result<(), DbError>;

    /// Totals per credential and endpoint for the days `from..=to` (`YYYY-MM-DD`), most
    /// requests first.
    fn api_usage(
        &self,
        scope: &TenantScope,
        from: &str,
        to: &str,
    ) -> Result<Vec<ApiUsageRow>, DbError>;
}

impl ApiUsageStore for Connection {
    fn count_api_call(&self, scope: &TenantScope, call: &ApiCall) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO api_usage (tenant_id, day, credential, label, endpoint, requests,
                                    prompt_tokens, completion_tokens)
             VALUES (?1, date('now'), ?2, ?3, ?4, 1, ?5, ?6)
             ON CONFLICT (tenant_id, day, credential, endpoint) DO UPDATE SET
                 label = excluded.label,
                 requests = requests + 1,
                 prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                 completion_tokens = completion_tokens + excluded.completion_tokens",
            params![
                scope.tenant_id(),
                call.credential,
                call.label,
                call.endpoint,
                call.prompt_tokens,
                call.completion_tokens
            ],
        )?;
        Ok(())
    }

    fn api_usage(
        &self,
        scope: &TenantScope,
        from: &str,
        to: &str,
    ) -> Result<Vec<ApiUsageRow>, DbError> {
        // The label of a credential's newest day names it (a member may change their email).
        let mut statement = self.prepare(
            "SELECT (SELECT u2.label FROM api_usage u2
                     WHERE u2.tenant_id = u.tenant_id AND u2.credential = u.credential
                     ORDER BY u2.day DESC LIMIT 1),
                    u.endpoint, sum(u.requests), sum(u.prompt_tokens), sum(u.completion_tokens)
             FROM api_usage u
             WHERE u.tenant_id = ?1 AND u.day BETWEEN ?2 AND ?3
             GROUP BY u.credential, u.endpoint
             ORDER BY sum(u.requests) DESC, u.credential, u.endpoint",
        )?;
        let rows = statement
            .query_map(params![scope.tenant_id(), from, to], |r| {
                Ok(ApiUsageRow {
                    credential: r.get(0)?,
                    endpoint: r.get(1)?,
                    requests: r.get(2)?,
                    prompt_tokens: r.get(3)?,
                    completion_tokens: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
