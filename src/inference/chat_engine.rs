//! The chat engine: one dedicated thread owns the model and serves a fair, bounded queue. Callers
//! on the async runtime get a stream of text deltas; dropping the stream stops the generation at
//! the next token. With a remote backend, a few threads serve the same queue over HTTP.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::mpsc;

use super::InferenceError;
use super::chat_template::{ChatMessage, Role};
use super::generate::{self, GenerationSettings, GenerationStats};
use super::llm::{Llm, LlmInfo};
use super::queue::{CloseOnDrop, FairQueue};
use super::remote::{self, RemoteModel, RemoteServer};

/// Tokens always left for the answer when a long conversation is trimmed to fit the context.
const MIN_ANSWER_TOKENS: usize = 64;
/// Requests a remote backend runs at once; the rest wait in the fair queue, as locally.
pub const REMOTE_WORKERS: usize = 4;

/// Each remote worker thread drives its HTTP calls on a runtime of its own, so model calls
/// never block tokio's threads, as with a local model.
pub(super) fn remote_runtime() -> Result<tokio::runtime::Runtime, InferenceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| InferenceError::Load(format!("a runtime for remote calls: {e}")))
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub settings: GenerationSettings,
    /// Generation stops (finish reason `deadline`) when this passes.
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone)]
pub enum ChatEvent {
    /// The next piece of the answer.
    Delta(String),
    /// The answer is complete.
    Done(ChatSummary),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatSummary {
    #[serde(flatten)]
    pub stats: GenerationStats,
    /// Older messages left out so the conversation fits the model's context.
    pub dropped_messages: usize,
    pub queue_wait_s: f64,
}

type Forget = Arc<std::sync::Mutex<Vec<String>>>;

struct ChatJob {
    /// Whose request: attention state is reused only within one tenant.
    tenant: String,
    request: ChatRequest,
    events: mpsc::UnboundedSender<Result<ChatEvent, InferenceError>>,
    enqueued: Instant,
}

/// A handle to the chat model's thread. Cheap to clone.
#[derive(Clone)]
pub struct ChatEngine {
    queue: Arc<FairQueue<ChatJob>>,
    /// Tenants whose kept attention state must go, dropped by the model's thread before it
    /// takes its next job.
    forget: Forget,
    info: Arc<LlmInfo>,
    _worker: Arc<CloseOnDrop<ChatJob>>,
}

impl ChatEngine {
    /// Starts the model's thread. At most `queue_capacity` requests wait; more are refused.
    pub fn start(llm: Llm, queue_capacity: usize) -> ChatEngine {
        let queue = Arc::new(FairQueue::new("llm", queue_capacity));
        let info = Arc::new(llm.info.clone());
        let worker_queue = Arc::clone(&queue);
        let forget = Forget::default();
        let worker_forget = Arc::clone(&forget);
        std::thread::Builder::new()
            .name("companero-llm".into())
            .spawn(move || run_worker(Backend::Local(Box::new(llm)), &worker_queue, &worker_forget))
            .expect("spawn the model thread");
        ChatEngine {
            _worker: Arc::new(CloseOnDrop(Arc::clone(&queue))),
            queue,
            forget,
            info,
        }
    }

    /// Serves the same queue from `model` on a remote OpenAI-compatible server, with
    /// [`REMOTE_WORKERS`] requests in flight at once (a GPU server batches them).
    pub fn start_remote(
        server: RemoteServer,
        model: RemoteModel,
        max_context: usize,
        queue_capacity: usize,
    ) -> Result<ChatEngine, InferenceError> {
        let queue = Arc::new(FairQueue::new("llm", queue_capacity));
        let context_length = model.context_length.unwrap_or(max_context).min(max_context);
        let info = Arc::new(LlmInfo {
            name: model.id.clone(),
            path: std::path::PathBuf::new(),
            architecture: "remote".into(),
            context_length,
            chat_template: "the server's",
            load_seconds: 0.0,
            kernels: "remote".into(),
            remote: Some(server.url().to_string()),
        });
        for worker in 0..REMOTE_WORKERS {
            let runtime = remote_runtime()?;
            let backend = Backend::Remote {
                server: server.clone(),
                model: model.id.clone(),
                context_length,
                runtime,
            };
            let worker_queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("companero-llm-remote-{worker}"))
                .spawn(move || run_worker(backend, &worker_queue, &Forget::default()))
                .expect("spawn a remote model thread");
        }
        Ok(ChatEngine {
            _worker: Arc::new(CloseOnDrop(Arc::clone(&queue))),
            queue,
            forget: Forget::default(),
            info,
        })
    }

