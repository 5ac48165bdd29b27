//! Which models this server runs, and their state: missing, downloading, loading, ready or
//! failed. Start-up never waits for a model: the server answers at once, models arrive in the
//! background, and until then `/readyz` and every model call say what is missing and how to get
//! it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::catalog::{self, CatalogEntry, ModelKind};
use super::chat_engine::ChatEngine;
use super::embed::{Embedder, EmbedderOptions};
use super::embed_engine::EmbedEngine;
use super::llm::{Llm, LlmOptions};
use super::remote::{RemoteEndpoint, RemoteServer};
use super::rerank::Reranker;
use super::rerank_engine::RerankEngine;
use super::store::{HubOptions, ModelStore, PullProgress};
use super::{DeviceKind, InferenceError};

/// What `serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ModelPlan {
    /// `--llm NAME|PATH`; `None` means the installed or catalog default.
    pub llm: Option<String>,
    /// `--embedder NAME|PATH`.
    pub embedder: Option<String>,
    /// `--reranker NAME|PATH`; `None` means search runs without one.
    pub reranker: Option<String>,
    pub device: DeviceKind,
    /// Never download; report what is missing instead.
    pub offline: bool,
    pub models_dir: PathBuf,
    pub hub: HubOptions,
    pub queue_capacity: usize,
    pub max_context: usize,
    pub prompt_cache_mb: usize,
    pub embed_dimensions: Option<usize>,
    /// `--llm-url`: chat goes to this OpenAI-compatible server instead of a local model.
    pub remote_llm: Option<RemoteEndpoint>,
    /// `--embed-url`: embeddings go to this server instead of a local model.
    pub remote_embedder: Option<RemoteEndpoint>,
}

/// How often a remote backend is checked again (and, while it is down, tried again).
const REMOTE_CHECK_EVERY: Duration = Duration::from_secs(15);

/// What the last check of a remote backend found, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
struct RemoteStatus {
    url: String,
    reachable: bool,
    /// The model in use, once the server listed it.
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

enum Slot<E> {
    Missing(String),
    Downloading {
        model: String,
        done: u64,
        total: u64,
    },
    Loading {
        model: String,
    },
    Ready(E),
    Failed(String),
}

struct Slots {
    chat: Slot<ChatEngine>,
    embedder: Slot<EmbedEngine>,
    reranker: Slot<RerankEngine>,
    /// A reranker was asked for (without one, its slot is not part of readiness).
    reranker_planned: bool,
    chat_remote: Option<RemoteStatus>,
    embedder_remote: Option<RemoteStatus>,
}

/// The server's models. Cheap to clone.
#[derive(Clone)]
pub struct Inference {
    slots: Arc<Mutex<Slots>>,
}

impl Default for Inference {
    fn default() -> Inference {
        Inference::new()
    }
}

impl Inference {
    /// No models yet.
    pub fn new() -> Inference {
        Inference {
            slots: Arc::new(Mutex::new(Slots {
                chat: Slot::Missing(missing_hint(ModelKind::Chat)),
                embedder: Slot::Missing(missing_hint(ModelKind::Embedder)),
                reranker: Slot::Missing("no reranker is configured (--reranker)".into()),
                reranker_planned: false,
                chat_remote: None,
                embedder_remote: None,
            })),
        }
    }

