//! Counting the OpenAI-compatible API's use per tenant and credential, for the analytics
//! screen. Counting never fails a call: a failure to count is logged.

use super::{Credential, Principal};
use crate::db::Db;
use crate::db::api_usage::{ApiCall, ApiUsageStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// Adds one call by `principal` with its token counts to today's figures.
pub async fn count(
    db: &Db,
    principal: &Principal,
    endpoint: Endpoint,
    prompt_tokens: usize,
    completion_tokens: usize,
) {
    let credential = match &principal.credential {
        Credential::ApiKey { key_id } => format!("key:{key_id}"),
        Credential::AccessToken { .. } => {
            format!("user:{}", principal.user_id.as_deref().unwrap_or_default())
        }
    };
    let (scope, label) = (principal.scope.clone(), principal.label.clone());
    let counted = db
        .call(move |c| {
            c.count_api_call(
                &scope,
                &ApiCall {
                    credential: &credential,
                    label: &label,
                    endpoint: endpoint.as_str(),
                    prompt_tokens: prompt_tokens as i64,
                    completion_tokens: completion_tokens as i64,
                },
            )
        })
        .await;
    if let Err(error) = counted {
        tracing::warn!(%error, "API use was not counted");
    }
}
