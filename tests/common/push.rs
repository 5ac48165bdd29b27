//! A stand-in push service (RFC 8030): it takes `POST /push/{id}` as a browser's push service
//! would, keeps each request's headers and body, and can be told to answer a status instead of
//! 201 (410: the subscription is gone). The test holds the browser's half: a P-256 key pair and
//! an auth secret of its own, so it can decrypt what arrives (RFC 8291) and check the VAPID JWT
//! (RFC 8292).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{Value, json};

/// One push the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub subscription: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct World {
    received: Vec<Received>,
    answers: VecDeque<u16>,
}

#[derive(Clone)]
pub struct PushStandIn {
    pub url: String,
    world: Arc<Mutex<World>>,
}

impl PushStandIn {
    pub async fn start() -> PushStandIn {
        let world = Arc::new(Mutex::new(World::default()));
        let app = axum::Router::new()
            .route("/push/{id}", post(take))
            .with_state(world.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        PushStandIn { url, world }
    }

    /// The next push is answered `status` instead of 201.
    pub fn answer_next(&self, status: u16) {
        self.world.lock().unwrap().answers.push_back(status);
    }

    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.world.lock().unwrap().received.clone();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} pushes arrived",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn take(
    State(world): State<Arc<Mutex<World>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut world = world.lock().unwrap();
    world.received.push(Received {
        subscription: id,
        headers,
        body: body.to_vec(),
    });
    let status = world.answers.pop_front().unwrap_or(201);
    StatusCode::from_u16(status).unwrap()
}

/// A browser's side of a subscription.
pub struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
    pub endpoint: String,
}

impl Browser {
    pub fn new(stand_in: &PushStandIn, id: &str) -> Browser {
        let mut auth = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut auth);
        Browser {
            secret: p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
            auth,
            endpoint: format!("{}/push/{id}", stand_in.url),
        }
    }

    /// What `PushSubscription.toJSON()` gives.
    pub fn subscription(&self) -> Value {
        let public = self.secret.public_key().to_encoded_point(false);
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(public.as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }

    /// The push's payload, decrypted as the browser would (RFC 8291, aes128gcm).
    pub fn decrypt(&self, push: &Received) -> Value {
        assert_eq!(push.headers["content-encoding"], "aes128gcm");
        let plain = web_push_native::decrypt(
            push.body.clone(),
            &self.secret,
            web_push_native::Auth::from_slice(&self.auth),
        )
        .expect("the push decrypts with the browser's key and auth secret");
        serde_json::from_slice(&plain).unwrap()
    }
}

/// The VAPID claims of a push, once its JWT is verified with the key it names:
/// `Authorization: vapid t=<jwt>, k=<key>`. Returns the claims and `k`.
pub fn vapid_claims(push: &Received) -> (Value, String) {
    let header = push.headers["authorization"].to_str().unwrap();
    let rest = header
        .strip_prefix("vapid ")
        .expect("a vapid authorization");
    let mut token = None;
    let mut key = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(t) = part.strip_prefix("t=") {
            token = Some(t.to_string());
        } else if let Some(k) = part.strip_prefix("k=") {
            key = Some(k.to_string());
        }
    }
    let (token, key) = (token.unwrap(), key.unwrap());
    let point = URL_SAFE_NO_PAD.decode(&key).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_ec_der(&point);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation)
        .expect("the VAPID JWT verifies with the key it names");
    (data.claims, key)
}
