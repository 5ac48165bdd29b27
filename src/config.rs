//! Layered configuration: command-line flag > environment variable > `companero.toml` in the data
//! directory > built-in default.
//!
//! clap already merges flags and `COMPANERO_*` variables (and tells us which one supplied a
//! value); this module adds the file and the defaults, and remembers where each value came from so
//! that `companero config` can explain the effective configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use ipnet::IpNet;

use crate::auth::accounts::SignupPolicy;
use crate::auth::rate_limit::RateLimits;
use crate::http::tls::TlsFiles;
use crate::inference::DeviceKind;
use crate::inference::remote::RemoteEndpoint;

/// Name of the optional configuration file inside the data directory.
pub const CONFIG_FILE_NAME: &str = "companero.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The data-directory option, shared by every command that opens one.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataDirArgs {
    /// Where the database, vector index, models and keys live
    /// [default: ~/.local/share/companero]
    #[arg(long, env = "COMPANERO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// The data directory from the flag or environment, or the per-user default.
    pub fn resolve(&self) -> anyhow::Result<(PathBuf, Source)> {
        if let Some(dir) = &self.data_dir {
            return Ok((dir.clone(), Source::FlagOrEnv));
        }
        let dirs = directories::ProjectDirs::from("", "", "companero").context(
            "cannot find a home directory for the default data directory; pass --data-dir",
        )?;
        Ok((dirs.data_dir().to_path_buf(), Source::Default))
    }
}

