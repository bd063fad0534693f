//! `opc-collector`: reads OPC UA devices on schedule and delivers every
//! sample to Kafka. This file only parses the command line, sets up logging
//! and maps outcomes to exit codes (0 ok, 1 runtime failure, 2 bad config);
//! the work is in `collector-core` and `collector-opcua`.

mod cli;
mod demo;
mod http;
mod run;
mod telemetry;

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
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format, &cli.log_level);
    let outcome = match cli.command {
        Command::Validate { config } => run::validate(&config),
        Command::Run { config, http_addr } => {
            runtime().and_then(|rt| rt.block_on(run::run(&config, http_addr)))
        }
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
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

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("collector")
        .build()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("tokio runtime: {e}")))
}