    pub fn info(&self) -> &LlmInfo {
        &self.info
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Queues a chat turn for `tenant`. Fails at once with `Overloaded` when the queue is full.
    pub fn chat(&self, tenant: &str, request: ChatRequest) -> Result<ChatStream, InferenceError> {
        if !request.messages.iter().any(|m| m.role == Role::User) {
            return Err(InferenceError::InvalidRequest(
                "a chat needs at least one user message".into(),
            ));
        }
        let (events, receiver) = mpsc::unbounded_channel();
        self.queue.push(
            tenant,
            ChatJob {
                tenant: tenant.to_string(),
                request,
                events,
                enqueued: Instant::now(),
            },
        )?;
        Ok(ChatStream { receiver })
    }
}

impl ChatEngine {
    /// Drops the attention state kept for `tenant` (it holds the words of recent prompts),
    /// before the model answers anything else. An empty job wakes the model's thread for it;
    /// when the queue is full the next job does.
    pub fn forget(&self, tenant: &str) {
        self.forget
            .lock()
            .expect("forget lock")
            .push(tenant.to_string());
        let (events, _) = mpsc::unbounded_channel();
        let wake = ChatJob {
            tenant: tenant.to_string(),
            request: ChatRequest {
                messages: Vec::new(),
                settings: GenerationSettings::default(),
                deadline: None,
            },
            events,
            enqueued: Instant::now(),
        };
        let _ = self.queue.push(tenant, wake);
    }
}

/// The answer as it is generated. Ends after `Done` or an error.
pub struct ChatStream {
    receiver: mpsc::UnboundedReceiver<Result<ChatEvent, InferenceError>>,
}

impl ChatStream {
    /// Waits for the whole answer.
    pub async fn collect(mut self) -> Result<(String, ChatSummary), InferenceError> {
        let mut text = String::new();
        while let Some(event) = self.receiver.recv().await {
            match event? {
                ChatEvent::Delta(delta) => text.push_str(&delta),
                ChatEvent::Done(summary) => return Ok((text, summary)),
            }
        }
        Err(InferenceError::ShuttingDown)
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatEvent, InferenceError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

/// What runs a popped job: the model in this process, or a remote server.
enum Backend {
    Local(Box<Llm>),
    Remote {
        server: RemoteServer,
        model: String,
        context_length: usize,
        /// Each remote worker thread waits on its HTTP calls in its own small runtime.
        runtime: tokio::runtime::Runtime,
    },
}

impl Backend {
    fn answer(
        &mut self,
        tenant: &str,
        request: &ChatRequest,
        on_delta: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<(GenerationStats, usize), InferenceError> {
        match self {
            Backend::Local(llm) => answer(llm, tenant, request, on_delta),
            Backend::Remote {
                server,
                model,
                context_length,
                runtime,
            } => {
                let (messages, dropped) = fit_messages(
                    &request.messages,
                    *context_length,
                    request.settings.max_tokens,
                )?;
                let stats = runtime.block_on(server.stream_chat(
                    model,
                    &messages,
                    &request.settings,
                    request.deadline,
                    on_delta,
                ))?;
                Ok((stats, dropped))
            }
        }
    }
}

fn run_worker(mut backend: Backend, queue: &FairQueue<ChatJob>, forget: &Forget) {
    while let Some(job) = queue.pop() {
        let forgotten = std::mem::take(&mut *forget.lock().expect("forget lock"));
        if let Backend::Local(llm) = &mut backend {
            forgotten.iter().for_each(|tenant| llm.forget(tenant));
        }
        if job.events.is_closed() {
            continue; // the caller left while waiting
        }
        let started = Instant::now();
        let queue_wait = started.duration_since(job.enqueued);
        metrics::histogram!("inference_queue_wait_seconds", "engine" => "llm")
            .record(queue_wait.as_secs_f64());
        let events = job.events.clone();
        // A panic inside the model must fail this request, not the thread that serves all.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            backend.answer(&job.tenant, &job.request, |delta| {
                match events.send(Ok(ChatEvent::Delta(delta.to_string()))) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            })
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(InferenceError::Model(format!(
                "the model failed: {message}"
            )))
        });
        queue.record_job_time(started.elapsed());
        match outcome {
            Ok((stats, dropped_messages)) => {
                record_metrics(&stats);
                let _ = job.events.send(Ok(ChatEvent::Done(ChatSummary {
                    stats,
                    dropped_messages,
                    queue_wait_s: queue_wait.as_secs_f64(),
                })));
            }
            Err(error) => {
                tracing::warn!(%error, "generation failed");
                metrics::counter!("inference_errors_total", "engine" => "llm").increment(1);
                let _ = job.events.send(Err(error));
            }
        }
    }
}

