//! `opc-collector`: reads OPC UA devices on schedule and delivers every
//! sample to Kafka. This file only parses the command line, sets up logging
//! and maps outcomes to exit codes (0 ok, 1 runtime failure, 2 bad config);
//! the work is in `collector-core` and `collector-opcua`.

mod allocator;
mod cli;
#[cfg(feature = "demo")]
mod demo;
mod handover;
mod http;
mod open_files;
mod registry;
mod reload;
mod run;
mod state;
mod telemetry;
mod tools;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// How a command failed, which decides the exit code.
pub(crate) enum Failure {
    /// The configuration is invalid (exit 2); already reported.
    Config,
    /// Anything else (exit 1).
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    allocator::no_huge_pages();
    allocator::purge_at_once();
    // async-opcua 0.19 looks up OPCUA_TRACE_LOCKS with getenv on every lock
    // it takes (it caches only a "true"), ~2 % of the daemon's instructions
    // at the reference workload. Set, the lookups stop; the lock traces it
    // enables are `trace`-level events, filtered out unless asked for.
    // Done before any thread exists.
    if std::env::var_os("OPCUA_TRACE_LOCKS").is_none() {
        std::env::set_var("OPCUA_TRACE_LOCKS", "1");
    }
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo(_) => cli::DEMO_LOG_FILTER,
        _ => cli::DEFAULT_LOG_FILTER,
    };
    telemetry::init_logging(
        cli.log_format,
        cli.log_level.as_deref().unwrap_or(default_filter),
    );
    let limits = cli.limits.limits();
    let outcome = match cli.command {
        Command::Validate { config } => run::validate(&config, limits),
        Command::Run { config, http_addr } => {
            runtime().and_then(|rt| rt.block_on(run::run(&config, limits, http_addr)))
        }
        Command::Spill { config, action } => state::run(
            config.as_deref(),
            limits,
            collector_core::spill::StoreRole::Spill,
            action,
        ),
        Command::Deadletter { config, action } => state::run(
            config.as_deref(),
            limits,
            collector_core::spill::StoreRole::DeadLetters,
            action,
        ),
        Command::Endpoints(args) => tool(tools::endpoints(args, limits)),
        Command::Browse(args) => tool(tools::browse(args, limits)),
        Command::Read(args) => tool(tools::read(args, limits)),
        Command::Registry { config, action } => runtime()
            .and_then(|rt| rt.block_on(registry::cli::run(config.as_deref(), limits, action))),
        #[cfg(feature = "demo")]
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        #[cfg(not(feature = "demo"))]
        Command::Demo(_) => Err(Failure::Runtime(anyhow::anyhow!(
            "this opc-collector was built without the demo (it links the simulator and an \
             in-process Kafka); run it with `cargo run --release --features demo --bin \
             opc-collector -- demo`"
        ))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config) => ExitCode::from(2),
        Err(Failure::Runtime(e)) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs an operator tool; at the end, blocking work still running (a DNS
/// lookup on a dead resolver) is not waited for past a second.
fn tool(work: impl std::future::Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    let rt = runtime()?;
    let outcome = rt.block_on(work);
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("collector")
        .build()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("tokio runtime: {e}")))
}
