//! Web Push: a chat page the end user installed or allowed to notify them hears of staff
//! replies, nudges and program steps while it is closed.
//!
//! - The server's VAPID key (P-256) is made once, in `<data-dir>/keys/vapid.key`; browsers
//!   subscribe with its public half, and every push carries a JWT it signs (RFC 8292).
//! - The payload is encrypted for the browser's key and auth secret as RFC 8291 requires
//!   (`web-push-native`, RustCrypto): the push service cannot read it.
//! - A push is an outbox row (`push-{message id}`) queued with the message
//!   (`db::push::queue_push`); the `push_delivery` job sends it to each of the visitor's
//!   subscriptions. A subscription the push service calls gone (404, 410) is dropped.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;

use super::{ChannelError, Channels};
use crate::auth::TenantScope;
use crate::db::DbError;
use crate::db::coaching::OutboxStore;
use crate::db::push::{PushDelivery, PushStore, PushSubscription};
use crate::jobs::{BoxFuture, Handler, Job, JobError, Outcome};

/// Tries before a push nobody took is recorded `failed`.
const MAX_TRIES: u64 = 6;
/// How long a push service keeps a message for a browser that is offline.
const TIME_TO_LIVE: Duration = Duration::from_secs(24 * 60 * 60);
/// What a notification shows of the message (push services take about 4 KB in all).
const MAX_BODY_CHARS: usize = 600;

/// The server's VAPID identity. Cheap to clone.
#[derive(Clone)]
pub struct Vapid {
    signing: std::sync::Arc<jsonwebtoken::EncodingKey>,
    /// The uncompressed public point, base64url: `applicationServerKey` in the browser and
    /// `k=` in every push.
    public_key: String,
}

impl Vapid {
    pub fn load_or_create(keys_dir: &Path) -> anyhow::Result<Vapid> {
        let bytes = crate::auth::tokens::load_or_create_key(keys_dir, "vapid.key")?;
        let secret = p256::SecretKey::from_bytes(&bytes.into())
            .map_err(|_| anyhow::anyhow!("keys/vapid.key is not a P-256 private key"))?;
        Ok(Vapid::from_secret(&secret))
    }

    pub fn from_secret(secret: &p256::SecretKey) -> Vapid {
        let der = secret
            .to_pkcs8_der()
            .expect("a P-256 key always encodes as PKCS#8");
        let public = secret.public_key().to_encoded_point(false);
        Vapid {
            signing: std::sync::Arc::new(jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes())),
            public_key: URL_SAFE_NO_PAD.encode(public.as_bytes()),
        }
    }

    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// `Authorization: vapid t=<JWT>, k=<public key>` for a push to `endpoint` (RFC 8292):
    /// the JWT names the push service's origin, expires within a day, and gives a contact.
    fn authorization(
        &self,
        endpoint: &axum::http::Uri,
        contact: &str,
        now: DateTime<Utc>,
    ) -> String {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            aud: String,
            exp: i64,
            sub: &'a str,
        }
        let origin = format!(
            "{}://{}",
            endpoint.scheme_str().unwrap_or("https"),
            endpoint.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        let claims = Claims {
            aud: origin,
            exp: (now + chrono::Duration::hours(12)).timestamp(),
            sub: contact,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        let token = jsonwebtoken::encode(&header, &claims, &self.signing)
            .expect("signing with a P-256 key");
        format!("vapid t={token}, k={}", self.public_key)
    }
}

/// A subscription from `PushManager.subscribe` (its `toJSON()`), checked.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPushSubscription {
    /// The push service URL the browser gave (`https://`).
    pub endpoint: String,
    pub keys: PushKeys,
    /// `PushSubscription.expirationTime`; ignored (push services say 404/410 when it ends).
    #[serde(default, rename = "expirationTime")]
    #[schema(value_type = Option<f64>)]
    pub expiration_time: Option<serde_json::Value>,
}

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushKeys {
    /// The browser's P-256 public key (uncompressed point, base64url).
    pub p256dh: String,
    /// Its 16-byte auth secret, base64url.
    pub auth: String,
}

/// Whether a visitor gets pushes, and the key their browser subscribes with.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PushStatus {
    /// The server's VAPID public key (base64url): `applicationServerKey`.
    pub public_key: String,
    /// How many of this visitor's browsers are subscribed.
    pub subscriptions: i64,
}

