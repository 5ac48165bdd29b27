//! A tenant's WhatsApp number: connecting it (the access token checked against the number),
//! Meta's subscription handshake, and the signed webhook that brings messages and receipts.

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::whatsapp::{self, Event, Template};
use super::{ChannelError, Channels, WHATSAPP, last_four};
use crate::auth::TenantScope;
use crate::db::channels::{ChannelAccount, ChannelStore};

/// The sealed part of a WhatsApp account.
#[derive(Serialize, Deserialize)]
pub(super) struct WhatsAppSecrets {
    pub(super) access_token: String,
    /// Signs every webhook call (`X-Hub-Signature-256`).
    app_secret: String,
    /// What Meta's console sends back in the subscription handshake.
    verify_token: String,
}

/// What the creator gives to connect a number.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct WhatsAppInput {
    /// The number's id in Meta's console (WhatsApp → API Setup), not the phone number.
    pub phone_number_id: String,
    /// A permanent access token of a system user with `whatsapp_business_messaging`.
    pub access_token: String,
    /// The app's secret (App settings → Basic): webhook calls are signed with it.
    pub app_secret: String,
    /// An approved template for messages more than 24 hours after the person last wrote; the
    /// message's text fills its first body parameter. Without one, such nudges are suppressed.
    pub template: Option<Template>,
}

/// A WhatsApp connection as the channels screen shows it. Never the token or the secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WhatsAppStatus {
    pub connected: bool,
    pub phone_number_id: Option<String>,
    pub display_phone_number: Option<String>,
    /// The access token's last 4 characters.
    pub token_hint: Option<String>,
    /// Paste into Meta's console (WhatsApp → Configuration → Webhook) with the callback URL.
    pub verify_token: Option<String>,
    pub callback_url: Option<String>,
    pub template: Option<Template>,
    pub last_error: Option<String>,
    pub last_error_at: Option<chrono::DateTime<Utc>>,
}

fn valid_template(template: &Template) -> bool {
    let name_ok = !template.name.is_empty()
        && template.name.len() <= 512
        && template
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let language_ok = (2..=15).contains(&template.language.len())
        && template
            .language
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_');
    name_ok && language_ok
}

impl Channels {
    fn callback_url(&self, scope: &TenantScope) -> String {
        format!(
            "{}/hooks/whatsapp/{}",
            self.inner.public_url,
            scope.tenant_id()
        )
    }

    pub(super) async fn whatsapp_account(
        &self,
        scope: &TenantScope,
    ) -> Result<Option<(ChannelAccount, WhatsAppSecrets)>, ChannelError> {
        self.account_with(scope, WHATSAPP).await
    }

    pub async fn whatsapp(&self, scope: &TenantScope) -> Result<WhatsAppStatus, ChannelError> {
        Ok(match self.whatsapp_account(scope).await? {
            Some((account, secrets)) => WhatsAppStatus {
                connected: true,
                display_phone_number: account.settings["display_phone_number"]
                    .as_str()
                    .map(str::to_string),
                template: serde_json::from_value(account.settings["template"].clone()).ok(),
                phone_number_id: Some(account.name),
                token_hint: Some(account.hint),
                verify_token: Some(secrets.verify_token),
                callback_url: Some(self.callback_url(scope)),
                last_error: account.last_error,
                last_error_at: account.last_error_at,
            },
            None => WhatsAppStatus {
                connected: false,
                phone_number_id: None,
                display_phone_number: None,
                token_hint: None,
                verify_token: None,
                callback_url: None,
                template: None,
                last_error: None,
                last_error_at: None,
            },
        })
    }

