//! A remote inference backend: an OpenAI-compatible server (vLLM, llama.cpp's server, Ollama,
//! TEI, OpenAI itself) that runs the chat model and/or the embedder instead of this process.
//! The engines keep their queue, fairness, streaming, cancellation and deadlines; only the work
//! of a popped job goes over HTTP. Every failure of the server is `InferenceError::Unavailable`
//! with the server's own message, so callers answer 503 `model_unavailable` (or the fallback).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::InferenceError;
use super::chat_template::ChatMessage;
use super::generate::{FinishReason, GenerationSettings, GenerationStats};

/// How long a server may stay silent in the middle of a response before it counts as gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(120);
/// Embedding calls are idempotent: a failed one is tried this many times in all.
const EMBED_ATTEMPTS: u32 = 4;
/// The first wait between embedding attempts; it doubles after each.
const EMBED_BACKOFF: Duration = Duration::from_millis(500);

/// Where a remote backend is: `--llm-url`/`--embed-url` and their key and model name.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The OpenAI base URL, including `/v1`.
    pub url: String,
    pub api_key: Option<String>,
    /// `None`: the first model the server lists.
    pub model: Option<String>,
}

impl std::fmt::Debug for RemoteEndpoint {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEndpoint")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "********"))
            .field("model", &self.model)
            .finish()
    }
}

impl RemoteEndpoint {
    /// Checks the URL's shape; the server itself is reached later, in the background.
    pub fn check(&self) -> Result<(), String> {
        let url = self.url.trim();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| format!("'{url}' is not an http:// or https:// URL"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("'{url}' names no host"));
        }
        Ok(())
    }
}

/// The model a server serves, as its `/models` list describes it.
#[derive(Debug, Clone)]
pub struct RemoteModel {
    pub id: String,
    /// The context window, when the server says (vLLM's `max_model_len`, llama.cpp's
    /// `meta.n_ctx_train`, `context_length`).
    pub context_length: Option<usize>,
}

/// An OpenAI-compatible server. Cheap to clone.
#[derive(Clone)]
pub struct RemoteServer {
    http: platform_http::Client,
    base: String,
    api_key: Option<String>,
}

