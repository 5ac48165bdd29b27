//! Messaging channels: a creator's Telegram bot carries the same conversations as the widget.
//!
//! - **In**: a webhook (`POST /hooks/telegram/{tenant}`, with the secret Telegram echoes) or a
//!   long poll (no public HTTPS address) takes each update in once (`channel_inbound`, keyed by
//!   `update_id`) and queues an `channel_inbound` job; the job turns it into a turn of the chat
//!   pipeline, as one more visitor (a visitor per Telegram chat).
//! - **Out**: every message the end user is to read in a channel conversation (answers, staff
//!   replies, nudges, events) is queued in the outbox with a `channel_delivery` job in the
//!   transaction that stores it (`db::channels::queue_delivery`); [`delivery`] hands it over
//!   part by part, recording each attempt first so a crash never sends a part twice.

pub mod delivery;
pub mod format;
pub mod inbound;
pub mod push;
pub mod secrets;
pub mod telegram;
pub mod whatsapp;
pub mod whatsapp_account;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::auth::TenantScope;
use crate::chat::Chat;
use crate::coaching::Coaching;
use crate::db::channels::{ChannelAccount, ChannelCounts, ChannelStore};
use crate::db::jobs::{JobStore, NewJob};
use crate::db::{Db, DbError};
use crate::jobs::Jobs;
use secrets::Sealer;
use telegram::{CallError, TelegramApi};

pub const TELEGRAM: &str = "telegram";
pub const WHATSAPP: &str = "whatsapp";
/// The job kind that turns a platform update into a turn of the conversation.
pub const INBOUND_JOB: &str = "channel_inbound";

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    NotFound(&'static str),
    /// A webhook call without the right secret (or to a bot that polls).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The platform refused the credentials.
    #[error("{0}")]
    InvalidCredentials(String),
    #[error("{0}")]
    Invalid(String),
    /// The platform could not be reached, or failed.
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A Telegram connection as the channels screen shows it. Never the token itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TelegramStatus {
    pub connected: bool,
    /// The bot's @username (people open `https://t.me/<username>`).
    pub bot_username: Option<String>,
    /// `webhook` (Telegram calls this server; needs an `https://` public URL) or `polling`
    /// (this server asks Telegram for updates).
    pub mode: Option<String>,
    /// The token's last 4 characters, to tell which bot it is.
    pub token_hint: Option<String>,
    /// Where Telegram sends updates, in webhook mode.
    pub webhook_url: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// One channel in `GET /api/v1/channels`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChannelOverview {
    /// `web`, `telegram` or `whatsapp`.
    pub channel: String,
    /// `connected`, `error` (connected, with a recent error) or `not_connected`.
    pub status: String,
    pub name: Option<String>,
    pub mode: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// People who wrote through this channel.
    pub people: i64,
    /// Messages they sent.
    pub received: i64,
    /// Outgoing messages by delivery state.
    pub queued: i64,
    pub sent: i64,
    pub failed: i64,
}

/// The sealed part of a Telegram account.
#[derive(serde::Serialize, serde::Deserialize)]
struct TelegramSecrets {
    token: String,
    /// What Telegram sends back in `X-Telegram-Bot-Api-Secret-Token`.
    webhook_secret: String,
}

/// The tenant and outbox row a delivery job (`channel_delivery`, `push_delivery`) is about.
fn outbox_target(job: &crate::jobs::Job) -> Result<(TenantScope, String), crate::jobs::JobError> {
    let tenant = job.tenant_id.clone().ok_or_else(|| {
        crate::jobs::JobError::Fatal(format!("a {} job without a tenant", job.kind))
    })?;
    let outbox_id = job.payload["outbox_id"].as_str().unwrap_or_default();
    Ok((TenantScope::new(tenant), outbox_id.to_string()))
}

/// The keys the channels keep in `<data-dir>/keys/`: the one that seals platform credentials,
/// and the server's Web Push (VAPID) identity.
pub struct ChannelKeys {
    pub sealer: Sealer,
    pub vapid: push::Vapid,
}

impl ChannelKeys {
    pub fn load_or_create(keys_dir: &std::path::Path) -> anyhow::Result<ChannelKeys> {
        use anyhow::Context;
        Ok(ChannelKeys {
            sealer: Sealer::load_or_create(keys_dir)
                .context("cannot load the channel credentials key")?,
            vapid: push::Vapid::load_or_create(keys_dir)
                .context("cannot load the Web Push (VAPID) key")?,
        })
    }
}

/// The channels service. Cheap to clone.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    chat: Chat,
    /// Program links enrol whoever opens them.
    coaching: Coaching,
    jobs: Jobs,
    sealer: Sealer,
    telegram: TelegramApi,
    whatsapp: whatsapp::GraphApi,
    public_url: String,
    /// Web Push: the server's identity, the client, and whether `http://` endpoints (local
    /// stand-ins) are allowed.
    vapid: push::Vapid,
    push_client: platform_http::Client,
    push_http: bool,
    /// The push services' contact for this server (the mail sender).
    mail_from: String,
    /// The running long poll of each tenant's bot.
    pollers: Mutex<HashMap<String, CancellationToken>>,
    shutdown: OnceLock<CancellationToken>,
}