fn answer(
    llm: &mut Llm,
    tenant: &str,
    request: &ChatRequest,
    on_delta: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<(GenerationStats, usize), InferenceError> {
    let (prompt, dropped) = fit_prompt(llm, &request.messages, request.settings.max_tokens)?;
    let stats = generate::generate(
        llm,
        tenant,
        &prompt,
        &request.settings,
        request.deadline,
        on_delta,
    )?;
    Ok((stats, dropped))
}

/// Renders and tokenizes the conversation, leaving out the oldest turns (never the system
/// message or the last message) until prompt and answer fit the context.
pub fn fit_prompt(
    llm: &Llm,
    messages: &[ChatMessage],
    max_tokens: usize,
) -> Result<(Vec<u32>, usize), InferenceError> {
    fit(messages, llm.info.context_length, max_tokens, |kept| {
        let prompt = llm.tokenizer.encode(&llm.template.render(kept)?)?;
        let tokens = prompt.len();
        Ok((prompt, tokens))
    })
}

/// The same trimming for a remote model, whose tokenizer is on the server: messages are counted
/// with [`remote::estimate_tokens`], plus a few tokens each for the template's markers.
fn fit_messages(
    messages: &[ChatMessage],
    context: usize,
    max_tokens: usize,
) -> Result<(Vec<ChatMessage>, usize), InferenceError> {
    fit(messages, context, max_tokens, |kept| {
        let tokens = kept
            .iter()
            .map(|m| remote::estimate_tokens(&m.content) + 8)
            .sum();
        Ok((kept.to_vec(), tokens))
    })
}

/// Drops the oldest turns until `render`'s prompt (and its token count) leaves room for the
/// answer in `context`.
fn fit<P>(
    messages: &[ChatMessage],
    context: usize,
    max_tokens: usize,
    render: impl Fn(&[ChatMessage]) -> Result<(P, usize), InferenceError>,
) -> Result<(P, usize), InferenceError> {
    let answer_room = max_tokens.clamp(1, MIN_ANSWER_TOKENS.max(context / 2));
    let mut kept: Vec<ChatMessage> = messages.to_vec();
    let mut dropped = 0;
    loop {
        let (prompt, tokens) = render(&kept)?;
        if tokens + answer_room <= context {
            return Ok((prompt, dropped));
        }
        // The oldest turn that is neither the system message nor the last message.
        let removable = kept
            .iter()
            .enumerate()
            .take(kept.len().saturating_sub(1))
            .find(|(_, m)| m.role != Role::System)
            .map(|(i, _)| i);
        match removable {
            Some(index) => {
                kept.remove(index);
                dropped += 1;
                // Keep the conversation starting with the user, as most templates require.
                while let Some(i) = kept
                    .iter()
                    .position(|m| m.role != Role::System)
                    .filter(|&i| kept[i].role == Role::Assistant && i + 1 < kept.len())
                {
                    kept.remove(i);
                    dropped += 1;
                }
            }
            None if tokens + MIN_ANSWER_TOKENS.min(context / 4) <= context => {
                return Ok((prompt, dropped));
            }
            None => {
                return Err(InferenceError::ContextOverflow {
                    prompt_tokens: tokens,
                    context_length: context,
                });
            }
        }
    }
}

fn record_metrics(stats: &GenerationStats) {
    metrics::histogram!("inference_time_to_first_token_seconds").record(stats.ttft_s);
    metrics::histogram!("inference_generation_tokens_per_second").record(stats.gen_tok_s);
    metrics::counter!("inference_tokens_total", "kind" => "prompt")
        .increment(stats.prompt_tokens as u64);
    metrics::counter!("inference_tokens_total", "kind" => "completion")
        .increment(stats.completion_tokens as u64);
    let reason = serde_json::to_value(stats.finish_reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    metrics::counter!("inference_requests_total", "engine" => "llm", "finish_reason" => reason)
        .increment(1);
}
