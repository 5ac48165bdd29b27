//! Starting and stopping the server: open the data directory, migrate the database, bind, serve,
//! and on shutdown let in-flight requests finish within the drain deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::http::tls::{self, Tls};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::accounts::Accounts;
use crate::auth::rate_limit::Limiters;
use crate::auth::tokens::TokenKeys;
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::db::{self, Db};
use crate::http::auth::AuthState;
use crate::http::{self, AppState, Limits};
use crate::inference::runtime::{Inference, ModelPlan};
use crate::inference::store::HubOptions;
use crate::knowledge::chunk::ChunkSettings;
use crate::knowledge::extract::ExtractLimits;
use crate::knowledge::sandbox::Sandbox;
use crate::knowledge::{Knowledge, KnowledgeSettings};

/// Read-only database connections, next to the one writer: enough for concurrent searches on a
/// small machine.
const MAX_DB_READERS: usize = 4;
/// A client that has not sent its request headers by then is disconnected (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A server that has opened its data directory and bound its address, ready to run.
pub struct Server {
    listener: TcpListener,
    /// `--tls-cert`: connections on `listener` are TLS.
    tls: Option<Tls>,
    /// `--redirect-http`: plain HTTP answered with a redirect to HTTPS.
    redirect: Option<TcpListener>,
    public_url_set: bool,
    state: AppState,
    limits: Limits,
    drain_timeout: Duration,
    data_dir: DataDir,
    setup_token: Option<String>,
    /// `--backup-dir`: backups on a schedule.
    backups: Option<crate::backup::Schedule>,
}