impl Channels {
    pub fn new(
        db: Db,
        chat: Chat,
        coaching: Coaching,
        jobs: Jobs,
        keys: ChannelKeys,
        config: &crate::config::Config,
    ) -> Channels {
        let ChannelKeys { sealer, vapid } = keys;
        let (apis, public_url, mail_from) =
            (&config.channels, &config.public_url, &config.mail_from);
        let channels = Channels {
            inner: Arc::new(Inner {
                db,
                chat,
                coaching,
                jobs: jobs.clone(),
                sealer,
                telegram: TelegramApi::new(&apis.telegram_url),
                whatsapp: whatsapp::GraphApi::new(&apis.whatsapp_url, &apis.whatsapp_version),
                public_url: public_url.trim_end_matches('/').to_string(),
                vapid,
                push_client: platform_http::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("the push client builds"),
                push_http: apis.push_http_endpoints,
                mail_from: mail_from.to_string(),
                pollers: Mutex::new(HashMap::new()),
                shutdown: OnceLock::new(),
            }),
        };
        jobs.register(INBOUND_JOB, Arc::new(inbound::InboundJob(channels.clone())));
        jobs.register(
            crate::db::channels::DELIVER_JOB,
            Arc::new(delivery::DeliveryJob(channels.clone())),
        );
        jobs.register(
            crate::db::push::PUSH_JOB,
            Arc::new(push::PushJob(channels.clone())),
        );
        channels
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Starts the long poll of every bot that has no webhook.
    pub async fn start(&self, shutdown: CancellationToken) -> Result<(), DbError> {
        let _ = self.inner.shutdown.set(shutdown);
        let accounts = self.db().read(|c| c.accounts_on(TELEGRAM)).await?;
        for account in accounts.into_iter().filter(|a| a.mode == "polling") {
            self.start_polling(account);
        }
        Ok(())
    }

    /// Webhooks need an address Telegram can reach over HTTPS.
    fn webhook_url(&self, scope: &TenantScope) -> Option<String> {
        self.inner.public_url.starts_with("https://").then(|| {
            format!(
                "{}/hooks/telegram/{}",
                self.inner.public_url,
                scope.tenant_id()
            )
        })
    }

    fn context(tenant_id: &str, channel: &str) -> String {
        format!("{tenant_id}/{channel}")
    }

    /// The account's credentials; `None` when they do not open (another key, another row).
    fn secrets<T: serde::de::DeserializeOwned>(&self, account: &ChannelAccount) -> Option<T> {
        let plain = self.inner.sealer.open(
            &Self::context(&account.tenant_id, &account.channel),
            &account.sealed,
        )?;
        serde_json::from_slice(&plain).ok()
    }

    fn seal<T: Serialize>(&self, scope: &TenantScope, channel: &str, secrets: &T) -> Vec<u8> {
        self.inner.sealer.seal(
            &Self::context(scope.tenant_id(), channel),
            &serde_json::to_vec(secrets).expect("secrets serialise"),
        )
    }

    /// The tenant's account on `channel` with its opened credentials.
    async fn account_with<T: serde::de::DeserializeOwned>(
        &self,
        scope: &TenantScope,
        channel: &'static str,
    ) -> Result<Option<(ChannelAccount, T)>, ChannelError> {
        let scope_moved = scope.clone();
        // A read connection: every webhook call and delivery looks the account up, and none
        // of them should queue behind the writer.
        let account = self
            .db()
            .read(move |c| c.channel_account(&scope_moved, channel))
            .await?;
        Ok(account.and_then(|a| self.secrets(&a).map(|s| (a, s))))
    }

    async fn telegram_account(
        &self,
        scope: &TenantScope,
    ) -> Result<Option<(ChannelAccount, TelegramSecrets)>, ChannelError> {
        self.account_with(scope, TELEGRAM).await
    }

    pub async fn telegram(&self, scope: &TenantScope) -> Result<TelegramStatus, ChannelError> {
        Ok(match self.telegram_account(scope).await? {
            Some((account, _)) => TelegramStatus {
                connected: true,
                bot_username: Some(account.name.clone()),
                webhook_url: (account.mode == "webhook")
                    .then(|| self.webhook_url(scope))
                    .flatten(),
                mode: Some(account.mode),
                token_hint: Some(account.hint),
                last_error: account.last_error,
                last_error_at: account.last_error_at,
            },
            None => TelegramStatus {
                connected: false,
                bot_username: None,
                mode: None,
                token_hint: None,
                webhook_url: None,
                last_error: None,
                last_error_at: None,
            },
        })
    }

    /// Connects a bot: the token is checked with `getMe`, then Telegram is told where to send
    /// updates (a webhook with a fresh secret), or the server polls for them.
    pub async fn connect_telegram(
        &self,
        scope: &TenantScope,
        token: &str,
    ) -> Result<TelegramStatus, ChannelError> {
        let token = token.trim();
        if token.is_empty()
            || token.len() > 200
            || !token.chars().all(|c| c.is_ascii_graphic() && c != '/')
        {
            return Err(ChannelError::Invalid(
                "bot_token is the token @BotFather gave, like 123456789:AA…".into(),
            ));
        }
        let api = &self.inner.telegram;
        let name = api.get_me(token).await.map_err(|error| match error {
            CallError::Refused { description, .. } => ChannelError::InvalidCredentials(format!(
                "Telegram did not accept this bot token ({description}); copy it again from @BotFather"
            )),
            other => ChannelError::Unreachable(format!("cannot reach Telegram: {other}")),
        })?;
        let webhook_secret = crate::auth::tokens::secret_token("");
        let mode = match self.webhook_url(scope) {
            Some(url) => {
                api.set_webhook(token, &url, &webhook_secret)
                    .await
                    .map_err(|e| {
                        ChannelError::Unreachable(format!("Telegram refused the webhook: {e}"))
                    })?;
                "webhook"
            }
            None => {
                // getUpdates is refused while a webhook is set (another server's, say).
                api.delete_webhook(token).await.map_err(|e| {
                    ChannelError::Unreachable(format!("cannot reach Telegram: {e}"))
                })?;
                "polling"
            }
        };
        let secrets = TelegramSecrets {
            token: token.to_string(),
            webhook_secret,
        };
        let account = ChannelAccount {
            tenant_id: scope.tenant_id().to_string(),
            channel: TELEGRAM.into(),
            sealed: self.seal(scope, TELEGRAM, &secrets),
            hint: last_four(token),
            name,
            settings: serde_json::json!({}),
            mode: mode.into(),
            poll_offset: 0,
            last_error: None,
            last_error_at: None,
            updated_at: Utc::now(),
        };
        let stored = account.clone();
        self.db()
            .call(move |c| c.save_channel_account(&stored))
            .await?;
        self.stop_polling(scope.tenant_id());
        if mode == "polling" {
            self.start_polling(account);
        }
        tracing::info!(tenant = %scope.tenant_id(), mode, "telegram bot connected");
        self.telegram(scope).await
    }

    /// Disconnects the bot: no more updates are taken in and nothing more is sent.
    pub async fn disconnect_telegram(&self, scope: &TenantScope) -> Result<(), ChannelError> {
        let Some((account, secrets)) = self.telegram_account(scope).await? else {
            return Err(ChannelError::NotFound("no Telegram bot is connected"));
        };
        self.stop_polling(scope.tenant_id());
        if account.mode == "webhook"
            && let Err(error) = self.inner.telegram.delete_webhook(&secrets.token).await
        {
            tracing::warn!(%error, "could not remove the Telegram webhook");
        }
        let scope_moved = scope.clone();
        self.db()
            .call(move |c| c.delete_channel_account(&scope_moved, TELEGRAM))
            .await?;
        Ok(())
    }

    /// Every channel's state and figures.
    pub async fn overview(
        &self,
        scope: &TenantScope,
    ) -> Result<Vec<ChannelOverview>, ChannelError> {
        let scope_moved = scope.clone();
        let (telegram, counts, web, whatsapp, whatsapp_counts) = self
            .db()
            .read(move |c| {
                Ok::<_, DbError>((
                    c.channel_account(&scope_moved, TELEGRAM)?,
                    c.channel_counts(&scope_moved, TELEGRAM)?,
                    c.channel_counts(&scope_moved, crate::chat::conversations::WEB_CHANNEL)?,
                    c.channel_account(&scope_moved, WHATSAPP)?,
                    c.channel_counts(&scope_moved, WHATSAPP)?,
                ))
            })
            .await?;
        let web = ChannelOverview {
            channel: "web".into(),
            status: "connected".into(),
            name: None,
            mode: None,
            last_error: None,
            last_error_at: None,
            people: web.people,
            received: web.received,
            queued: web.queued,
            sent: web.sent,
            failed: web.failed,
        };
        let telegram = overview_of(TELEGRAM, telegram.as_ref(), counts);
        let whatsapp = overview_of(WHATSAPP, whatsapp.as_ref(), whatsapp_counts);
        Ok(vec![web, telegram, whatsapp])
    }

    /// A webhook call from Telegram: the secret must match (compared in constant time), and
    /// the bot must be in webhook mode; then the update is taken in and worked on in a job.
    pub async fn telegram_webhook(
        &self,
        tenant_id: &str,
        secret: Option<&str>,
        body: &[u8],
    ) -> Result<(), ChannelError> {
        use subtle::ConstantTimeEq;
        // The secret authenticates the call: the scope is the path's tenant once it matched.
        let scope = TenantScope::new(tenant_id.to_string());
        let refused = ChannelError::Forbidden("this webhook call is not from this tenant's bot");
        let Some((account, secrets)) = self.telegram_account(&scope).await? else {
            return Err(ChannelError::NotFound("no Telegram bot is connected here"));
        };
        let matches = secret
            .is_some_and(|s| bool::from(s.as_bytes().ct_eq(secrets.webhook_secret.as_bytes())));
        if !matches || account.mode != "webhook" {
            return Err(refused);
        }
        let update: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| ChannelError::Invalid("the update is not JSON".into()))?;
        self.take_in(&scope, TELEGRAM, Self::telegram_events(vec![update]))
            .await?;
        Ok(())
    }