/// How one push service answered.
enum Answer {
    Taken,
    /// 404 or 410: the subscription ended.
    Gone,
    /// It may take it later (unreachable, 429, 5xx).
    Later(String),
    /// A refusal trying again will not change (400, 401, 403, 413).
    Refused(String),
}

fn decoded(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
}

impl Channels {
    /// Keeps the browser's subscription for the visitor (it replaces one for the same
    /// endpoint). The endpoint must be `https://` (plain `http://` only with
    /// `--allow-http-push-endpoints`, for local stand-ins), and the keys a P-256 point and a
    /// 16-byte secret, or nothing could be encrypted for it.
    pub async fn subscribe_push(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        input: NewPushSubscription,
    ) -> Result<PushStatus, ChannelError> {
        let endpoint: axum::http::Uri = input
            .endpoint
            .parse()
            .map_err(|_| ChannelError::Invalid("endpoint is not a URL".into()))?;
        let secure = endpoint.scheme_str() == Some("https");
        let allowed = secure || (self.inner.push_http && endpoint.scheme_str() == Some("http"));
        if !allowed || endpoint.host().is_none() || input.endpoint.len() > 2048 {
            return Err(ChannelError::Invalid(
                "endpoint must be the https:// URL the browser's push service gave".into(),
            ));
        }
        let key_ok = decoded(&input.keys.p256dh)
            .is_some_and(|k| p256::PublicKey::from_sec1_bytes(&k).is_ok());
        if !key_ok {
            return Err(ChannelError::Invalid(
                "keys.p256dh must be the browser's P-256 public key (base64url)".into(),
            ));
        }
        if decoded(&input.keys.auth).map(|a| a.len()) != Some(16) {
            return Err(ChannelError::Invalid(
                "keys.auth must be the browser's 16-byte auth secret (base64url)".into(),
            ));
        }
        let subscription = PushSubscription {
            id: crate::auth::new_id(),
            endpoint: input.endpoint,
            p256dh: input.keys.p256dh,
            auth: input.keys.auth,
        };
        let (scope_moved, visitor) = (scope.clone(), visitor_id.to_string());
        self.db()
            .call(move |c| c.save_push_subscription(&scope_moved, &visitor, &subscription))
            .await?;
        Ok(self.push_status(scope, visitor_id).await?)
    }