impl Server {
    /// Everything that can fail at start fails here, before any request is accepted: the data
    /// directory lock, the database and its migrations, the listening address.
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        let data_dir = DataDir::open(&config.data_dir)?;
        let db = Db::open(&data_dir.database_path(), MAX_DB_READERS)
            .with_context(|| format!("cannot open {}", data_dir.database_path().display()))?;
        db.call(|connection| db::migrations::apply(connection).map_err(db::DbError::from))
            .await
            .with_context(|| format!("cannot migrate {}", data_dir.database_path().display()))?;
        let tls = config.tls.clone().map(Tls::load).transpose()?;
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let redirect =
            match config.redirect_http {
                Some(port) => {
                    let address = SocketAddr::new(config.bind.ip(), port);
                    Some(TcpListener::bind(address).await.with_context(|| {
                        format!("cannot listen on {address} for --redirect-http")
                    })?)
                }
                None => None,
            };
        let inference = Inference::new();
        inference.start(ModelPlan {
            llm: config.llm.clone(),
            embedder: config.embedder.clone(),
            reranker: config.reranker.clone(),
            device: config.device,
            offline: config.offline,
            models_dir: data_dir.models_dir(),
            hub: HubOptions::from_env(),
            queue_capacity: config.inference_queue,
            max_context: config.max_context,
            prompt_cache_mb: config.prompt_cache_mb,
            embed_dimensions: None,
            remote_llm: config.remote_llm.clone(),
            remote_embedder: config.remote_embedder.clone(),
        });
        let keys = TokenKeys::load_or_create(&data_dir.keys_dir()).with_context(|| {
            format!(
                "cannot load signing keys from {}",
                data_dir.keys_dir().display()
            )
        })?;
        let setup_token = setup_token(&db, data_dir.root(), config.setup_token.as_deref()).await?;
        let limiters = Limiters::new(config.rate_limits);
        let auth = AuthState {
            accounts: Accounts::new(
                db.clone(),
                Arc::new(keys),
                config.signup,
                limiters.logins.clone(),
                crate::auth::mfa::Mfa::load(db.clone(), &data_dir.keys_dir())
                    .context("cannot load the two-step sign-in key")?,
                setup_token.clone(),
            ),
            limiters,
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            mailer: crate::mail::Mailer::new(config.smtp_url.as_deref(), &config.mail_from)?,
            public_url: config.public_url.clone().into(),
        };
        let knowledge = knowledge_service(config, &data_dir, db.clone(), inference.clone())?;
        let chat = crate::chat::Chat::new(
            db.clone(),
            knowledge.clone(),
            inference.clone(),
            crate::chat::live::VisitorLimits::new(
                config.live.visitor_messages_per_minute,
                config.live.connections_per_ip,
            ),
        );
        let jobs = crate::jobs::Jobs::new(db.clone());
        let coaching = crate::coaching::Coaching::new(
            db.clone(),
            jobs.clone(),
            chat.clone(),
            knowledge.clone(),
            inference.clone(),
        );
        jobs.register(
            crate::mail::MAIL,
            Arc::new(crate::mail::MailJob {
                accounts: auth.accounts.clone(),
                mailer: auth.mailer.clone(),
                public_url: auth.public_url.clone(),
            }),
        );
        chat.set_hook(std::sync::Arc::new(coaching.clone()));
        chat.use_jobs(&jobs);
        let channels = crate::channels::Channels::new(
            db.clone(),
            chat.clone(),
            coaching.clone(),
            jobs.clone(),
            crate::channels::ChannelKeys::load_or_create(&data_dir.keys_dir())?,
            config,
        );
        let privacy = crate::privacy::Privacy::new(
            db.clone(),
            jobs.clone(),
            inference.clone(),
            coaching.clone(),
            data_dir.exports_dir(),
            data_dir.originals_dir(),
        );
        let state = AppState {
            privacy,
            db,
            inference,
            auth,
            knowledge,
            chat,
            coaching,
            channels,
            jobs,
            metrics: http::metrics::recorder(),
            shutdown: CancellationToken::new(),
            live: config.live,
            downloads: crate::inference::downloads::Downloads::new(
                crate::inference::store::ModelStore::new(data_dir.models_dir()),
                HubOptions::from_env(),
            ),
            started_at: Instant::now(),
        };
        Ok(Server {
            setup_token,
            listener,
            tls,
            redirect,
            public_url_set: config.public_url != format!("{}://{}", scheme(config), config.bind),
            state,
            limits: Limits {
                request_timeout: config.request_timeout,
                max_body_bytes: config.max_body_bytes,
            },
            drain_timeout: config.drain_timeout,
            backups: config.backups.clone(),
            data_dir,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// `http://address` or `https://address`: where this server answers.
    pub fn local_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    /// The plain-HTTP address that redirects to HTTPS, with `--redirect-http`.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// The token that registers the first account, while there is none.
    pub fn setup_token(&self) -> Option<&str> {
        self.setup_token.as_deref()
    }

    /// Cancel this token to shut the server down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves the application until the shutdown token is cancelled.
    pub async fn run(self) -> anyhow::Result<()> {
        let app = http::app(self.state.clone(), self.limits);
        self.run_with(app).await
    }

    /// Serves `app` (normally [`http::app`]) until the shutdown token is cancelled, then stops
    /// accepting, lets in-flight requests and streams finish, and cuts off whatever is still
    /// open at the drain deadline.
    pub async fn run_with(self, app: Router) -> anyhow::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let upkeep = tokio::spawn(metrics_upkeep(self.state.clone()));
        self.state
            .knowledge
            .start(shutdown.clone())
            .await
            .context("cannot start document ingestion")?;
        self.state
            .channels
            .start(shutdown.clone())
            .await
            .context("cannot start the channels")?;
        self.state.jobs.start(shutdown.clone());
        self.state
            .privacy
            .schedule_all_retention()
            .await
            .context("cannot schedule the retention policies")?;
        if let Some(schedule) = self.backups.clone() {
            let root = self.data_dir.root().to_path_buf();
            tokio::spawn(schedule.run(root, shutdown.clone()));
        }
        let certificate_watch = self.tls.as_ref().map(|tls| tls.watch(shutdown.clone()));
        let redirect = self.redirect.map(|listener| {
            let https_port = self
                .listener
                .local_addr()
                .expect("bound listener has an address")
                .port();
            let base = self
                .public_url_set
                .then(|| self.state.auth.public_url.to_string());
            tokio::spawn(tls::redirect_to_https(
                listener,
                base,
                https_port,
                shutdown.clone(),
            ))
        });
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);

        loop {
            let (stream, remote) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            let app = app.clone();
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(request.map(Body::new))
            });
            let http = http.clone();
            let watcher = graceful.watcher();
            let tls = self.tls.clone();
            connections.spawn(async move {
                let result = match tls {
                    None => {
                        let connection =
                            http.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection.into_owned()).await
                    }
                    Some(tls) => {
                        let handshake = tls.acceptor().accept(stream);
                        let stream =
                            match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, handshake).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, %remote, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let connection =
                            http.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection.into_owned()).await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, %remote, "connection ended with an error");
                }
            });
        }

        drop(self.listener);
        tracing::info!(
            open_connections = graceful.count(),
            deadline_s = self.drain_timeout.as_secs(),
            "shutting down: finishing in-flight requests"
        );
        if tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "drain deadline passed; closing the remaining connections"
            );
        }
        connections.shutdown().await;
        upkeep.abort();
        if let Some(watch) = certificate_watch {
            watch.abort();
        }
        if let Some(redirect) = redirect {
            redirect.abort();
        }
        drop(self.data_dir);
        tracing::info!("stopped");
        Ok(())
    }
}