    /// Takes platform events in, each once (by its id on the platform), with the job that
    /// works on it. Events are `(id on the platform, chat, payload)`: the jobs of one chat
    /// share a subject, and run one after the other in the order they came.
    async fn take_in(
        &self,
        scope: &TenantScope,
        channel: &'static str,
        events: Vec<(String, String, serde_json::Value)>,
    ) -> Result<(), DbError> {
        if events.is_empty() {
            return Ok(());
        }
        let scope_moved = scope.clone();
        self.db()
            .call(move |c| {
                crate::db::atomically(c, |c| {
                    for (id, chat, payload) in events {
                        if !c.take_inbound(&scope_moved, channel, &id)? {
                            continue;
                        }
                        c.enqueue_job(&NewJob {
                            kind: INBOUND_JOB,
                            tenant_id: Some(scope_moved.tenant_id().to_string()),
                            subject_id: format!("{channel}:{chat}"),
                            payload,
                            run_at: Utc::now(),
                            dedupe_key: None,
                            clock_id: None,
                        })?;
                    }
                    Ok::<_, DbError>(())
                })
            })
            .await?;
        self.inner.jobs.wake();
        Ok(())
    }

    /// Telegram updates as events to take in.
    fn telegram_events(
        updates: Vec<serde_json::Value>,
    ) -> Vec<(String, String, serde_json::Value)> {
        updates
            .into_iter()
            .filter_map(|update| {
                let id = telegram::update_id(&update)?;
                let chat = telegram::chat_of(&update).unwrap_or_else(|| format!("update-{id}"));
                Some((
                    id.to_string(),
                    chat,
                    serde_json::json!({ "channel": TELEGRAM, "update": update }),
                ))
            })
            .collect()
    }