    pub async fn unsubscribe_push(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<PushStatus, ChannelError> {
        let (scope_moved, visitor) = (scope.clone(), visitor_id.to_string());
        self.db()
            .call(move |c| c.delete_push_subscriptions(&scope_moved, &visitor))
            .await?;
        Ok(self.push_status(scope, visitor_id).await?)
    }

    pub async fn push_status(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<PushStatus, DbError> {
        let (scope, visitor) = (scope.clone(), visitor_id.to_string());
        let subscriptions = self
            .db()
            .read(move |c| c.push_subscription_count(&scope, &visitor))
            .await?;
        Ok(PushStatus {
            public_key: self.inner.vapid.public_key().to_string(),
            subscriptions,
        })
    }

    /// What the notification says: the coach's name, the message, and the page it opens.
    fn push_payload(&self, delivery: &PushDelivery) -> Vec<u8> {
        let message = &delivery.message;
        let mut body: String = message.content.chars().take(MAX_BODY_CHARS).collect();
        if message.content.chars().count() > MAX_BODY_CHARS {
            body.push('…');
        }
        let title = match (&message.role[..], &message.author_name) {
            ("staff", Some(name)) => format!("{name} ({})", delivery.coach_name),
            _ => delivery.coach_name.clone(),
        };
        serde_json::to_vec(&serde_json::json!({
            "title": title,
            "body": body,
            "url": format!("/c/{}", delivery.coach_slug),
            "icon": format!("/c/{}/icon.svg", delivery.coach_slug),
            // One notification per conversation: a newer message replaces the older one.
            "tag": message.conversation_id,
            "seq": message.seq,
        }))
        .expect("the payload serialises")
    }

    /// Who to write to about pushes: the mail sender's address, or the public URL.
    fn push_contact(&self) -> String {
        let from = &self.inner.mail_from;
        let address = from
            .rsplit_once('<')
            .map(|(_, rest)| rest.trim_end_matches('>'))
            .unwrap_or(from)
            .trim();
        if address.contains('@') {
            format!("mailto:{address}")
        } else {
            self.inner.public_url.clone()
        }
    }

    async fn push_to(
        &self,
        subscription: &PushSubscription,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Answer {
        let (Ok(endpoint), Some(key), Some(auth)) = (
            subscription.endpoint.parse::<axum::http::Uri>(),
            decoded(&subscription.p256dh).and_then(|k| p256::PublicKey::from_sec1_bytes(&k).ok()),
            decoded(&subscription.auth).filter(|a| a.len() == 16),
        ) else {
            return Answer::Gone;
        };
        let request = web_push_native::WebPushBuilder::new(
            endpoint.clone(),
            key,
            *web_push_native::Auth::from_slice(&auth),
        )
        .with_valid_duration(TIME_TO_LIVE)
        .build(payload.to_vec());
        let request = match request {
            Ok(request) => request,
            Err(error) => return Answer::Refused(format!("cannot encrypt the push: {error}")),
        };
        let (parts, body) = request.into_parts();
        let mut call = self
            .inner
            .push_client
            .post(&subscription.endpoint)
            .header(
                "Authorization",
                self.inner
                    .vapid
                    .authorization(&endpoint, &self.push_contact(), now),
            )
            .header("Urgency", "normal");
        for (name, value) in &parts.headers {
            call = call.header(name.as_str(), value.as_bytes());
        }
        match call.body(body).send().await {
            Ok(response) => match response.status().as_u16() {
                200..=299 => Answer::Taken,
                404 | 410 => Answer::Gone,
                429 | 500..=599 => {
                    Answer::Later(format!("the push service answered {}", response.status()))
                }
                _ => Answer::Refused(format!("the push service refused: {}", response.status())),
            },
            // The URL holds the subscription's secret path: never in a message.
            Err(error) => Answer::Later(error.without_url().to_string()),
        }
    }
}

/// Runs `push_delivery` jobs.
pub struct PushJob(pub Channels);

impl Handler for PushJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let channels = &self.0;
            let (scope, outbox_id) = super::outbox_target(job)?;
            let tries = job.payload["tries"].as_u64().unwrap_or(0) + 1;
            let (scope_moved, id) = (scope.clone(), outbox_id.clone());
            let Some(delivery) = channels
                .db()
                .read(move |c| c.push_delivery(&scope_moved, &id))
                .await?
            else {
                return Ok(Outcome::Done);
            };
            // Delivered or read already: the page was open and showed it.
            if delivery.status != "queued" {
                return Ok(Outcome::Done);
            }
            let payload = channels.push_payload(&delivery);
            let (mut taken, mut later) = (0, None);
            for subscription in &delivery.subscriptions {
                let answer = channels.push_to(subscription, &payload, now).await;
                let (scope, id) = (scope.clone(), subscription.id.clone());
                match answer {
                    Answer::Taken => {
                        taken += 1;
                        channels
                            .db()
                            .call(move |c| c.set_push_error(&scope, &id, None))
                            .await?;
                    }
                    Answer::Gone => {
                        tracing::info!(
                            tenant = scope.tenant_id(),
                            "a push subscription ended; dropped"
                        );
                        channels
                            .db()
                            .call(move |c| c.drop_push_subscription(&scope, &id))
                            .await?;
                    }
                    Answer::Later(ref reason) | Answer::Refused(ref reason) => {
                        let reason = reason.clone();
                        if matches!(answer, Answer::Later(_)) {
                            later = Some(reason.clone());
                        }
                        tracing::warn!(tenant = scope.tenant_id(), %reason, "a push was not taken");
                        channels
                            .db()
                            .call(move |c| c.set_push_error(&scope, &id, Some(&reason)))
                            .await?;
                    }
                }
            }
            let (status, error) = match (taken, later) {
                (0, Some(_)) if tries < MAX_TRIES => {
                    let wait = chrono::Duration::seconds(2_i64.pow(tries as u32) * 15);
                    return Ok(Outcome::Again {
                        at: now + wait,
                        payload: serde_json::json!({ "outbox_id": outbox_id, "tries": tries }),
                    });
                }
                (0, Some(reason)) => ("failed", Some(reason)),
                (0, None) => ("failed", Some("no browser took the push".to_string())),
                _ => ("sent", None),
            };
            channels
                .db()
                .call(move |c| c.set_outbound_status(&scope, &outbox_id, status, error.as_deref()))
                .await?;
            Ok(Outcome::Done)
        })
    }
}
