//! The command line: `companero serve | config | migrate`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use std::path::PathBuf;

use crate::config::{Config, DataDirArgs, ServeArgs};
use crate::data_dir::{self, DataDir};
use crate::db::{self, migrations};
use crate::inference::catalog;
use crate::inference::llm::Kernels;
use crate::inference::store::{HubOptions, ModelStore, PullProgress};
use crate::inference::{self, DeviceKind};
use crate::server::Server;

#[derive(Parser, Debug)]
#[command(
    name = "companero",
    version = crate::VERSION,
    about = "Compañero: a self-hosted AI coach that answers from your own knowledge base",
    long_about = "Compañero: a self-hosted AI coach that answers from your own knowledge base.\n\n\
        Everything runs in this one program: the web server, the chat page and widget, the \
        database and the language models. Start it with `companero serve` and open the printed \
        address in a browser.\n\n\
        Every option can also be set with an environment variable (COMPANERO_*) or in \
        companero.toml inside the data directory; a flag wins over the environment, which wins \
        over the file.",
    after_help = "Examples:\n  companero serve\n  companero serve --bind 0.0.0.0:8080 --data-dir /srv/companero\n  companero serve --llm ./model.gguf --embedder ./embedder-folder --offline\n  companero models list\n  companero models pull qwen2.5-1.5b-instruct\n  companero config\n  companero migrate --status"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: API, chat page, widget and dashboard
    Serve(ServeArgs),
    /// Print the effective configuration and where each value comes from
    Config(ServeArgs),
    /// Apply pending database migrations (the server also does this at start)
    Migrate(MigrateArgs),
    /// List, download, import and remove models
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Measure inference speed (prints figures; `--json` for tools)
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Instance administration
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Write a backup archive of the data directory (works while the server runs)
    Backup {
        #[command(flatten)]
        data: DataDirArgs,
        /// The archive to write (a ZIP with a manifest of hashes)
        file: PathBuf,
    },
    /// Restore a backup archive into a data directory (checks every hash first)
    Restore {
        /// The archive `companero backup` wrote
        archive: PathBuf,
        #[command(flatten)]
        data: DataDirArgs,
        /// Replace a data directory that already holds data (it is moved aside, not deleted)
        #[arg(long)]
        force: bool,
    },
    /// Internal: read one document from stdin and print its text as JSON. The server runs this
    /// in a child process so that a hostile file cannot harm it.
    #[command(hide = true)]
    Extract {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        limits: String,
        #[arg(long)]
        memory_bytes: u64,
        #[arg(long)]
        cpu_seconds: u64,
        /// Test only: confine as for a document, then try to read these files
        #[arg(long, hide = true, value_name = "PATH")]
        probe_open: Vec<PathBuf>,
        /// Test only: confine, then try to connect to these TCP addresses
        #[arg(long, hide = true, value_name = "ADDR")]
        probe_connect: Vec<std::net::SocketAddr>,
        /// Test only: confine, then try to run these programs
        #[arg(long, hide = true, value_name = "PATH")]
        probe_exec: Vec<PathBuf>,
        /// Test only: run the probes without confinement (the control)
        #[arg(long, hide = true)]
        probe_unconfined: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Create the instance owner (or make an existing account the owner). The password is
    /// prompted for, or read from standard input when it is not a terminal.
    CreateOwner {
        #[arg(long)]
        email: String,
        /// Display name [default: from the email]
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        data: DataDirArgs,
    },
    /// Print a single-use link (one hour) that sets a new password for an account: for when
    /// the server sends no email. Works beside a running server.
    ResetLink {
        email: String,
        /// The address people reach this server at [default: http://127.0.0.1:8080]
        #[arg(long, env = "COMPANERO_PUBLIC_URL")]
        public_url: Option<String>,
        #[command(flatten)]
        data: DataDirArgs,
    },
    /// Turn two-step sign-in off for an account that lost its authenticator and its recovery
    /// codes, and sign it out everywhere. Audited. Works beside a running server.
    DisableMfa {
        email: String,
        #[command(flatten)]
        data: DataDirArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Show the catalog and what is installed
    List(DataDirArgs),
    /// Download a catalog model from Hugging Face (honours HF_ENDPOINT and HF_TOKEN; resumes)
    Pull {
        /// A name from `companero models list`
        name: String,
        #[command(flatten)]
        data: DataDirArgs,
    },
    /// Install a local .gguf file (chat) or model folder (embedder)
    Import {
        path: PathBuf,
        /// Name to install it under [default: from the file name]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        data: DataDirArgs,
    },
    /// Remove an installed model
    Rm {
        name: String,
        #[command(flatten)]
        data: DataDirArgs,
    },
}

#[derive(clap::Args, Debug)]
struct BenchOptions {
    /// CPU threads [default: the number of cores]
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
    /// Which implementation runs the models: Compañero's own CPU kernels where they apply
    /// (auto), or candle's (the reference)
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    kernels: Kernels,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Prompt processing and generation speed of a GGUF chat model
    Llm {
        #[arg(long)]
        model: PathBuf,
        /// The user turn to send
        #[arg(long)]
        prompt_file: PathBuf,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[command(flatten)]
        options: BenchOptions,
    },
    /// Vector index memory, recall and search latency at scale (synthetic data)
    Index(IndexBenchArgs),
    /// Document ingestion throughput: read a generated PDF, chunk it, embed the chunks
    Ingest {
        /// The embedder: a folder with model.safetensors, config.json and tokenizer.json
        #[arg(long)]
        embedder: PathBuf,
        #[arg(long, default_value_t = 100)]
        pages: usize,
        #[command(flatten)]
        options: BenchOptions,
    },
    /// Concurrent idle live-chat WebSockets against one server (a child process): its memory
    /// per connection and the delivery time of staff messages to connected end users
    Live {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Staff messages timed (one conversation each)
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// A day of a program for many enrolled end users on a test clock (SQLite, in-process):
    /// time to plan, claim and deliver, throughput, and the scheduler's idle CPU
    Nudges {
        #[arg(long, default_value_t = 10_000)]
        end_users: usize,
        /// A GGUF chat model: also time the coach writing one message
        #[arg(long)]
        llm: Option<PathBuf>,
        /// Seconds of quiet for the idle CPU measurement
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Latency a cross-encoder reranker adds to a search, at 20 and 50 candidates
    Rerank {
        /// A reranker folder (model.safetensors, config.json, tokenizer.json)
        #[arg(long)]
        model: PathBuf,
        /// Candidate counts to time
        #[arg(long, value_delimiter = ',', default_values_t = [20, 50])]
        candidates: Vec<usize>,
        /// Queries timed per candidate count
        #[arg(long, default_value_t = 20)]
        queries: usize,
        #[command(flatten)]
        options: BenchOptions,
    },
    /// Embedding throughput for 256-token chunks, one at a time and in batches of 32
    Embed {
        /// A folder with model.safetensors, config.json and tokenizer.json
        #[arg(long)]
        model: PathBuf,
        /// Prose to cut into chunks [default: a built-in text]
        #[arg(long)]
        text_file: Option<PathBuf>,
        #[command(flatten)]
        options: BenchOptions,
    },
}

#[derive(clap::Args, Debug)]
struct IndexBenchArgs {
    /// Passages in the large index
    #[arg(long, default_value_t = 100_000)]
    chunks: usize,
    #[arg(long, default_value_t = 384)]
    dimensions: usize,
    /// Searches timed per mode
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Small tenants, each with its own index
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Passages per small tenant
    #[arg(long, default_value_t = 100)]
    tenant_chunks: usize,
    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
    /// Which implementation runs the models: Compañero's own CPU kernels where they apply
    /// (auto), or candle's (the reference)
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    kernels: Kernels,
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
    #[command(flatten)]
    data: DataDirArgs,
    /// List applied and pending migrations without changing anything
    #[arg(long)]
    status: bool,
}

pub fn main() -> ExitCode {
    crate::data_dir::use_private_umask();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let subcommand = matches.subcommand().map(|(_, m)| m);
    match run(cli, subcommand) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, matches: Option<&ArgMatches>) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(&args, matches)?;
            inference::set_cpu_threads(config.threads);
            crate::telemetry::init(config.log_format, &config.log_level)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))
        }
        Command::Config(args) => {
            print!("{}", Config::resolve(&args, matches)?.render());
            Ok(())
        }
        Command::Migrate(args) => migrate(&args),
        Command::Backup { data, file } => backup(&data, &file),
        Command::Restore {
            archive,
            data,
            force,
        } => restore(&archive, &data, force),
        Command::Models(command) => models(command),
        Command::Bench(command) => bench(command),
        Command::Admin(AdminCommand::CreateOwner { email, name, data }) => {
            create_owner(&email, &name, &data)
        }
        Command::Admin(AdminCommand::ResetLink {
            email,
            public_url,
            data,
        }) => reset_link(&email, public_url.as_deref(), &data),
        Command::Admin(AdminCommand::DisableMfa { email, data }) => {
            let account = email.clone();
            with_accounts(&data, |accounts| async move {
                accounts.reset_mfa_for_email(&account).await
            })?;
            println!("Two-step sign-in is off for {email}; they sign in with their password now.");
            Ok(())
        }
        Command::Extract {
            kind,
            limits,
            memory_bytes,
            cpu_seconds,
            probe_open,
            probe_connect,
            probe_exec,
            probe_unconfined,
        } => crate::knowledge::sandbox::child_main(&crate::knowledge::sandbox::ChildArgs {
            kind,
            limits,
            memory_bytes,
            cpu_seconds,
            probe: crate::knowledge::confine::Probe {
                open: probe_open,
                connect: probe_connect,
                exec: probe_exec,
                unconfined: probe_unconfined,
            },
        }),
    }
}