    /// Resolves, downloads (unless offline) and loads the planned models in the background.
    pub fn start(&self, plan: ModelPlan) {
        let store = ModelStore::new(&plan.models_dir);
        for kind in [ModelKind::Chat, ModelKind::Embedder, ModelKind::Reranker] {
            let requested = match kind {
                ModelKind::Chat => plan.llm.as_deref(),
                ModelKind::Embedder => plan.embedder.as_deref(),
                ModelKind::Reranker => plan.reranker.as_deref(),
            };
            let requested = requested.filter(|r| !r.trim().is_empty());
            let remote = match kind {
                ModelKind::Chat => plan.remote_llm.clone(),
                ModelKind::Embedder => plan.remote_embedder.clone(),
                ModelKind::Reranker => None,
            };
            if let Some(endpoint) = remote {
                let this = self.clone();
                let plan = plan.clone();
                tokio::spawn(async move { this.follow_remote(kind, endpoint, &plan).await });
                continue;
            }
            if kind == ModelKind::Reranker {
                if requested.is_none() {
                    continue;
                }
                self.slots.lock().expect("slots").reranker_planned = true;
            }
            let resolved = resolve(kind, requested, &store, plan.offline);
            let this = self.clone();
            let plan = plan.clone();
            match resolved {
                Resolved::Missing(hint) => {
                    tracing::warn!(%kind, "{hint}");
                    this.set(kind, SlotState::Missing(hint));
                }
                Resolved::Path(path) => {
                    tokio::spawn(async move { this.load(kind, path, &plan).await });
                }
                Resolved::Pull(entry) => {
                    tokio::spawn(async move { this.pull_then_load(kind, entry, &plan).await });
                }
            }
        }
    }

    /// The chat engine, or a `NotReady` error saying why there is none.
    pub fn chat(&self) -> Result<ChatEngine, InferenceError> {
        match &self.slots.lock().expect("slots").chat {
            Slot::Ready(engine) => Ok(engine.clone()),
            other => Err(not_ready(ModelKind::Chat, other)),
        }
    }

    /// The embedding engine, or a `NotReady` error saying why there is none.
    pub fn embedder(&self) -> Result<EmbedEngine, InferenceError> {
        match &self.slots.lock().expect("slots").embedder {
            Slot::Ready(engine) => Ok(engine.clone()),
            other => Err(not_ready(ModelKind::Embedder, other)),
        }
    }

    /// The reranker, when one is configured and ready.
    pub fn reranker(&self) -> Option<RerankEngine> {
        match &self.slots.lock().expect("slots").reranker {
            Slot::Ready(engine) => Some(engine.clone()),
            _ => None,
        }
    }

    /// A model is downloading or loading: work that needs it should wait rather than fail.
    pub fn on_its_way(&self) -> bool {
        let slots = self.slots.lock().expect("slots");
        matches!(slots.chat, Slot::Loading { .. } | Slot::Downloading { .. })
            || matches!(
                slots.embedder,
                Slot::Loading { .. } | Slot::Downloading { .. }
            )
    }

    /// Puts a loaded chat engine in place (tests and benchmarks load models themselves).
    pub fn install_chat(&self, engine: ChatEngine) {
        self.slots.lock().expect("slots").chat = Slot::Ready(engine);
    }

    pub fn install_embedder(&self, engine: EmbedEngine) {
        self.slots.lock().expect("slots").embedder = Slot::Ready(engine);
    }

    pub fn install_reranker(&self, engine: RerankEngine) {
        let mut slots = self.slots.lock().expect("slots");
        slots.reranker = Slot::Ready(engine);
        slots.reranker_planned = true;
    }

    /// Each model's readiness, for `/readyz` (the reranker only when one was asked for). A
    /// remote backend is ready while its last check reached it.
    pub fn readiness(&self) -> Vec<(&'static str, bool, Value)> {
        let slots = self.slots.lock().expect("slots");
        let with_remote = |mut value: Value, remote: &Option<RemoteStatus>, cache: bool| {
            if let Some(remote) = remote {
                value["remote"] = json!(remote);
                if cache {
                    value["prompt_cache"] = json!(
                        "not used: the prompt cache holds attention state of the in-process \
                         model, and a remote server keeps its own"
                    );
                }
                if !remote.reachable {
                    value["state"] = json!("unreachable");
                    value["message"] = json!(remote.message);
                }
            }
            value
        };
        let reachable = |remote: &Option<RemoteStatus>| remote.as_ref().is_none_or(|r| r.reachable);
        let mut components = vec![
            (
                "llm",
                ready(&slots.chat) && reachable(&slots.chat_remote),
                with_remote(
                    describe(&slots.chat, |e| json!(e.info())),
                    &slots.chat_remote,
                    true,
                ),
            ),
            (
                "embedder",
                ready(&slots.embedder) && reachable(&slots.embedder_remote),
                with_remote(
                    describe(&slots.embedder, |e| json!(e.info())),
                    &slots.embedder_remote,
                    false,
                ),
            ),
        ];
        if slots.reranker_planned {
            components.push((
                "reranker",
                ready(&slots.reranker),
                describe(&slots.reranker, |e| json!(e.info())),
            ));
        }
        components
    }