fn knowledge_service(
    config: &Config,
    data_dir: &DataDir,
    db: Db,
    inference: Inference,
) -> anyhow::Result<Knowledge> {
    let settings = &config.knowledge;
    let executable = match &settings.extractor {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this program's own path")?,
    };
    Ok(Knowledge::new(
        db,
        inference,
        data_dir.index_dir(),
        data_dir.originals_dir(),
        KnowledgeSettings {
            chunking: ChunkSettings {
                target_tokens: settings.chunk_tokens,
                overlap_tokens: settings.chunk_overlap,
            },
            max_upload_bytes: settings.max_upload_bytes,
            storage_quota_bytes: settings.storage_quota_bytes,
            workers: settings.ingest_workers,
            sandbox: Sandbox {
                executable,
                limits: ExtractLimits {
                    max_pages: settings.max_pdf_pages,
                    max_part_bytes: settings.max_docx_part_bytes,
                    max_depth: settings.max_xml_depth,
                },
                timeout: settings.ingest_timeout,
                memory_bytes: settings.ingest_memory_bytes,
                max_output_bytes: Sandbox::output_limit(settings.max_upload_bytes),
            },
            fusion: crate::knowledge::search::Fusion {
                lexical_weight: settings.search_lexical_weight,
                min_score: settings.search_min_score,
            },
            rerank: crate::knowledge::search::RerankSettings {
                candidates: settings.rerank_candidates,
                budget: settings.rerank_budget,
            },
        },
    ))
}

/// Whoever reaches a fresh server first must not become its owner: the first account needs a
/// set-up token (configured, or made at first start and kept in `<data-dir>/setup-token`, which
/// only the server's operator can read). Once an account exists there is none, and the file goes.
async fn setup_token(
    db: &Db,
    root: &std::path::Path,
    configured: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let empty: bool = db
        .call(|c| {
            c.query_row("SELECT NOT EXISTS (SELECT 1 FROM users)", [], |r| r.get(0))
                .map_err(db::DbError::from)
        })
        .await?;
    let path = crate::data_dir::setup_token_path(root);
    if !empty {
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    if let Some(token) = configured {
        return Ok(Some(token.trim().to_string()));
    }
    if let Ok(stored) = std::fs::read_to_string(&path)
        && !stored.trim().is_empty()
    {
        return Ok(Some(stored.trim().to_string()));
    }
    let token = crate::auth::tokens::secret_token("setup_");
    std::fs::write(&path, format!("{token}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(token))
}

/// Histograms keep raw samples until upkeep folds them into buckets, and rate limiters keep a
/// state per key; tidy both periodically so memory stays flat under load.
async fn metrics_upkeep(state: AppState) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        state.metrics.run_upkeep();
        state.auth.limiters.prune();
        state.chat.limits().prune();
    }
}

fn scheme(config: &Config) -> &'static str {
    if config.tls.is_some() {
        "https"
    } else {
        "http"
    }
}