fn create_owner(email: &str, name: &str, data: &DataDirArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let email = &crate::auth::normalize_email(email)?;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password for the owner: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    let created = with_accounts(data, |accounts| async move {
        accounts.create_owner(email, &password, name).await
    })?;
    // The owner exists: a server waiting for its first account needs no set-up token any more.
    let (root, _) = data.resolve()?;
    let _ = std::fs::remove_file(data_dir::setup_token_path(&root));
    println!(
        "{} {email} is the instance owner",
        if created {
            "created account;"
        } else {
            "existing account:"
        }
    );
    Ok(())
}

fn reset_link(email: &str, public_url: Option<&str>, data: &DataDirArgs) -> anyhow::Result<()> {
    let (token, expires_at) = with_accounts(data, |accounts| async move {
        accounts.reset_token_for_email(email).await
    })?;
    let base = public_url
        .unwrap_or("http://127.0.0.1:8080")
        .trim_end_matches('/');
    println!(
        "{}\n(works once, until {expires_at})",
        crate::mail::reset_link(base, &token)
    );
    Ok(())
}

/// Runs account work on a data directory from the command line (beside a running server or
/// not: SQLite serialises the writes).
fn with_accounts<T, F, Fut>(data: &DataDirArgs, work: F) -> anyhow::Result<T>
where
    F: FnOnce(crate::auth::accounts::Accounts) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::auth::AuthError>>,
{
    let (root, _) = data.resolve()?;
    for dir in [root.clone(), root.join("keys")] {
        std::fs::create_dir_all(&dir)?;
    }
    let fixed = crate::data_dir::tighten_permissions(&root);
    if fixed > 0 {
        eprintln!(
            "warning: {} ({fixed} in {})",
            data_dir::TIGHTENED,
            root.display()
        );
    }
    let mut connection = db::connect(&data_dir::database_path(&root))?;
    migrations::apply(&mut connection)?;
    drop(connection);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let db = db::Db::open(&data_dir::database_path(&root), 2)?;
        let keys = crate::auth::tokens::TokenKeys::load_or_create(&root.join("keys"))?;
        let mfa = crate::auth::mfa::Mfa::load(db.clone(), &root.join("keys"))?;
        let accounts = crate::auth::accounts::Accounts::new(
            db,
            std::sync::Arc::new(keys),
            crate::auth::accounts::SignupPolicy::Closed,
            Default::default(),
            mfa,
            None,
        );
        work(accounts).await.map_err(anyhow::Error::from)
    })
}

