//! The command line: `companero serve | config | migrate`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, DataDirArgs, ServeArgs};
use crate::data_dir::{self, DataDir};
use crate::db::{self, migrations};
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
    after_help = "Examples:\n  companero serve\n  companero serve --bind 0.0.0.0:8080 --data-dir /srv/companero\n  companero config\n  companero migrate --status"
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
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(&config).await?;
    tracing::info!(
        address = %format!("http://{}", server.local_addr()),
        data_dir = %server.data_dir().root().display(),
        version = crate::VERSION,
        "listening"
    );
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
