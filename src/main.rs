//! The `aura` binary: parses flags, sets up logging and runs the server.

use std::process::ExitCode;

use anyhow::Context;
use aura::config::{Cli, Command, LogFormat, ServeArgs};
use aura::server::Server;
use clap::Parser;

/// sled allocates and frees a node copy for most inserts, and glibc's
/// malloc was about a quarter of the CPU time of durable sends in perf
/// profiles (BENCHMARKS.md). mimalloc raised acks per second at 512 and
/// 2,048 sends in flight by a fifth or more in the same runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    init_logging(log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::User(args) => runtime.block_on(aura::cli::run(args)),
        Command::Backup(args) => runtime.block_on(aura::backup::run(args)),
        Command::Verify(args) => aura::verify::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error, at the level RUST_LOG sets (default info). Colour
/// codes are written only to a terminal, so journald stores clean lines.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.validate()?;
    // Bind first, so that a busy port leaves no new data directory and
    // setup code behind.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {} (--listen): free the port or choose another", args.listen))?;
    let server = Server::open(config).await?;
    server.run(listener, aura::shutdown::signal()).await
}