fn models(command: ModelsCommand) -> anyhow::Result<()> {
    let store_for = |data: &DataDirArgs| -> anyhow::Result<ModelStore> {
        let (root, _) = data.resolve()?;
        Ok(ModelStore::new(root.join("models")))
    };
    match command {
        ModelsCommand::List(data) => {
            let store = store_for(&data)?;
            let installed = store.list();
            println!(
                "{:<28} {:<9} {:>8}  {:<10} DESCRIPTION",
                "NAME", "KIND", "SIZE", "STATE"
            );
            for entry in catalog::entries() {
                let state = if installed.iter().any(|m| m.manifest.name == entry.name) {
                    "installed"
                } else if entry.default {
                    "default"
                } else {
                    "available"
                };
                println!(
                    "{:<28} {:<9} {:>5} MB  {:<10} {}",
                    entry.name, entry.kind, entry.size_mb, state, entry.description
                );
            }
            for model in installed
                .iter()
                .filter(|m| catalog::find(&m.manifest.name).is_none())
            {
                println!(
                    "{:<28} {:<9} {:>5} MB  {:<10} {}",
                    model.manifest.name,
                    model.manifest.kind,
                    model.size() / 1_000_000,
                    "installed",
                    model.manifest.source
                );
            }
            Ok(())
        }
        ModelsCommand::Pull { name, data } => {
            let store = store_for(&data)?;
            let entry = catalog::find(&name).with_context(|| {
                format!("'{name}' is not in the catalog; see `companero models list`")
            })?;
            let runtime = tokio::runtime::Runtime::new()?;
            let bar = DownloadBar::new();
            let installed =
                runtime.block_on(store.pull(entry, &HubOptions::from_env(), bar.clone()))?;
            bar.bar.finish_and_clear();
            println!(
                "installed {} ({} MB) in {}",
                installed.manifest.name,
                installed.size() / 1_000_000,
                installed.dir.display()
            );
            Ok(())
        }
        ModelsCommand::Import { path, name, data } => {
            let installed = store_for(&data)?.import(&path, name.as_deref())?;
            println!(
                "installed {} ({}, {} MB) in {}",
                installed.manifest.name,
                installed.manifest.kind,
                installed.size() / 1_000_000,
                installed.dir.display()
            );
            Ok(())
        }
        ModelsCommand::Rm { name, data } => {
            let removed = store_for(&data)?.remove(&name)?;
            println!("removed {}", removed.manifest.name);
            Ok(())
        }
    }
}