/// Server options. Every field is optional here so that the file and the defaults can fill the
/// gaps; [`Config::resolve`] turns them into the effective configuration.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataDirArgs,

    /// Address and port to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "COMPANERO_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,

    /// Log line format [default: text]
    #[arg(long, env = "COMPANERO_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. `info` or `companero=debug,tower_http=info` [default: info]
    #[arg(long, env = "COMPANERO_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Seconds that in-flight requests get to finish after a shutdown signal [default: 10]
    #[arg(long, env = "COMPANERO_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,

    /// Seconds a request may take before it is answered with a timeout error; streams (SSE,
    /// WebSocket) are not cut by it once they have started [default: 60]
    #[arg(long, env = "COMPANERO_REQUEST_TIMEOUT_SECS", value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,

    /// Largest request body accepted by the JSON API, in bytes [default: 2097152]
    #[arg(long, env = "COMPANERO_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Chat model: a catalog or installed model name, or a path to a .gguf file
    /// [default: the installed chat model, else the catalog default, downloaded in the background]
    #[arg(long, env = "COMPANERO_LLM", value_name = "NAME|PATH")]
    pub llm: Option<String>,

    /// Embedder: a catalog or installed model name, or a folder with model.safetensors,
    /// config.json and tokenizer.json [default: like --llm]
    #[arg(long, env = "COMPANERO_EMBEDDER", value_name = "NAME|PATH")]
    pub embedder: Option<String>,

    /// Cross-encoder that reorders search's best candidates: a catalog or installed model name,
    /// or a folder with a BERT or XLM-RoBERTa sequence classifier [default: none]
    #[arg(long, env = "COMPANERO_RERANKER", value_name = "NAME|PATH")]
    pub reranker: Option<String>,

    /// Where models run [default: cpu]
    #[arg(long, env = "COMPANERO_DEVICE", value_enum)]
    pub device: Option<DeviceKind>,

    /// CPU threads for model work [default: the number of cores]
    #[arg(long, env = "COMPANERO_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// Never download models; report what is missing instead [default: false]
    #[arg(
        long,
        env = "COMPANERO_OFFLINE",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub offline: Option<bool>,

    /// Most tokens (prompt and answer) one chat call may use [default: 8192]
    #[arg(long, env = "COMPANERO_MAX_CONTEXT", value_name = "TOKENS")]
    pub max_context: Option<usize>,

    /// Memory for the attention state kept between chat requests (system prompts, recent
    /// conversations), so follow-ups skip what they share; 0 turns it off [default: 256]
    #[arg(long, env = "COMPANERO_PROMPT_CACHE_MB", value_name = "MB")]
    pub prompt_cache_mb: Option<usize>,

    /// Model requests that may wait; more are refused with 429 and Retry-After [default: 32]
    #[arg(long, env = "COMPANERO_INFERENCE_QUEUE", value_name = "N")]
    pub inference_queue: Option<usize>,

    /// Run chat on an OpenAI-compatible server instead of in this process (vLLM, llama.cpp's
    /// server, Ollama): its base URL, including /v1, e.g. http://gpu-box:8000/v1 [default: none]
    #[arg(long, env = "COMPANERO_LLM_URL", value_name = "URL")]
    pub llm_url: Option<String>,

    /// API key sent to --llm-url as a bearer token [default: none]
    #[arg(long, env = "COMPANERO_LLM_API_KEY", value_name = "KEY")]
    pub llm_api_key: Option<String>,

    /// The model --llm-url serves to use [default: the first one the server lists]
    #[arg(long, env = "COMPANERO_LLM_MODEL", value_name = "NAME")]
    pub llm_model: Option<String>,

    /// Run embeddings on an OpenAI-compatible server instead of in this process (TEI, vLLM,
    /// llama.cpp's server, Ollama): its base URL, including /v1 [default: none]
    #[arg(long, env = "COMPANERO_EMBED_URL", value_name = "URL")]
    pub embed_url: Option<String>,

    /// API key sent to --embed-url as a bearer token [default: none]
    #[arg(long, env = "COMPANERO_EMBED_API_KEY", value_name = "KEY")]
    pub embed_api_key: Option<String>,

    /// The model --embed-url serves to use [default: the first one the server lists]
    #[arg(long, env = "COMPANERO_EMBED_MODEL", value_name = "NAME")]
    pub embed_model: Option<String>,

    /// Who may register: open, invite (an invitation is needed) or closed. The first account on
    /// a fresh instance always may, and becomes its owner [default: invite]
    #[arg(long, env = "COMPANERO_SIGNUP", value_enum)]
    pub signup: Option<SignupPolicy>,

    /// Reverse proxies (CIDR, repeatable or comma-separated) whose X-Forwarded-For is trusted
    /// for the client's IP [default: none: the header is ignored]
    #[arg(
        long,
        env = "COMPANERO_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<IpNet>,

    /// Sign-in, registration and reset attempts per minute per client IP [default: 20]
    #[arg(long, env = "COMPANERO_AUTH_RATE_LIMIT", value_name = "PER_MINUTE")]
    pub auth_rate_limit: Option<u32>,

    /// Authenticated API requests per minute per tenant [default: 6000]
    #[arg(long, env = "COMPANERO_API_RATE_LIMIT", value_name = "PER_MINUTE")]
    pub api_rate_limit: Option<u32>,

    /// End users' requests per minute per tenant, counted apart from the team's [default: 3000]
    #[arg(long, env = "COMPANERO_PUBLIC_RATE_LIMIT", value_name = "PER_MINUTE")]
    pub public_rate_limit: Option<u32>,

    /// Requests per minute per end user [default: 120]
    #[arg(long, env = "COMPANERO_VISITOR_RATE_LIMIT", value_name = "PER_MINUTE")]
    pub visitor_rate_limit: Option<u32>,

    /// New end users per minute per client network (IPv4 address, IPv6 /64): a school or an
    /// office shares one [default: 60]
    #[arg(
        long,
        env = "COMPANERO_NEW_VISITOR_RATE_LIMIT",
        value_name = "PER_MINUTE"
    )]
    pub new_visitor_rate_limit: Option<u32>,

    /// Live connections (WebSocket or event stream) open at once per client network
    /// [default: 200]
    #[arg(long, env = "COMPANERO_LIVE_CONNECTIONS_PER_IP", value_name = "N")]
    pub live_connections_per_ip: Option<u32>,

    /// The set-up token that registers the first account (the owner) [default: made at first
    /// start, printed and kept in <data-dir>/setup-token]
    #[arg(long, env = "COMPANERO_SETUP_TOKEN", value_name = "TOKEN")]
    pub setup_token: Option<String>,

    /// Mail server for password resets and invitations, e.g.
    /// smtp://user:pass@mail.example.com:587?tls=required [default: none: messages are logged]
    #[arg(long, env = "COMPANERO_SMTP_URL", value_name = "URL")]
    pub smtp_url: Option<String>,

    /// Sender of those emails [default: Compañero <no-reply@localhost>]
    #[arg(long, env = "COMPANERO_MAIL_FROM", value_name = "MAILBOX")]
    pub mail_from: Option<String>,

    /// Largest document upload, in MB [default: 50]
    #[arg(long, env = "COMPANERO_MAX_UPLOAD_MB", value_name = "MB")]
    pub max_upload_mb: Option<u64>,

    /// Storage for each tenant's uploaded originals, in MB; the owner can set it per tenant;
    /// 0 means unlimited [default: 1024]
    #[arg(long, env = "COMPANERO_STORAGE_QUOTA_MB", value_name = "MB")]
    pub storage_quota_mb: Option<u64>,

    /// Most pages a PDF may have [default: 2000]
    #[arg(long, env = "COMPANERO_MAX_PDF_PAGES", value_name = "N")]
    pub max_pdf_pages: Option<usize>,

    /// Largest unpacked size of one part inside a .docx, in MB (guards against zip bombs) [default: 100]
    #[arg(long, env = "COMPANERO_MAX_DOCX_PART_MB", value_name = "MB")]
    pub max_docx_part_mb: Option<u64>,

    /// Deepest element nesting accepted in Word and HTML documents [default: 256]
    #[arg(long, env = "COMPANERO_MAX_XML_DEPTH", value_name = "N")]
    pub max_xml_depth: Option<usize>,

    /// Seconds reading one document may take before it fails [default: 300]
    #[arg(long, env = "COMPANERO_INGEST_TIMEOUT_SECS", value_name = "SECS")]
    pub ingest_timeout_secs: Option<u64>,

    /// Memory the document reader process may use, in MB [default: 2048]
    #[arg(long, env = "COMPANERO_INGEST_MEMORY_MB", value_name = "MB")]
    pub ingest_memory_mb: Option<u64>,

    /// Documents ingested at the same time [default: 2]
    #[arg(long, env = "COMPANERO_INGEST_WORKERS", value_name = "N")]
    pub ingest_workers: Option<usize>,

    /// Passage size in embedder tokens (never more than the embedder accepts) [default: 200]
    #[arg(long, env = "COMPANERO_CHUNK_TOKENS", value_name = "TOKENS")]
    pub chunk_tokens: Option<usize>,

    /// Tokens of whole sentences that consecutive passages share [default: 32]
    #[arg(long, env = "COMPANERO_CHUNK_OVERLAP", value_name = "TOKENS")]
    pub chunk_overlap: Option<usize>,

    /// Weight of BM25 against vector similarity in hybrid search, in z-scores [default: 0.2]
    #[arg(long, env = "COMPANERO_SEARCH_LEXICAL_WEIGHT", value_name = "W")]
    pub search_lexical_weight: Option<f64>,

    /// Search results scoring below this (0 to 1) are left out [default: 0.2]
    #[arg(long, env = "COMPANERO_SEARCH_MIN_SCORE", value_name = "SCORE")]
    pub search_min_score: Option<f64>,

    /// Candidates the reranker reorders per search, 1 to 50 [default: 20]
    #[arg(long, env = "COMPANERO_RERANK_CANDIDATES", value_name = "N")]
    pub rerank_candidates: Option<usize>,

    /// Longest a search waits for the reranker; under load it is skipped [default: 400]
    #[arg(long, env = "COMPANERO_RERANK_BUDGET_MS", value_name = "MS")]
    pub rerank_budget_ms: Option<u64>,

    /// Messages one end user may send per minute [default: 20]
    #[arg(long, env = "COMPANERO_VISITOR_MESSAGES_PER_MINUTE", value_name = "N")]
    pub visitor_messages_per_minute: Option<u32>,

    /// Seconds between keep-alive pings on live chat connections [default: 20]
    #[arg(long, env = "COMPANERO_LIVE_HEARTBEAT_SECS", value_name = "SECS")]
    pub live_heartbeat_secs: Option<u64>,

    /// A live chat connection silent this long (no pong either) is closed [default: 60]
    #[arg(long, env = "COMPANERO_LIVE_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub live_idle_timeout_secs: Option<u64>,

    /// The address people reach this server at, for links in emails
    /// [default: http://<bind address>, https:// with --tls-cert]
    #[arg(long, env = "COMPANERO_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Serve HTTPS with this certificate chain (PEM, leaf first); reloaded when the file
    /// changes. Needs --tls-key
    #[arg(long, env = "COMPANERO_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<String>,

    /// The private key (PEM) of --tls-cert
    #[arg(long, env = "COMPANERO_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<String>,

    /// With TLS, also listen for plain HTTP on this port (same address as --bind) and
    /// redirect every request to HTTPS
    #[arg(long, env = "COMPANERO_REDIRECT_HTTP", value_name = "PORT")]
    pub redirect_http: Option<u64>,

    /// Write a backup archive into this folder on a schedule (see --backup-every)
    #[arg(long, env = "COMPANERO_BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<String>,

    /// How often scheduled backups run, e.g. 24h, 6h, 30m [default: 24h]
    #[arg(long, env = "COMPANERO_BACKUP_EVERY", value_name = "PERIOD")]
    pub backup_every: Option<String>,

    /// How many scheduled backups to keep; older ones are removed [default: 7]
    #[arg(long, env = "COMPANERO_BACKUP_KEEP", value_name = "N")]
    pub backup_keep: Option<u64>,

    /// The Telegram Bot API (calls go to {url}/bot{token}/{method}); for egress proxies and
    /// tests [default: https://api.telegram.org]
    #[arg(long, env = "COMPANERO_TELEGRAM_API_URL", value_name = "URL")]
    pub telegram_api_url: Option<String>,

    /// The Graph API host for WhatsApp (calls go to {url}/{version}/{phone_number_id}/messages)
    /// [default: https://graph.facebook.com]
    #[arg(long, env = "COMPANERO_WHATSAPP_API_URL", value_name = "URL")]
    pub whatsapp_api_url: Option<String>,

    /// The Graph API version WhatsApp calls use [default: v21.0]
    #[arg(long, env = "COMPANERO_WHATSAPP_API_VERSION", value_name = "VERSION")]
    pub whatsapp_api_version: Option<String>,

    /// Lets browsers' push subscriptions point at plain http:// URLs (local push-service
    /// stand-ins in tests; real push services are all https://)
    #[arg(long, env = "COMPANERO_ALLOW_HTTP_PUSH_ENDPOINTS")]
    pub allow_http_push_endpoints: bool,
}

