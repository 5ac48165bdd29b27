//! Compañero: a self-hosted AI coaching platform in one executable.
//!
//! Layers, top to bottom (see docs/architecture.md):
//! - [`cli`] and [`config`]: the command line and layered configuration;
//! - [`http`]: routes, middleware, error catalogue, embedded web assets;
//! - [`inference`]: the chat model and the embedder, in-process with candle;
//! - [`knowledge`]: documents, chunks, the vector index and hybrid search;
//! - [`chat`]: conversations, grounded answers with citations and confidence;
//! - [`coaching`]: end users, goals, programs, nudges and test clocks;
//! - [`privacy`]: exports and erasure (data protection);
//! - [`jobs`]: the durable job system every background task runs on;
//! - [`server`]: start-up and graceful shutdown;
//! - [`db`] and [`data_dir`]: SQLite with migrations, and the folder that holds all state;
//! - [`backup`]: backup archives of a data directory, and restoring them.

pub mod auth;
pub mod backup;
pub mod bench;
pub mod channels;
pub mod chat;
pub mod cli;
pub mod coaching;
pub mod config;
pub mod crash_points;
pub mod data_dir;
pub mod db;
pub mod http;
pub mod inference;
pub mod jobs;
pub mod knowledge;
pub mod mail;
pub mod privacy;
pub mod server;
pub mod telemetry;

/// `companero --version`: the crate version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("COMPANERO_GIT_COMMIT"),
    ")"
);