/// A terminal progress bar for `models pull`.
#[derive(Clone)]
struct DownloadBar {
    bar: indicatif::ProgressBar,
}

impl DownloadBar {
    fn new() -> DownloadBar {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        DownloadBar { bar }
    }
}

impl PullProgress for DownloadBar {
    fn started(&self, file: &str, bytes: u64) {
        self.bar.set_message(file.to_string());
        self.bar.set_length(bytes);
        self.bar.set_position(0);
    }

    fn advanced(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finished_file(&self) {
        self.bar
            .println(format!("downloaded {}", self.bar.message()));
    }
}

fn bench(command: BenchCommand) -> anyhow::Result<()> {
    let threads_of = |options: &BenchOptions| {
        let threads = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        inference::set_cpu_threads(threads);
        threads
    };
    match command {
        BenchCommand::Llm {
            model,
            prompt_file,
            max_tokens,
            options,
        } => {
            let threads = threads_of(&options);
            let prompt = std::fs::read_to_string(&prompt_file)
                .with_context(|| format!("cannot read {}", prompt_file.display()))?;
            let report = crate::bench::llm(
                &model,
                &prompt,
                max_tokens,
                threads,
                options.device,
                options.kernels,
            )?;
            if options.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("model          {} ({threads} threads)", report.model);
                println!("load           {:.2} s", report.load_s);
                println!(
                    "prompt         {} tokens, {:.1} tok/s",
                    report.prompt_tokens, report.prefill_tok_s
                );
                println!("first token    {:.3} s", report.ttft_s);
                println!(
                    "generation     {} tokens, {:.1} tok/s",
                    report.gen_tokens, report.gen_tok_s
                );
                println!(
                    "follow-up      {} tokens, {} new: first token {:.3} s (cold: {:.3} s)",
                    report.follow_up_prompt_tokens,
                    report.follow_up_prompt_tokens - report.follow_up_reused_tokens,
                    report.follow_up_ttft_s,
                    report.follow_up_cold_ttft_s
                );
                println!("kernels        {}", report.kernels);
                println!("peak memory    {:.0} MB", report.peak_rss_mb);
            }
            Ok(())
        }
        BenchCommand::Ingest {
            embedder,
            pages,
            options,
        } => {
            let threads = threads_of(&options);
            let report = crate::bench::ingest::run(&embedder, pages, threads, options.device)?;
            if options.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{}-page PDF ({:.1} MB), {} threads",
                    report.pages,
                    report.pdf_bytes as f64 / 1e6,
                    threads
                );
                println!(
                    "read (sandboxed)  {:>7.2} s  {:>7.1} pages/s",
                    report.extract_s, report.extract_pages_per_s
                );
                println!(
                    "chunk             {:>7.2} s  {:>7} chunks",
                    report.chunk_s, report.chunks
                );
                println!(
                    "embed             {:>7.2} s  {:>7.1} chunks/s",
                    report.embed_s, report.embed_chunks_per_s
                );
                println!(
                    "total             {:>7.2} s  {:>7.1} pages/s",
                    report.total_s, report.total_pages_per_s
                );
            }
            Ok(())
        }
        BenchCommand::Live {
            connections,
            samples,
            json,
        } => {
            let report = crate::bench::live::run(crate::bench::live::LiveBenchOptions {
                connections,
                samples,
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} idle WebSockets opened in {:.1} s, {} still open at the end",
                    report.connections, report.connect_s, report.connected_at_end
                );
                println!(
                    "server RSS {:.1} MB -> {:.1} MB: {:.1} KB per connection",
                    report.server_rss_before_mb,
                    report.server_rss_after_mb,
                    report.rss_per_connection_kb
                );
                println!(
                    "staff message to a connected end user ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    report.samples,
                    report.delivery_p50_ms,
                    report.delivery_p99_ms,
                    report.delivery_max_ms
                );
            }
            Ok(())
        }
        BenchCommand::Nudges {
            end_users,
            llm,
            idle_seconds,
            json,
        } => {
            let report = crate::bench::nudges::run(crate::bench::nudges::NudgeBenchOptions {
                end_users,
                llm,
                idle_s: idle_seconds,
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} end users created in {:.1} s, enrolled (planned) in {:.1} s",
                    report.end_users, report.create_s, report.plan_s
                );
                println!(
                    "the day: {} jobs, {} deliveries in {:.1} s: {:.0} deliveries/s",
                    report.jobs_run, report.deliveries, report.deliver_s, report.deliveries_per_s
                );
                println!(
                    "idle: {:.2}% of a core over {} s",
                    report.idle_cpu_percent, report.idle_s
                );
                if let Some(seconds) = report.write_one_s {
                    println!("the coach writes one message in {seconds:.2} s (median of 3)");
                }
            }
            Ok(())
        }
        BenchCommand::Index(args) => {
            let report = crate::bench::index::run(crate::bench::index::IndexBenchOptions {
                chunks: args.chunks,
                dimensions: args.dimensions,
                queries: args.queries,
                tenants: args.tenants,
                tenant_chunks: args.tenant_chunks,
            })?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} chunks x {} dims: SQLite insert {:.1} s, index rebuild {:.1} s",
                    report.chunks,
                    report.dimensions,
                    report.sqlite_insert_s,
                    report.index_rebuild_s
                );
                println!(
                    "index memory {:.1} MB f16 (RSS +{:.1} MB), {:.1} MB i8; recall@10 f16 {:.3}, i8 {:.3}",
                    report.index_memory_mb,
                    report.rss_growth_mb,
                    report.index_memory_i8_mb,
                    report.recall_at_10_f16,
                    report.recall_at_10_i8
                );
                for l in &report.latency {
                    println!(
                        "search {:<8} p50 {:.2} ms  p95 {:.2} ms",
                        format!("{:?}", l.mode).to_lowercase(),
                        l.p50_ms,
                        l.p95_ms
                    );
                }
                println!(
                    "{} tenants x {} chunks: per-tenant indexes {:.1} MB (RSS +{:.1} MB); one shared index {:.1} MB",
                    report.tenants,
                    report.tenant_chunks,
                    report.tenants_index_memory_mb,
                    report.tenants_rss_growth_mb,
                    report.shared_index_memory_mb
                );
            }
            Ok(())
        }
        BenchCommand::Rerank {
            model,
            candidates,
            queries,
            options,
        } => {
            let threads = threads_of(&options);
            let report = crate::bench::rerank(
                &model,
                crate::bench::DEFAULT_TEXT,
                &candidates,
                queries,
                options.device,
                options.kernels,
            )?;
            if options.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "model          {} ({}, {}, {threads} threads)",
                    report.model, report.architecture, report.kernels
                );
                println!("load           {:.2} s", report.load_s);
                for l in &report.latency {
                    println!(
                        "{:>3} candidates p50 {:.1} ms, p95 {:.1} ms",
                        l.candidates, l.p50_ms, l.p95_ms
                    );
                }
                println!("peak memory    {:.0} MB", report.peak_rss_mb);
            }
            Ok(())
        }
        BenchCommand::Embed {
            model,
            text_file,
            options,
        } => {
            let threads = threads_of(&options);
            let text = match &text_file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => crate::bench::DEFAULT_TEXT.to_string(),
            };
            let report =
                crate::bench::embed(&model, &text, threads, options.device, options.kernels)?;
            if options.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("model          {} ({threads} threads)", report.model);
                println!("load           {:.2} s", report.load_s);
                println!(
                    "chunks         {} of {:.0} tokens on average",
                    report.chunks, report.mean_tokens_per_chunk
                );
                println!("batch 1        {:.1} chunks/s", report.chunks_per_s_batch1);
                println!("batch 32       {:.1} chunks/s", report.chunks_per_s_batch32);
                println!("peak memory    {:.0} MB", report.peak_rss_mb);
            }
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(&config).await?;
    tracing::info!(
        address = %server.local_url(),
        data_dir = %server.data_dir().root().display(),
        version = crate::VERSION,
        "listening"
    );
    if let Some(redirect) = server.redirect_addr() {
        tracing::info!("redirecting http://{redirect} to HTTPS");
    }
    if let Some(token) = server.setup_token() {
        // On the terminal, not in the log: it is a secret until the owner's account exists.
        println!(
            "\nNo account yet. Open {}/app and create the owner's account with this set-up token:\n\n    {token}\n\n(also in {}; or run `companero admin create-owner`)\n",
            server.local_url(),
            crate::data_dir::setup_token_path(server.data_dir().root()).display()
        );
    }
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received (send another to stop at once)");
        shutdown.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: stopping now");
        std::process::exit(130);
    });
    server.run().await
}