/// `companero.toml`: the same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    drain_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    llm: Option<String>,
    embedder: Option<String>,
    reranker: Option<String>,
    device: Option<DeviceKind>,
    threads: Option<usize>,
    offline: Option<bool>,
    max_context: Option<usize>,
    prompt_cache_mb: Option<usize>,
    inference_queue: Option<usize>,
    llm_url: Option<String>,
    llm_api_key: Option<String>,
    llm_model: Option<String>,
    embed_url: Option<String>,
    embed_api_key: Option<String>,
    embed_model: Option<String>,
    signup: Option<SignupPolicy>,
    trusted_proxy: Option<Vec<IpNet>>,
    auth_rate_limit: Option<u32>,
    api_rate_limit: Option<u32>,
    public_rate_limit: Option<u32>,
    visitor_rate_limit: Option<u32>,
    new_visitor_rate_limit: Option<u32>,
    live_connections_per_ip: Option<u32>,
    setup_token: Option<String>,
    smtp_url: Option<String>,
    mail_from: Option<String>,
    public_url: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    redirect_http: Option<u64>,
    backup_dir: Option<String>,
    backup_every: Option<String>,
    backup_keep: Option<u64>,
    telegram_api_url: Option<String>,
    whatsapp_api_url: Option<String>,
    whatsapp_api_version: Option<String>,
    allow_http_push_endpoints: Option<bool>,
    max_upload_mb: Option<u64>,
    storage_quota_mb: Option<u64>,
    max_pdf_pages: Option<usize>,
    max_docx_part_mb: Option<u64>,
    max_xml_depth: Option<usize>,
    ingest_timeout_secs: Option<u64>,
    ingest_memory_mb: Option<u64>,
    ingest_workers: Option<usize>,
    chunk_tokens: Option<usize>,
    chunk_overlap: Option<usize>,
    search_lexical_weight: Option<f64>,
    search_min_score: Option<f64>,
    rerank_candidates: Option<usize>,
    rerank_budget_ms: Option<u64>,
    visitor_messages_per_minute: Option<u32>,
    live_heartbeat_secs: Option<u64>,
    live_idle_timeout_secs: Option<u64>,
}

