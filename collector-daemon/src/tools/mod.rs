//! `opc-collector endpoints | browse | read`: from a PLC's address to a
//! device entry (docs/tools.md). Each asks the server through the
//! collector's own sessions, security and trust code
//! (`collector_opcua::inspect`), so what works here works in the fleet.
//! Exit codes: 0 done, 1 the server refused or did not answer (within
//! `--timeout`), 2 bad options or configuration.

mod output;
mod target;

use std::path::PathBuf;

use clap::Args;
use collector_core::config::LoadLimits;
use collector_opcua::inspect::{BrowseOptions, Inspector};

pub(crate) use target::TargetArgs;

use crate::Failure;

/// `endpoints URL`.
#[derive(Debug, Clone, Args)]
pub(crate) struct EndpointsArgs {
    /// The server's address, `opc.tcp://host:port[/path]` (or --config
    /// with --device).
    pub url: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `browse URL [NODE]`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BrowseArgs {
    /// The server's address, then the node to start from (default: the
    /// Objects folder). With --config/--device: only the node.
    pub args: Vec<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Levels below the start node.
    #[arg(long, default_value_t = 3)]
    pub depth: u32,
    /// Nodes listed at most (the walk stops there and says so).
    #[arg(long, default_value_t = 5000)]
    pub max_nodes: usize,
    /// Only nodes whose display or browse name contains this (any case).
    #[arg(long)]
    pub filter: Option<String>,
    /// Only variables.
    #[arg(long)]
    pub variables_only: bool,
    /// Write a device entry with this id for the readable variables found
    /// (to --output, else standard output), instead of the tree.
    #[arg(long, value_name = "ID")]
    pub emit_device: Option<String>,
    /// Where --emit-device writes (a device file: `devices:` and the entry).
    #[arg(long, short, requires = "emit_device")]
    pub output: Option<PathBuf>,
    /// Replace --output if it exists.
    #[arg(long, requires = "output")]
    pub force: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `read URL NODE...`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReadArgs {
    /// The server's address, then the node ids. With --config/--device:
    /// only node ids (default: the device's).
    pub args: Vec<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Splits `URL NODE...` (or, with a configured device, `NODE...`).
fn split<'a>(args: &'a [String], target: &TargetArgs) -> (Option<&'a str>, &'a [String]) {
    if target.device.is_some() {
        (None, args)
    } else {
        match args.split_first() {
            Some((url, rest)) => (Some(url.as_str()), rest),
            None => (None, args),
        }
    }
}

fn inspector(cfg: &collector_core::CollectorConfig) -> Result<Inspector, Failure> {
    Inspector::new(cfg).map_err(|e| {
        eprintln!("error: {e}");
        Failure::Config
    })
}

/// A failure: a configuration problem exits 2, the server's exits 1.
fn server_failure(e: collector_core::ReadError) -> Failure {
    if let collector_core::ReadError::Config(m) = &e {
        eprintln!("error: {m}");
        return Failure::Config;
    }
    Failure::Runtime(anyhow::anyhow!("{e}"))
}

pub(crate) async fn endpoints(args: EndpointsArgs, limits: LoadLimits) -> Result<(), Failure> {
    let (cfg, device) = target::resolve(args.url.as_deref(), &[], &args.target, limits)?;
    let inspector = inspector(&cfg)?;
    let info = inspector.endpoints(&device).await;
    inspector.close().await;
    let info = info.map_err(server_failure)?;
    output::endpoints(&info, args.json)
}

pub(crate) async fn browse(args: BrowseArgs, limits: LoadLimits) -> Result<(), Failure> {
    let (url, rest) = split(&args.args, &args.target);
    if rest.len() > 1 {
        eprintln!("error: browse takes one start node (got {})", rest.len());
        return Err(Failure::Config);
    }
    if let Some(node) = rest.first() {
        if let Err(e) = node.parse::<collector_opcua::config::NodeAddress>() {
            eprintln!("error: start node {node:?}: {e} (quote it: `;` ends a shell command)");
            return Err(Failure::Config);
        }
    }
    let (cfg, device) = target::resolve(url, &[], &args.target, limits)?;
    let inspector = inspector(&cfg)?;
    let opts = BrowseOptions {
        start: rest.first().cloned(),
        depth: args.depth,
        max_nodes: args.max_nodes,
    };
    let browsed = inspector.browse(&device, &opts).await;
    inspector.close().await;
    let browsed = browsed.map_err(server_failure)?;
    output::browse(&browsed, &args, &device, &cfg)
}

pub(crate) async fn read(args: ReadArgs, limits: LoadLimits) -> Result<(), Failure> {
    let (url, nodes) = split(&args.args, &args.target);
    if url.is_some() && nodes.is_empty() {
        eprintln!("error: read needs node ids after the address (e.g. ns=2;s=Temperature)");
        return Err(Failure::Config);
    }
    let (cfg, device) = target::resolve(url, nodes, &args.target, limits)?;
    let inspector = inspector(&cfg)?;
    let samples = inspector.read(&device).await;
    inspector.close().await;
    let samples = samples.map_err(server_failure)?;
    output::samples(&device, samples)
}