    /// Connects a number: the token must read the number's details; a fresh verify token is
    /// made for Meta's handshake.
    pub async fn connect_whatsapp(
        &self,
        scope: &TenantScope,
        input: &WhatsAppInput,
    ) -> Result<WhatsAppStatus, ChannelError> {
        let id = input.phone_number_id.trim();
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ChannelError::Invalid(
                "phone_number_id is the number's id in Meta's console (digits), not the phone number".into(),
            ));
        }
        let (token, secret) = (input.access_token.trim(), input.app_secret.trim());
        if token.is_empty() || token.len() > 1024 || secret.is_empty() || secret.len() > 256 {
            return Err(ChannelError::Invalid(
                "access_token and app_secret are both needed (from Meta's console)".into(),
            ));
        }
        if let Some(template) = &input.template
            && !valid_template(template)
        {
            return Err(ChannelError::Invalid(
                "template needs the approved template's name (lower case, digits, _) and its language code, like en_US".into(),
            ));
        }
        let display = self.inner.whatsapp.phone_number(id, token).await.map_err(
            |error| match error {
                super::telegram::CallError::Refused { description, .. } => {
                    ChannelError::InvalidCredentials(format!(
                        "WhatsApp did not accept this number id and access token ({description})"
                    ))
                }
                other => ChannelError::Unreachable(format!("cannot reach WhatsApp: {other}")),
            },
        )?;
        let secrets = WhatsAppSecrets {
            access_token: token.to_string(),
            app_secret: secret.to_string(),
            verify_token: crate::auth::tokens::secret_token(""),
        };
        let account = ChannelAccount {
            tenant_id: scope.tenant_id().to_string(),
            channel: WHATSAPP.into(),
            sealed: self.seal(scope, WHATSAPP, &secrets),
            hint: last_four(token),
            name: id.to_string(),
            settings: serde_json::json!({ "display_phone_number": display, "template": input.template }),
            mode: "webhook".into(),
            poll_offset: 0,
            last_error: None,
            last_error_at: None,
            updated_at: Utc::now(),
        };
        self.db()
            .call(move |c| c.save_channel_account(&account))
            .await?;
        tracing::info!(tenant = %scope.tenant_id(), "whatsapp number connected");
        self.whatsapp(scope).await
    }

    pub async fn disconnect_whatsapp(&self, scope: &TenantScope) -> Result<(), ChannelError> {
        let scope_moved = scope.clone();
        let removed = self
            .db()
            .call(move |c| c.delete_channel_account(&scope_moved, WHATSAPP))
            .await?;
        if !removed {
            return Err(ChannelError::NotFound("no WhatsApp number is connected"));
        }
        Ok(())
    }

    /// Meta's subscription handshake: the challenge back when the verify token matches.
    pub async fn whatsapp_handshake(
        &self,
        tenant_id: &str,
        mode: Option<&str>,
        verify_token: Option<&str>,
        challenge: Option<&str>,
    ) -> Result<String, ChannelError> {
        use subtle::ConstantTimeEq;
        let scope = TenantScope::new(tenant_id.to_string());
        let Some((_, secrets)) = self.whatsapp_account(&scope).await? else {
            return Err(ChannelError::NotFound(
                "no WhatsApp number is connected here",
            ));
        };
        let matches = verify_token
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(secrets.verify_token.as_bytes())));
        match (mode, challenge) {
            (Some("subscribe"), Some(challenge)) if matches => Ok(challenge.to_string()),
            _ => Err(ChannelError::Forbidden(
                "the verify token does not match this number's",
            )),
        }
    }

    /// A webhook call from Meta: the signature over the raw body must match (constant time)
    /// before anything is read; messages are taken in once (by `wamid`) with their jobs,
    /// receipts move the outbox on.
    pub async fn whatsapp_webhook(
        &self,
        tenant_id: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), ChannelError> {
        let scope = TenantScope::new(tenant_id.to_string());
        let Some((_, secrets)) = self.whatsapp_account(&scope).await? else {
            return Err(ChannelError::NotFound(
                "no WhatsApp number is connected here",
            ));
        };
        if !whatsapp::signature_matches(&secrets.app_secret, body, signature) {
            return Err(ChannelError::Forbidden(
                "this webhook call is not signed with this number's app secret",
            ));
        }
        let body: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| ChannelError::Invalid("the event is not JSON".into()))?;
        let mut messages = Vec::new();
        let mut receipts = Vec::new();
        for event in whatsapp::events(&body) {
            match event {
                Event::Message { wamid, message } => messages.push((
                    wamid.clone(),
                    message["from"].as_str().map_or(wamid, str::to_string),
                    serde_json::json!({ "channel": WHATSAPP, "message": message }),
                )),
                Event::Status {
                    wamid,
                    status,
                    error,
                } => receipts.push((wamid, status, error)),
            }
        }
        self.take_in(&scope, WHATSAPP, messages).await?;
        if !receipts.is_empty() {
            self.db()
                .call(move |c| {
                    crate::db::atomically(c, |c| {
                        for (wamid, status, error) in &receipts {
                            c.platform_receipt(&scope, WHATSAPP, wamid, status, error.as_deref())?;
                        }
                        Ok::<_, crate::db::DbError>(())
                    })
                })
                .await?;
        }
        Ok(())
    }
}