/// Where an effective value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    /// The data directory is resolved before clap's sources are consulted.
    FlagOrEnv,
    File,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Flag => "command-line flag",
            Source::Env => "environment",
            Source::FlagOrEnv => "flag or environment",
            Source::File => CONFIG_FILE_NAME,
            Source::Default => "default",
        })
    }
}

/// One line of `companero config`.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: &'static str,
    /// The value as TOML, ready to paste into `companero.toml`.
    pub value: String,
    pub source: Source,
    /// Secrets are printed masked.
    pub secret: bool,
}

/// Knowledge-base settings.
#[derive(Debug, Clone)]
pub struct KnowledgeConfig {
    pub max_upload_bytes: u64,
    /// Default storage per tenant; `None` is unlimited.
    pub storage_quota_bytes: Option<u64>,
    pub max_pdf_pages: usize,
    pub max_docx_part_bytes: u64,
    pub max_xml_depth: usize,
    pub ingest_timeout: Duration,
    pub ingest_memory_bytes: u64,
    pub ingest_workers: usize,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
    pub search_lexical_weight: f32,
    pub search_min_score: f32,
    /// Candidates the reranker reorders, when there is one.
    pub rerank_candidates: usize,
    /// Longest a search waits for the reranker.
    pub rerank_budget: Duration,
    /// The program that runs `extract` for the sandbox [default: this executable]. Tests set
    /// it to the built `companero` binary.
    pub extractor: Option<PathBuf>,
}

/// Live chat connections (WebSocket and event streams).
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    pub visitor_messages_per_minute: u32,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    /// Live connections open at once per client network.
    pub connections_per_ip: u32,
}

impl LiveConfig {
    pub const DEFAULT_CONNECTIONS_PER_IP: u32 = 200;
}

/// The messaging platforms' API addresses (egress proxies and tests change them).
#[derive(Debug, Clone)]
pub struct ChannelApis {
    pub telegram_url: String,
    pub whatsapp_url: String,
    pub whatsapp_version: String,
    /// Push subscriptions may name `http://` endpoints (tests' stand-ins).
    pub push_http_endpoints: bool,
}

/// The effective server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub drain_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub llm: Option<String>,
    pub embedder: Option<String>,
    pub reranker: Option<String>,
    pub device: DeviceKind,
    pub threads: usize,
    pub offline: bool,
    pub max_context: usize,
    pub prompt_cache_mb: usize,
    pub inference_queue: usize,
    /// `--llm-url`: chat on a remote OpenAI-compatible server.
    pub remote_llm: Option<RemoteEndpoint>,
    /// `--embed-url`: embeddings on a remote OpenAI-compatible server.
    pub remote_embedder: Option<RemoteEndpoint>,
    pub signup: SignupPolicy,
    pub trusted_proxies: Vec<IpNet>,
    pub rate_limits: RateLimits,
    pub smtp_url: Option<String>,
    pub mail_from: String,
    pub public_url: String,
    /// `--tls-cert` and `--tls-key`: serve HTTPS.
    pub tls: Option<TlsFiles>,
    /// `--redirect-http`: the plain-HTTP port that redirects to HTTPS (0: any free port).
    pub redirect_http: Option<u16>,
    /// `--backup-dir`: scheduled backups.
    pub backups: Option<crate::backup::Schedule>,
    /// Where the messaging platforms' APIs are.
    pub channels: ChannelApis,
    /// Registers the first account; `None`: made at first start.
    pub setup_token: Option<String>,
    /// Document ingestion and chunking.
    pub knowledge: KnowledgeConfig,
    pub live: LiveConfig,
    /// How each value was chosen, in display order.
    pub settings: Vec<Setting>,
}