    /// Connects to a remote backend, installs its engine once the server answers, then checks
    /// it every [`REMOTE_CHECK_EVERY`] for `/readyz`. Never gives up: the server may start
    /// after this one, or come back after a restart.
    async fn follow_remote(&self, kind: ModelKind, endpoint: RemoteEndpoint, plan: &ModelPlan) {
        let server = RemoteServer::new(&endpoint);
        let url = server.url().to_string();
        tracing::info!(%kind, %url, "using a remote inference server");
        self.set(kind, SlotState::Loading(format!("{url} (remote)")));
        let mut installed = false;
        loop {
            let checked = self
                .check_remote(kind, &server, &endpoint, plan, installed)
                .await;
            let status = match checked {
                Ok(status) => {
                    if !installed {
                        tracing::info!(%kind, %url, model = ?status.model, "remote backend ready");
                    }
                    installed = true;
                    status
                }
                Err(error) => {
                    tracing::warn!(%kind, %error, "remote inference server not available");
                    let message = format!(
                        "{error}; trying again every {} s",
                        REMOTE_CHECK_EVERY.as_secs()
                    );
                    if !installed {
                        self.set(kind, SlotState::Failed(message.clone()));
                    }
                    RemoteStatus {
                        url: url.clone(),
                        reachable: false,
                        model: None,
                        dimensions: None,
                        message: Some(message),
                    }
                }
            };
            {
                let mut slots = self.slots.lock().expect("slots");
                match kind {
                    ModelKind::Chat => slots.chat_remote = Some(status),
                    _ => slots.embedder_remote = Some(status),
                }
            }
            tokio::time::sleep(REMOTE_CHECK_EVERY).await;
        }
    }

    /// One check: the model is listed (and, for an embedder, answers with its dimensions). The
    /// first success installs the engine.
    async fn check_remote(
        &self,
        kind: ModelKind,
        server: &RemoteServer,
        endpoint: &RemoteEndpoint,
        plan: &ModelPlan,
        installed: bool,
    ) -> Result<RemoteStatus, InferenceError> {
        let model = server.pick_model(endpoint.model.as_deref()).await?;
        let mut dimensions = None;
        match kind {
            ModelKind::Chat if !installed => {
                let engine = ChatEngine::start_remote(
                    server.clone(),
                    model.clone(),
                    plan.max_context,
                    plan.queue_capacity,
                )?;
                self.slots.lock().expect("slots").chat = Slot::Ready(engine);
            }
            ModelKind::Embedder => {
                let probe = server.embed(&model.id, &["dimensions".to_string()]).await?;
                let found = probe.first().map_or(0, Vec::len);
                dimensions = Some(found);
                if !installed {
                    let engine = EmbedEngine::start_remote(
                        server.clone(),
                        model.clone(),
                        found,
                        plan.queue_capacity,
                    )?;
                    self.slots.lock().expect("slots").embedder = Slot::Ready(engine);
                }
            }
            _ => {}
        }
        Ok(RemoteStatus {
            url: server.url().to_string(),
            reachable: true,
            model: Some(model.id),
            dimensions,
            message: None,
        })
    }

    async fn pull_then_load(
        &self,
        kind: ModelKind,
        entry: &'static CatalogEntry,
        plan: &ModelPlan,
    ) {
        tracing::info!(model = %entry.name, size_mb = entry.size_mb, "downloading {kind} model");
        self.set(kind, SlotState::Downloading(entry.name.clone(), 0, 0));
        let store = ModelStore::new(&plan.models_dir);
        let progress = SlotProgress {
            inference: self.clone(),
            kind,
            model: entry.name.clone(),
        };
        match store.pull(entry, &plan.hub, progress).await {
            Ok(installed) => {
                tracing::info!(model = %entry.name, "download complete");
                self.load(kind, installed.load_path(), plan).await;
            }
            Err(error) => {
                let message = format!(
                    "could not download the {kind} model {}: {error}. Retry with `companero \
                     models pull {}`, or start with --{} PATH",
                    entry.name,
                    entry.name,
                    flag(kind)
                );
                tracing::error!("{message}");
                self.set(kind, SlotState::Failed(message));
            }
        }
    }