    fn stop_polling(&self, tenant_id: &str) {
        if let Some(token) = self
            .inner
            .pollers
            .lock()
            .expect("pollers")
            .remove(tenant_id)
        {
            token.cancel();
        }
    }

    /// Long polling for a bot without a webhook: one poller per bot, until the bot is
    /// disconnected or the server stops. Errors are recorded on the channel and retried with
    /// a growing pause.
    fn start_polling(&self, account: ChannelAccount) {
        let Some(secrets) = self.secrets::<TelegramSecrets>(&account) else {
            tracing::warn!(tenant = %account.tenant_id, "cannot open the Telegram credentials (was keys/channels.key replaced?)");
            return;
        };
        let stop = self
            .inner
            .shutdown
            .get()
            .map(CancellationToken::child_token)
            .unwrap_or_default();
        if let Some(previous) = self
            .inner
            .pollers
            .lock()
            .expect("pollers")
            .insert(account.tenant_id.clone(), stop.clone())
        {
            previous.cancel();
        }
        let channels = self.clone();
        tokio::spawn(async move {
            let scope = TenantScope::new(account.tenant_id.clone());
            let mut offset = account.poll_offset;
            let mut pause = Duration::from_secs(1);
            // Whether the channel shows an error: an idle poll then writes nothing.
            let mut failing = account.last_error.is_some();
            loop {
                let polled = tokio::select! {
                    () = stop.cancelled() => break,
                    polled = channels.inner.telegram.get_updates(&secrets.token, offset) => polled,
                };
                let error = match polled {
                    Ok(updates) => {
                        let last = updates.iter().filter_map(telegram::update_id).max();
                        match channels
                            .take_in(&scope, TELEGRAM, Self::telegram_events(updates))
                            .await
                        {
                            Ok(()) => {
                                if let Some(last) = last {
                                    offset = offset.max(last + 1);
                                    let scope = scope.clone();
                                    if let Err(error) = channels
                                        .db()
                                        .call(move |c| c.set_poll_offset(&scope, TELEGRAM, offset))
                                        .await
                                    {
                                        tracing::warn!(%error, "cannot record the poll offset");
                                    }
                                }
                                pause = Duration::from_secs(1);
                                None
                            }
                            Err(error) => Some(format!("cannot store updates: {error}")),
                        }
                    }
                    Err(error) => Some(error.to_string()),
                };
                if error.is_some() || failing {
                    channels.record_error(&scope, TELEGRAM, error.clone()).await;
                }
                failing = error.is_some();
                if let Some(error) = error {
                    tracing::warn!(tenant = %scope.tenant_id(), %error, "telegram poll failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        });
    }

    /// Records the channel's last error, or clears it.
    async fn record_error(
        &self,
        scope: &TenantScope,
        channel: &'static str,
        error: Option<String>,
    ) {
        let scope = scope.clone();
        if let Err(db_error) = self
            .db()
            .call(move |c| c.set_channel_error(&scope, channel, error.as_deref()))
            .await
        {
            tracing::warn!(%db_error, "cannot record a channel's state");
        }
    }
}

/// A platform channel in the overview.
fn overview_of(
    channel: &str,
    account: Option<&ChannelAccount>,
    counts: ChannelCounts,
) -> ChannelOverview {
    let status = match account {
        None => "not_connected",
        Some(a) if a.last_error.is_some() => "error",
        Some(_) => "connected",
    };
    ChannelOverview {
        channel: channel.into(),
        status: status.into(),
        name: account.map(|a| a.name.clone()),
        mode: account.map(|a| a.mode.clone()),
        last_error: account.and_then(|a| a.last_error.clone()),
        last_error_at: account.and_then(|a| a.last_error_at),
        people: counts.people,
        received: counts.received,
        queued: counts.queued,
        sent: counts.sent,
        failed: counts.failed,
    }
}

/// "…AbCd": enough to tell tokens apart, nothing to use.
fn last_four(token: &str) -> String {
    let tail: String = token
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}