impl Config {
    /// Defaults for everything, rooted at `data_dir`. Tests and embedders start from this.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config::resolve(
            &ServeArgs {
                data: DataDirArgs {
                    data_dir: Some(data_dir.into()),
                },
                ..ServeArgs::default()
            },
            None,
        )
        .expect("defaults are valid")
    }

    /// Merges flags/env (`args`), the data directory's `companero.toml` and the defaults.
    /// `matches` (the serve/config subcommand's) tells flags from environment variables.
    pub fn resolve(args: &ServeArgs, matches: Option<&ArgMatches>) -> anyhow::Result<Config> {
        let (data_dir, data_dir_source) = args.data.resolve()?;
        let file = read_file(&data_dir.join(CONFIG_FILE_NAME))?;
        let mut settings = vec![Setting {
            key: "data_dir",
            value: toml_string(&data_dir.display().to_string()),
            source: refine(data_dir_source, matches, "data_dir"),
            secret: false,
        }];
        let mut layer = Layer {
            matches,
            settings: &mut settings,
        };
        let bind = layer.pick("bind", args.bind, file.bind, "127.0.0.1:8080".parse()?);
        let log_format = layer.pick(
            "log_format",
            args.log_format,
            file.log_format,
            LogFormat::Text,
        );
        let log_level = layer.pick(
            "log_level",
            args.log_level.clone(),
            file.log_level,
            "info".to_string(),
        );
        let drain_timeout_secs = layer.pick(
            "drain_timeout_secs",
            args.drain_timeout_secs,
            file.drain_timeout_secs,
            10,
        );
        let request_timeout_secs = layer.pick(
            "request_timeout_secs",
            args.request_timeout_secs,
            file.request_timeout_secs,
            60,
        );
        let max_body_bytes = layer.pick(
            "max_body_bytes",
            args.max_body_bytes,
            file.max_body_bytes,
            2 * 1024 * 1024,
        );
        let llm = layer.pick_optional("llm", args.llm.clone(), file.llm);
        let embedder = layer.pick_optional("embedder", args.embedder.clone(), file.embedder);
        let reranker = layer.pick_optional("reranker", args.reranker.clone(), file.reranker);
        let device = layer.pick("device", args.device, file.device, DeviceKind::Cpu);
        let threads = layer.pick("threads", args.threads, file.threads, default_threads());
        let offline = layer.pick("offline", args.offline, file.offline, false);
        let max_context = layer.pick(
            "max_context",
            args.max_context,
            file.max_context,
            crate::inference::llm::DEFAULT_MAX_CONTEXT,
        );
        let prompt_cache_mb = layer.pick(
            "prompt_cache_mb",
            args.prompt_cache_mb,
            file.prompt_cache_mb,
            crate::inference::llm::DEFAULT_PROMPT_CACHE_MB,
        );
        let inference_queue = layer.pick(
            "inference_queue",
            args.inference_queue,
            file.inference_queue,
            32,
        );
        let remote_llm = layer.remote(
            ["llm_url", "llm_api_key", "llm_model"],
            [
                args.llm_url.clone(),
                args.llm_api_key.clone(),
                args.llm_model.clone(),
            ],
            [file.llm_url, file.llm_api_key, file.llm_model],
        )?;
        let remote_embedder = layer.remote(
            ["embed_url", "embed_api_key", "embed_model"],
            [
                args.embed_url.clone(),
                args.embed_api_key.clone(),
                args.embed_model.clone(),
            ],
            [file.embed_url, file.embed_api_key, file.embed_model],
        )?;
        let signup = layer.pick("signup", args.signup, file.signup, SignupPolicy::Invite);
        let cli_proxies = (!args.trusted_proxy.is_empty()).then(|| args.trusted_proxy.clone());
        let trusted_proxies = layer.pick(
            "trusted_proxy",
            cli_proxies.map(ProxyList),
            file.trusted_proxy.map(ProxyList),
            ProxyList(Vec::new()),
        );
        let defaults = RateLimits::default();
        let auth_rate_limit = layer.pick(
            "auth_rate_limit",
            args.auth_rate_limit,
            file.auth_rate_limit,
            defaults.auth_per_ip,
        );
        let api_rate_limit = layer.pick(
            "api_rate_limit",
            args.api_rate_limit,
            file.api_rate_limit,
            defaults.api_per_tenant,
        );
        let public_rate_limit = layer.pick(
            "public_rate_limit",
            args.public_rate_limit,
            file.public_rate_limit,
            defaults.public_per_tenant,
        );
        let visitor_rate_limit = layer.pick(
            "visitor_rate_limit",
            args.visitor_rate_limit,
            file.visitor_rate_limit,
            defaults.per_visitor,
        );
        let new_visitor_rate_limit = layer.pick(
            "new_visitor_rate_limit",
            args.new_visitor_rate_limit,
            file.new_visitor_rate_limit,
            defaults.new_visitors_per_ip,
        );
        let live_connections_per_ip = layer.pick(
            "live_connections_per_ip",
            args.live_connections_per_ip,
            file.live_connections_per_ip,
            LiveConfig::DEFAULT_CONNECTIONS_PER_IP,
        );
        let setup_token =
            layer.pick_optional("setup_token", args.setup_token.clone(), file.setup_token);
        if let Some(setting) = layer.settings.last_mut() {
            setting.secret = setup_token.is_some();
        }
        let smtp_url = layer.pick_optional("smtp_url", args.smtp_url.clone(), file.smtp_url);
        if let Some(setting) = layer.settings.last_mut() {
            setting.secret = smtp_url.is_some();
        }
        let mail_from = layer.pick(
            "mail_from",
            args.mail_from.clone(),
            file.mail_from,
            "Compañero <no-reply@localhost>".to_string(),
        );
        let tls_cert = layer.pick_optional("tls_cert", args.tls_cert.clone(), file.tls_cert);
        let tls_key = layer.pick_optional("tls_key", args.tls_key.clone(), file.tls_key);
        let redirect_http =
            layer.pick_optional("redirect_http", args.redirect_http, file.redirect_http);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate chain)"),
        };
        let redirect_http = match redirect_http {
            None => None,
            Some(_) if tls.is_none() => {
                bail!("--redirect-http redirects to HTTPS, so it needs --tls-cert and --tls-key")
            }
            Some(port) => Some(
                u16::try_from(port)
                    .ok()
                    .filter(|p| *p != bind.port() || *p == 0)
                    .context("redirect_http must be a free port (0 to 65535), not --bind's")?,
            ),
        };
        let backup_dir =
            layer.pick_optional("backup_dir", args.backup_dir.clone(), file.backup_dir);
        let backup_every = layer.pick(
            "backup_every",
            args.backup_every.clone(),
            file.backup_every,
            "24h".to_string(),
        );
        let backup_keep = layer.pick("backup_keep", args.backup_keep, file.backup_keep, 7);
        let backups = match backup_dir {
            None => None,
            Some(dir) => Some(crate::backup::Schedule {
                dir: dir.into(),
                every: humantime::parse_duration(&backup_every)
                    .ok()
                    .filter(|d| *d >= Duration::from_secs(1))
                    .with_context(|| {
                        format!(
                            "backup_every must be a period such as 24h or 30m, not {backup_every:?}"
                        )
                    })?,
                keep: usize::try_from(backup_keep)
                    .ok()
                    .filter(|k| *k >= 1)
                    .context("backup_keep must be at least 1")?,
            }),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = layer.pick(
            "public_url",
            args.public_url.clone(),
            file.public_url,
            format!("{scheme}://{bind}"),
        );
        let telegram_api_url = layer.pick(
            "telegram_api_url",
            args.telegram_api_url.clone(),
            file.telegram_api_url,
            "https://api.telegram.org".to_string(),
        );
        let whatsapp_api_url = layer.pick(
            "whatsapp_api_url",
            args.whatsapp_api_url.clone(),
            file.whatsapp_api_url,
            "https://graph.facebook.com".to_string(),
        );
        let whatsapp_api_version = layer.pick(
            "whatsapp_api_version",
            args.whatsapp_api_version.clone(),
            file.whatsapp_api_version,
            "v21.0".to_string(),
        );
        let allow_http_push_endpoints = layer.pick(
            "allow_http_push_endpoints",
            args.allow_http_push_endpoints.then_some(true),
            file.allow_http_push_endpoints,
            false,
        );
        let max_upload_mb = layer.pick("max_upload_mb", args.max_upload_mb, file.max_upload_mb, 50);
        let storage_quota_mb = layer.pick(
            "storage_quota_mb",
            args.storage_quota_mb,
            file.storage_quota_mb,
            crate::knowledge::quota::DEFAULT_QUOTA_MB,
        );
        let max_pdf_pages = layer.pick(
            "max_pdf_pages",
            args.max_pdf_pages,
            file.max_pdf_pages,
            2000,
        );
        let max_docx_part_mb = layer.pick(
            "max_docx_part_mb",
            args.max_docx_part_mb,
            file.max_docx_part_mb,
            100,
        );
        let max_xml_depth =
            layer.pick("max_xml_depth", args.max_xml_depth, file.max_xml_depth, 256);
        let ingest_timeout_secs = layer.pick(
            "ingest_timeout_secs",
            args.ingest_timeout_secs,
            file.ingest_timeout_secs,
            300,
        );
        let ingest_memory_mb = layer.pick(
            "ingest_memory_mb",
            args.ingest_memory_mb,
            file.ingest_memory_mb,
            2048,
        );
        let ingest_workers = layer.pick(
            "ingest_workers",
            args.ingest_workers,
            file.ingest_workers,
            2,
        );
        let chunk_tokens = layer.pick(
            "chunk_tokens",
            args.chunk_tokens,
            file.chunk_tokens,
            crate::knowledge::DEFAULT_CHUNK_TOKENS,
        );
        let chunk_overlap = layer.pick(
            "chunk_overlap",
            args.chunk_overlap,
            file.chunk_overlap,
            crate::knowledge::DEFAULT_CHUNK_OVERLAP,
        );
        let search_lexical_weight = layer.pick(
            "search_lexical_weight",
            args.search_lexical_weight,
            file.search_lexical_weight,
            crate::knowledge::search::DEFAULT_LEXICAL_WEIGHT as f64,
        );
        let search_min_score = layer.pick(
            "search_min_score",
            args.search_min_score,
            file.search_min_score,
            crate::knowledge::DEFAULT_MIN_SCORE as f64,
        );
        let rerank_candidates = layer.pick(
            "rerank_candidates",
            args.rerank_candidates,
            file.rerank_candidates,
            20,
        );
        let rerank_budget_ms = layer.pick(
            "rerank_budget_ms",
            args.rerank_budget_ms,
            file.rerank_budget_ms,
            400,
        );
        if !(1..=50).contains(&rerank_candidates) {
            bail!("rerank_candidates must be 1 to 50");
        }
        let visitor_messages_per_minute = layer.pick(
            "visitor_messages_per_minute",
            args.visitor_messages_per_minute,
            file.visitor_messages_per_minute,
            20,
        );
        let live_heartbeat_secs = layer.pick(
            "live_heartbeat_secs",
            args.live_heartbeat_secs,
            file.live_heartbeat_secs,
            20,
        );
        let live_idle_timeout_secs = layer.pick(
            "live_idle_timeout_secs",
            args.live_idle_timeout_secs,
            file.live_idle_timeout_secs,
            60,
        );
        if visitor_messages_per_minute == 0 {
            bail!("visitor_messages_per_minute must be at least 1");
        }
        if live_heartbeat_secs == 0 || live_idle_timeout_secs <= live_heartbeat_secs {
            bail!("live_heartbeat_secs must be at least 1 and less than live_idle_timeout_secs");
        }
        if !(0.0..=10.0).contains(&search_lexical_weight) {
            bail!("search_lexical_weight must be between 0 and 10");
        }
        if !(0.0..=1.0).contains(&search_min_score) {
            bail!("search_min_score must be between 0 and 1");
        }
        if chunk_tokens < 16 {
            bail!("chunk_tokens must be at least 16");
        }
        if chunk_overlap * 2 > chunk_tokens {
            bail!("chunk_overlap must be at most half of chunk_tokens");
        }
        if request_timeout_secs == 0 {
            bail!("request_timeout_secs must be at least 1");
        }
        Ok(Config {
            data_dir,
            bind,
            log_format,
            log_level,
            drain_timeout: Duration::from_secs(drain_timeout_secs),
            request_timeout: Duration::from_secs(request_timeout_secs),
            max_body_bytes,
            llm,
            embedder,
            reranker,
            device,
            threads,
            offline,
            max_context,
            prompt_cache_mb,
            inference_queue,
            remote_llm,
            remote_embedder,
            signup,
            trusted_proxies: trusted_proxies.0,
            smtp_url,
            mail_from,
            public_url: public_url.trim_end_matches('/').to_string(),
            tls,
            redirect_http,
            backups,
            channels: ChannelApis {
                telegram_url: telegram_api_url,
                whatsapp_url: whatsapp_api_url,
                whatsapp_version: whatsapp_api_version,
                push_http_endpoints: allow_http_push_endpoints,
            },
            setup_token,
            rate_limits: RateLimits {
                auth_per_ip: auth_rate_limit,
                api_per_tenant: api_rate_limit,
                public_per_tenant: public_rate_limit,
                per_visitor: visitor_rate_limit,
                new_visitors_per_ip: new_visitor_rate_limit,
                ..RateLimits::default()
            },
            knowledge: KnowledgeConfig {
                max_upload_bytes: max_upload_mb * 1024 * 1024,
                storage_quota_bytes: crate::knowledge::quota::effective(
                    Some(storage_quota_mb),
                    None,
                ),
                max_pdf_pages,
                max_docx_part_bytes: max_docx_part_mb * 1024 * 1024,
                max_xml_depth,
                ingest_timeout: Duration::from_secs(ingest_timeout_secs.max(1)),
                ingest_memory_bytes: ingest_memory_mb.max(64) * 1024 * 1024,
                ingest_workers: ingest_workers.max(1),
                chunk_tokens,
                chunk_overlap,
                search_lexical_weight: search_lexical_weight as f32,
                search_min_score: search_min_score as f32,
                rerank_candidates,
                rerank_budget: Duration::from_millis(rerank_budget_ms),
                extractor: None,
            },
            live: LiveConfig {
                visitor_messages_per_minute,
                heartbeat: Duration::from_secs(live_heartbeat_secs),
                idle_timeout: Duration::from_secs(live_idle_timeout_secs),
                connections_per_ip: live_connections_per_ip.max(1),
            },
            settings,
        })
    }

    /// The effective configuration as TOML, each line annotated with its source.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Effective configuration (flag > environment > companero.toml > default)\n",
        );
        let width = self
            .settings
            .iter()
            .map(|s| s.key.len() + 3 + shown(s).len())
            .max()
            .unwrap_or(0);
        for setting in &self.settings {
            let line = format!("{} = {}", setting.key, shown(setting));
            out.push_str(&format!("{line:<width$}  # {}\n", setting.source));
        }
        out
    }
}

