//! Starting and stopping the server: open the data directory, migrate the database, bind, serve,
//! and on shutdown let in-flight requests finish within the drain deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::db::{self, Db};
use crate::http::{self, AppState, Limits};

/// Database connections in the pool: enough for concurrent readers on a small machine.
const MAX_DB_CONNECTIONS: usize = 8;

/// A server that has opened its data directory and bound its address, ready to run.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    limits: Limits,
    drain_timeout: Duration,
    data_dir: DataDir,
}

impl Server {
    /// Everything that can fail at start fails here, before any request is accepted: the data
    /// directory lock, the database and its migrations, the listening address.
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        let data_dir = DataDir::open(&config.data_dir)?;
        let db = Db::open(&data_dir.database_path(), MAX_DB_CONNECTIONS)
            .with_context(|| format!("cannot open {}", data_dir.database_path().display()))?;
        db.call(|connection| db::migrations::apply(connection).map_err(db::DbError::from))
            .await
            .with_context(|| format!("cannot migrate {}", data_dir.database_path().display()))?;
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let state = AppState {
            db,
            metrics: http::metrics::recorder(),
            shutdown: CancellationToken::new(),
            started_at: Instant::now(),
        };
        Ok(Server {
            listener,
            state,
            limits: Limits {
                request_timeout: config.request_timeout,
                max_body_bytes: config.max_body_bytes,
            },
            drain_timeout: config.drain_timeout,
            data_dir,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
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

    /// Cancel this token to shut the server down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves the application until the shutdown token is cancelled.
    pub async fn run(self) -> anyhow::Result<()> {
        let app = http::app(self.state.clone(), self.limits);
        self.run_with(app).await
    }

    /// Serves `app` (normally [`http::app`]) until the shutdown token is cancelled, then waits
    /// up to the drain deadline for in-flight requests and streams to finish.
    pub async fn run_with(self, app: Router) -> anyhow::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let upkeep = tokio::spawn(metrics_upkeep(self.state.clone()));
        let signal = shutdown.clone();
        let serve = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { signal.cancelled().await });
        let mut serving = tokio::spawn(serve.into_future());

        let finished_early = tokio::select! {
            result = &mut serving => Some(result),
            () = shutdown.cancelled() => None,
        };
        let outcome = match finished_early {
            Some(result) => result
                .context("server task failed")?
                .context("server failed"),
            None => {
                tracing::info!(
                    deadline_s = self.drain_timeout.as_secs(),
                    "shutting down: finishing in-flight requests"
                );
                match tokio::time::timeout(self.drain_timeout, &mut serving).await {
                    Ok(result) => result
                        .context("server task failed")?
                        .context("server failed"),
                    Err(_) => {
                        tracing::warn!("drain deadline passed; closing remaining connections");
                        serving.abort();
                        Ok(())
                    }
                }
            }
        };
        upkeep.abort();
        tracing::info!("stopped");
        drop(self.data_dir);
        outcome
    }
}

/// Histograms keep raw samples until upkeep folds them into buckets; do it periodically so
/// memory stays flat under load.
async fn metrics_upkeep(state: AppState) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        state.metrics.run_upkeep();
    }
}