impl RemoteServer {
    pub fn new(endpoint: &RemoteEndpoint) -> RemoteServer {
        RemoteServer {
            http: platform_http::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client builds"),
            base: endpoint.url.trim().trim_end_matches('/').to_string(),
            api_key: endpoint.api_key.clone().filter(|k| !k.is_empty()),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The model to use: `wanted` when the server lists it (or lists nothing to check against),
    /// else the first one it lists.
    pub async fn pick_model(&self, wanted: Option<&str>) -> Result<RemoteModel, InferenceError> {
        let listed = self
            .send(self.request(platform_http::Method::GET, "models"))
            .await?;
        let models: Vec<RemoteModel> = listed["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                Some(RemoteModel {
                    id: entry["id"].as_str()?.to_string(),
                    context_length: ["max_model_len", "context_length", "context_window"]
                        .iter()
                        .find_map(|key| entry[*key].as_u64())
                        .or_else(|| entry["meta"]["n_ctx_train"].as_u64())
                        .map(|n| n as usize),
                })
            })
            .collect();
        match wanted {
            Some(wanted) => models
                .iter()
                .find(|m| m.id == wanted)
                .cloned()
                .or_else(|| {
                    // Some servers (TEI, a proxy) list nothing useful; the name is trusted.
                    models.is_empty().then(|| RemoteModel {
                        id: wanted.to_string(),
                        context_length: None,
                    })
                })
                .ok_or_else(|| {
                    let names: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
                    InferenceError::Unavailable(format!(
                        "the inference server at {} has no model '{wanted}'; it lists: {}",
                        self.base,
                        names.join(", ")
                    ))
                }),
            None => models.into_iter().next().ok_or_else(|| {
                InferenceError::Unavailable(format!(
                    "the inference server at {} lists no models; name one with --llm-model or \
                     --embed-model",
                    self.base
                ))
            }),
        }
    }

    /// Embeds `inputs` with `model`, in order, trying again with backoff while the server fails.
    pub async fn embed(
        &self,
        model: &str,
        inputs: &[String],
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let body = json!({"model": model, "input": inputs, "encoding_format": "float"});
        let mut wait = EMBED_BACKOFF;
        let mut attempt = 1;
        loop {
            let outcome = self
                .send(
                    self.request(platform_http::Method::POST, "embeddings")
                        .json(&body),
                )
                .await
                .and_then(|answer| self.vectors(&answer, inputs.len()));
            match outcome {
                Ok(vectors) => return Ok(vectors),
                Err(error) if attempt < EMBED_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "remote embedding failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn vectors(&self, answer: &Value, expected: usize) -> Result<Vec<Vec<f32>>, InferenceError> {
        let mut rows: Vec<(usize, Vec<f32>)> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(position, row)| {
                let index = row["index"].as_u64().map_or(position, |i| i as usize);
                let vector = row["embedding"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .map(|x| x as f32)
                    .collect();
                (index, vector)
            })
            .collect();
        rows.sort_by_key(|(index, _)| *index);
        if rows.len() != expected || rows.iter().any(|(_, v)| v.is_empty()) {
            return Err(InferenceError::Unavailable(format!(
                "the inference server at {} returned {} embeddings for {expected} inputs",
                self.base,
                rows.len()
            )));
        }
        // Search compares unit vectors; not every server normalises.
        Ok(rows.into_iter().map(|(_, v)| unit(v)).collect())
    }

    /// Streams one chat completion. `on_delta` gets the text as it arrives and may return
    /// `Break` (the caller left): the connection is dropped, which stops the server too.
    pub async fn stream_chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        settings: &GenerationSettings,
        deadline: Option<Instant>,
        mut on_delta: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats, InferenceError> {
        let started = Instant::now();
        let mut body = json!({
            "model": model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
        });
        if let Some(top_p) = settings.top_p {
            body["top_p"] = json!(top_p);
        }
        if !settings.stop.is_empty() {
            body["stop"] = json!(settings.stop);
        }
        let mut response = self
            .checked(
                self.request(platform_http::Method::POST, "chat/completions")
                    .json(&body),
            )
            .await?;
        let mut lines = SseLines::default();
        let mut stats = Stats::new(started);
        loop {
            let limit = Instant::now() + SILENCE_LIMIT;
            let until = deadline.map_or(limit, |d| d.min(limit));
            let chunk = match tokio::time::timeout_at(until.into(), response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => {
                    return Err(self.gone("closed the stream before the answer was finished"));
                }
                Ok(Err(error)) => return Err(self.gone(&error.to_string())),
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Ok(stats.finish(FinishReason::Deadline));
                }
                Err(_) => return Err(self.gone("stopped sending in the middle of an answer")),
            };
            for data in lines.push(&chunk) {
                if data == "[DONE]" {
                    return Ok(stats.finish(stats.reason.unwrap_or(FinishReason::Stop)));
                }
                let Ok(event) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if let Some(message) = event["error"]["message"].as_str() {
                    return Err(self.gone(message));
                }
                stats.usage(&event["usage"]);
                let Some(choice) = event["choices"].get(0) else {
                    continue;
                };
                if let Some(text) = choice["delta"]["content"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                {
                    stats.delta();
                    if on_delta(text).is_break() {
                        return Ok(stats.finish(FinishReason::Cancelled));
                    }
                }
                match choice["finish_reason"].as_str() {
                    Some("length") => stats.reason = Some(FinishReason::Length),
                    Some(_) => stats.reason = Some(FinishReason::Stop),
                    None => {}
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(stats.finish(FinishReason::Deadline));
            }
        }
    }

    fn request(&self, method: platform_http::Method, path: &str) -> platform_http::RequestBuilder {
        let request = self.http.request(method, format!("{}/{path}", self.base));
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends and checks the status, keeping the body for streaming.
    async fn checked(
        &self,
        request: platform_http::RequestBuilder,
    ) -> Result<platform_http::Response, InferenceError> {
        let response = request
            .timeout(SILENCE_LIMIT)
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|body| {
                body["error"]["message"]
                    .as_str()
                    .or(body["error"].as_str())
                    .or(body["message"].as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(InferenceError::Unavailable(format!(
            "the inference server at {} answered {status}: {message}",
            self.base
        )))
    }

    /// Sends, checks and reads a JSON answer.
    async fn send(&self, request: platform_http::RequestBuilder) -> Result<Value, InferenceError> {
        let response = self.checked(request).await?;
        response
            .json()
            .await
            .map_err(|error| self.gone(&error.to_string()))
    }

    fn unreachable(&self, error: &platform_http::Error) -> InferenceError {
        // reqwest's message names the URL; its cause says why (refused, timed out, DNS).
        let cause = std::error::Error::source(error)
            .map(|cause| format!(": {cause}"))
            .unwrap_or_default();
        InferenceError::Unavailable(format!(
            "the inference server at {} could not be reached ({error}{cause})",
            self.base
        ))
    }

    fn gone(&self, why: &str) -> InferenceError {
        InferenceError::Unavailable(format!(
            "the inference server at {} failed: {why}",
            self.base
        ))
    }
}

fn unit(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// Server-sent events cut into `data:` payloads, across chunk boundaries.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut payloads = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") {
                payloads.push(data.trim_start().to_string());
            }
        }
        payloads
    }
}

/// The figures of one remote completion, in the engine's terms. The server's `usage` wins; a
/// server that sends none gets one token per streamed piece, which is what most of them send.
struct Stats {
    started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    pieces: usize,
    prompt_tokens: Option<usize>,
    completion_tokens: Option<usize>,
    reason: Option<FinishReason>,
}

impl Stats {
    fn new(started: Instant) -> Stats {
        Stats {
            started,
            first: None,
            last: None,
            pieces: 0,
            prompt_tokens: None,
            completion_tokens: None,
            reason: None,
        }
    }

    fn delta(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.pieces += 1;
    }

    fn usage(&mut self, usage: &Value) {
        if let Some(n) = usage["prompt_tokens"].as_u64() {
            self.prompt_tokens = Some(n as usize);
        }
        if let Some(n) = usage["completion_tokens"].as_u64() {
            self.completion_tokens = Some(n as usize);
        }
    }

    fn finish(&self, reason: FinishReason) -> GenerationStats {
        let ttft_s = self
            .first
            .map_or(0.0, |first| (first - self.started).as_secs_f64());
        let completion_tokens = self.completion_tokens.unwrap_or(self.pieces);
        let prompt_tokens = self.prompt_tokens.unwrap_or(0);
        let generating = match (self.first, self.last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        };
        GenerationStats {
            prompt_tokens,
            reused_prompt_tokens: 0,
            completion_tokens,
            ttft_s,
            prefill_tok_s: if ttft_s > 0.0 {
                prompt_tokens as f64 / ttft_s
            } else {
                0.0
            },
            gen_tok_s: if generating > 0.0 {
                completion_tokens.saturating_sub(1) as f64 / generating
            } else {
                0.0
            },
            total_s: self.started.elapsed().as_secs_f64(),
            finish_reason: reason,
        }
    }
}

/// A rough token count for text whose tokenizer lives on the remote server: about three
/// characters a token, which errs long for English and most European languages, so passages
/// and prompts sized with it fit.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_cut_across_chunks() {
        let mut lines = SseLines::default();
        assert!(lines.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            lines.push(b":1}\r\n\r\ndata: [DONE]\n"),
            vec!["{\"a\":1}", "[DONE]"]
        );
        assert!(lines.push(b": keep-alive\n").is_empty());
    }

    #[test]
    fn endpoints_need_an_http_url_and_hide_their_key() {
        let endpoint = RemoteEndpoint {
            url: "localhost:8000/v1".into(),
            api_key: Some("sk-secret".into()),
            model: None,
        };
        assert!(endpoint.check().is_err());
        assert!(!format!("{endpoint:?}").contains("sk-secret"));
        let good = RemoteEndpoint {
            url: "http://gpu-box:8000/v1".into(),
            ..endpoint
        };
        assert!(good.check().is_ok());
    }
}