fn shown(setting: &Setting) -> String {
    if setting.secret {
        "\"********\"".to_string()
    } else {
        setting.value.clone()
    }
}

/// Resolves one key through the layers and records its source.
struct Layer<'a> {
    matches: Option<&'a ArgMatches>,
    settings: &'a mut Vec<Setting>,
}

impl Layer<'_> {
    fn pick<T: fmt::Display + TomlValue>(
        &mut self,
        key: &'static str,
        flag_or_env: Option<T>,
        file: Option<T>,
        default: T,
    ) -> T {
        let (value, source) = match (flag_or_env, file) {
            (Some(v), _) => (v, refine(Source::FlagOrEnv, self.matches, key)),
            (None, Some(v)) => (v, Source::File),
            (None, None) => (default, Source::Default),
        };
        self.settings.push(Setting {
            key,
            value: value.to_toml(),
            source,
            secret: false,
        });
        value
    }

    /// Like `pick` for settings whose default is "none": the line shows `# (automatic)`.
    /// A remote backend's URL, key (a secret) and model name; `None` without a URL.
    fn remote(
        &mut self,
        keys: [&'static str; 3],
        flag_or_env: [Option<String>; 3],
        file: [Option<String>; 3],
    ) -> anyhow::Result<Option<RemoteEndpoint>> {
        let [url_flag, key_flag, model_flag] = flag_or_env;
        let [url_file, key_file, model_file] = file;
        let url = self.pick_optional(keys[0], url_flag, url_file);
        let api_key = self.pick_optional(keys[1], key_flag, key_file);
        if let Some(setting) = self.settings.last_mut() {
            setting.secret = api_key.is_some();
        }
        let model = self.pick_optional(keys[2], model_flag, model_file);
        let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let endpoint = RemoteEndpoint {
            url,
            api_key,
            model: model.filter(|m| !m.trim().is_empty()),
        };
        endpoint
            .check()
            .map_err(|problem| anyhow::anyhow!("{}: {problem}", keys[0]))?;
        Ok(Some(endpoint))
    }

    fn pick_optional<T: fmt::Display + TomlValue>(
        &mut self,
        key: &'static str,
        flag_or_env: Option<T>,
        file: Option<T>,
    ) -> Option<T> {
        let (value, source) = match (flag_or_env, file) {
            (Some(v), _) => (Some(v), refine(Source::FlagOrEnv, self.matches, key)),
            (None, Some(v)) => (Some(v), Source::File),
            (None, None) => (None, Source::Default),
        };
        self.settings.push(Setting {
            key,
            value: value
                .as_ref()
                .map_or_else(|| "\"\"".to_string(), TomlValue::to_toml),
            source,
            secret: false,
        });
        value
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Tells a flag from an environment variable where clap's matches are available.
fn refine(source: Source, matches: Option<&ArgMatches>, id: &str) -> Source {
    if source != Source::FlagOrEnv {
        return source;
    }
    match matches.and_then(|m| m.value_source(id)) {
        Some(ValueSource::CommandLine) => Source::Flag,
        Some(ValueSource::EnvVariable) => Source::Env,
        _ => Source::FlagOrEnv,
    }
}

trait TomlValue {
    fn to_toml(&self) -> String;
}

impl TomlValue for f64 {
    fn to_toml(&self) -> String {
        format!("{self:?}")
    }
}

impl TomlValue for u64 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for usize {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for String {
    fn to_toml(&self) -> String {
        toml_string(self)
    }
}

impl TomlValue for SocketAddr {
    fn to_toml(&self) -> String {
        toml_string(&self.to_string())
    }
}

impl TomlValue for u32 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for SignupPolicy {
    fn to_toml(&self) -> String {
        toml_string(&self.to_string())
    }
}

/// A list of proxy networks, printed as a TOML array.
struct ProxyList(Vec<IpNet>);

impl fmt::Display for ProxyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

impl TomlValue for ProxyList {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.0.iter().map(|n| toml_string(&n.to_string())).collect();
        format!("[{}]", items.join(", "))
    }
}

impl TomlValue for bool {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for DeviceKind {
    fn to_toml(&self) -> String {
        toml_string(&self.to_string())
    }
}

impl TomlValue for LogFormat {
    fn to_toml(&self) -> String {
        toml_string(&self.to_string())
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("invalid {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_what_flags_leave_out_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "bind = \"0.0.0.0:9000\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            data: DataDirArgs {
                data_dir: Some(dir.path().to_path_buf()),
            },
            log_format: Some(LogFormat::Text),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args, None).unwrap();
        assert_eq!(config.bind, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.drain_timeout, Duration::from_secs(10));
        let rendered = config.render();
        assert!(rendered.contains("bind = \"0.0.0.0:9000\""), "{rendered}");
        assert!(rendered.contains("# companero.toml"), "{rendered}");

        std::fs::write(dir.path().join(CONFIG_FILE_NAME), "bnd = \"x\"\n").unwrap();
        let error = format!("{:#}", Config::resolve(&args, None).unwrap_err());
        assert!(error.contains("unknown field `bnd`"), "{error}");
    }

    #[test]
    fn secrets_are_masked_when_rendered() {
        let mut config = Config::with_data_dir("/tmp/x");
        config.settings.push(Setting {
            key: "smtp_url",
            value: toml_string("smtp://user:hunter2@mail"),
            source: Source::Env,
            secret: true,
        });
        let rendered = config.render();
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(rendered.contains("smtp_url = \"********\""), "{rendered}");
    }
}