/// Ctrl-C, or SIGTERM (what service managers and `docker stop` send).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn backup(data: &DataDirArgs, file: &std::path::Path) -> anyhow::Result<()> {
    let (root, _) = data.resolve()?;
    let summary = crate::backup::backup(&root, file)?;
    println!(
        "backed up {} ({} files, {} bytes) to {}",
        root.display(),
        summary.files,
        summary.bytes,
        file.display()
    );
    Ok(())
}

fn restore(archive: &std::path::Path, data: &DataDirArgs, force: bool) -> anyhow::Result<()> {
    let (root, _) = data.resolve()?;
    let manifest = crate::backup::restore(archive, &root, force)?;
    println!(
        "restored {} files from {} (written {} by {}) into {}",
        manifest.files.len(),
        archive.display(),
        manifest.created_at.to_rfc3339(),
        manifest.version,
        root.display()
    );
    if !manifest.models.is_empty() {
        println!(
            "models are not in backups; install these again (companero models pull or import): {}",
            manifest.models.join(", ")
        );
    }
    println!("the vector index is rebuilt from the database when the server starts");
    Ok(())
}

fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let (root, _) = args.data.resolve()?;
    if args.status {
        return print_status(&root);
    }
    let data = DataDir::open(&root)?;
    let mut connection = db::connect(&data.database_path())?;
    let applied = migrations::apply(&mut connection)?;
    if applied.is_empty() {
        println!(
            "database is up to date (schema version {})",
            migrations::latest_version()
        );
    }
    for migration in applied {
        println!("applied {:04}_{}", migration.version, migration.name);
    }
    Ok(())
}

fn print_status(root: &std::path::Path) -> anyhow::Result<()> {
    let path = data_dir::database_path(root);
    let statuses = if path.exists() {
        let connection = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .with_context(|| format!("cannot open {}", path.display()))?;
        migrations::status(&connection)?
    } else {
        println!("no database yet at {}", path.display());
        migrations::status(&rusqlite::Connection::open_in_memory()?)?
    };
    println!("{:<8} {:<28} STATE", "VERSION", "NAME");
    for status in &statuses {
        let state = match &status.applied_at {
            Some(at) => format!("applied {at}"),
            None => "pending".to_string(),
        };
        println!(
            "{:<8} {:<28} {state}",
            format!("{:04}", status.version),
            status.name
        );
    }
    let pending = statuses.iter().filter(|s| s.applied_at.is_none()).count();
    if pending > 0 {
        println!("{pending} pending: run `companero migrate` or start the server to apply them");
    } else {
        println!("all {} migrations applied", statuses.len());
    }
    Ok(())
}