    async fn load(&self, kind: ModelKind, path: PathBuf, plan: &ModelPlan) {
        let model = path.display().to_string();
        tracing::info!(%kind, %model, "loading model");
        self.set(kind, SlotState::Loading(model.clone()));
        let device = plan.device;
        let llm_options = LlmOptions {
            max_context: plan.max_context,
            prompt_cache_mb: plan.prompt_cache_mb,
            ..LlmOptions::default()
        };
        let capacity = plan.queue_capacity;
        let options = EmbedderOptions {
            dimensions: plan.embed_dimensions,
            ..EmbedderOptions::default()
        };
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Result<(), InferenceError> {
            let device = device.open()?;
            match kind {
                ModelKind::Chat => {
                    let engine =
                        ChatEngine::start(Llm::load_with(&path, &device, &llm_options)?, capacity);
                    tracing::info!(info = ?engine.info(), "chat model ready");
                    this.slots.lock().expect("slots").chat = Slot::Ready(engine);
                }
                ModelKind::Embedder => {
                    let embedder = Embedder::load(&path, &device, &options)?;
                    let engine = EmbedEngine::start(embedder, capacity)?;
                    tracing::info!(info = ?engine.info(), "embedder ready");
                    this.slots.lock().expect("slots").embedder = Slot::Ready(engine);
                }
                ModelKind::Reranker => {
                    let reranker = Reranker::load(&path, &device, Default::default())?;
                    let engine = RerankEngine::start(reranker, capacity);
                    tracing::info!(info = ?engine.info(), "reranker ready");
                    this.slots.lock().expect("slots").reranker = Slot::Ready(engine);
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(InferenceError::Load(format!("loading crashed: {e}"))));
        if let Err(error) = outcome {
            let message = format!("the {kind} model {model} failed to load: {error}");
            tracing::error!("{message}");
            self.set(kind, SlotState::Failed(message));
        }
    }

    fn set(&self, kind: ModelKind, state: SlotState) {
        let mut slots = self.slots.lock().expect("slots");
        match kind {
            ModelKind::Chat => slots.chat = state.into_slot(),
            ModelKind::Embedder => slots.embedder = state.into_slot(),
            ModelKind::Reranker => slots.reranker = state.into_slot(),
        }
    }
}

/// A slot state without an engine, so one setter serves both kinds.
enum SlotState {
    Missing(String),
    Downloading(String, u64, u64),
    Loading(String),
    Failed(String),
}

impl SlotState {
    fn into_slot<E>(self) -> Slot<E> {
        match self {
            SlotState::Missing(hint) => Slot::Missing(hint),
            SlotState::Downloading(model, done, total) => Slot::Downloading { model, done, total },
            SlotState::Loading(model) => Slot::Loading { model },
            SlotState::Failed(message) => Slot::Failed(message),
        }
    }
}

#[derive(Clone)]
struct SlotProgress {
    inference: Inference,
    kind: ModelKind,
    model: String,
}

impl PullProgress for SlotProgress {
    fn started(&self, file: &str, bytes: u64) {
        tracing::info!(model = %self.model, %file, mb = bytes / 1_000_000, "downloading file");
        self.inference.set(
            self.kind,
            SlotState::Downloading(self.model.clone(), 0, bytes),
        );
    }

    fn advanced(&self, bytes: u64) {
        let mut slots = self.inference.slots.lock().expect("slots");
        let slot_done = match self.kind {
            ModelKind::Chat => match &mut slots.chat {
                Slot::Downloading { done, total, .. } => Some((done, *total)),
                _ => None,
            },
            ModelKind::Embedder => match &mut slots.embedder {
                Slot::Downloading { done, total, .. } => Some((done, *total)),
                _ => None,
            },
            ModelKind::Reranker => match &mut slots.reranker {
                Slot::Downloading { done, total, .. } => Some((done, *total)),
                _ => None,
            },
        };
        if let Some((done, total)) = slot_done {
            let before = percent(*done, total) / 10;
            *done += bytes;
            if percent(*done, total) / 10 > before {
                tracing::info!(model = %self.model, percent = percent(*done, total), "download progress");
            }
        }
    }

    fn finished_file(&self) {}
}

fn percent(done: u64, total: u64) -> u64 {
    (done * 100).checked_div(total).unwrap_or(0)
}

enum Resolved {
    Path(PathBuf),
    Pull(&'static CatalogEntry),
    Missing(String),
}

fn resolve(
    kind: ModelKind,
    requested: Option<&str>,
    store: &ModelStore,
    offline: bool,
) -> Resolved {
    if let Some(requested) = requested {
        let path = Path::new(requested);
        if path.exists() {
            return Resolved::Path(path.to_path_buf());
        }
        if let Some(installed) = store.get(requested) {
            return Resolved::Path(installed.load_path());
        }
        return match catalog::find(requested) {
            Some(entry) if entry.kind != kind => Resolved::Missing(format!(
                "'{requested}' is a {} model, not a {kind} model; see `companero models list`",
                entry.kind
            )),
            Some(entry) if offline || entry.repo.is_none() => Resolved::Missing(format!(
                "the {kind} model '{requested}' is not installed: run `companero models pull {}`",
                entry.name
            )),
            Some(entry) => Resolved::Pull(entry),
            None => Resolved::Missing(format!(
                "--{} '{requested}' is neither an existing path nor a known model name; see \
                 `companero models list`",
                flag(kind)
            )),
        };
    }
    let default = catalog::default_for(kind);
    let installed = store.list();
    if let Some(model) = installed
        .iter()
        .find(|m| m.manifest.name == default.name)
        .or_else(|| installed.iter().find(|m| m.manifest.kind == kind))
    {
        return Resolved::Path(model.load_path());
    }
    if offline {
        Resolved::Missing(missing_hint(kind))
    } else {
        Resolved::Pull(default)
    }
}

fn flag(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Chat => "llm",
        ModelKind::Embedder => "embedder",
        ModelKind::Reranker => "reranker",
    }
}

fn missing_hint(kind: ModelKind) -> String {
    format!(
        "no {kind} model is installed: run `companero models pull {}` (or import one with \
         `companero models import PATH`), or start with --{} PATH",
        catalog::default_for(kind).name,
        flag(kind)
    )
}

fn ready<E>(slot: &Slot<E>) -> bool {
    matches!(slot, Slot::Ready(_))
}

fn describe<E>(slot: &Slot<E>, info: impl Fn(&E) -> Value) -> Value {
    match slot {
        Slot::Ready(engine) => {
            let mut value = info(engine);
            value["state"] = json!("ready");
            value
        }
        Slot::Missing(hint) => json!({"state": "missing", "message": hint}),
        Slot::Downloading { model, done, total } => json!({
            "state": "downloading",
            "model": model,
            "downloaded_bytes": done,
            "total_bytes": total,
            "message": format!("downloading {model} ({}%)", percent(*done, *total)),
        }),
        Slot::Loading { model } => {
            json!({"state": "loading", "model": model, "message": format!("loading {model}")})
        }
        Slot::Failed(message) => json!({"state": "failed", "message": message}),
    }
}

fn not_ready<E>(kind: ModelKind, slot: &Slot<E>) -> InferenceError {
    InferenceError::NotReady(match slot {
        Slot::Missing(hint) => hint.clone(),
        Slot::Downloading { model, done, total } => format!(
            "the {kind} model {model} is still downloading ({}%); try again in a few minutes",
            percent(*done, *total)
        ),
        Slot::Loading { model } => {
            format!("the {kind} model {model} is loading; try again in a few seconds")
        }
        Slot::Failed(message) => message.clone(),
        Slot::Ready(_) => unreachable!("ready slots are not errors"),
    })
}
