//! `opc-collector run` and `opc-collector validate`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use collector_core::config::{LoadLimits, SourceKind};
use collector_core::{Collector, CollectorConfig};
use collector_opcua::config::OpcUaConfig;
use collector_opcua::OpcUaProtocol;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::{http, open_files, reload, telemetry, Failure};

/// Loads a config, printing every problem to stderr.
pub(crate) fn load(path: &Path, limits: LoadLimits) -> Result<CollectorConfig, Failure> {
    CollectorConfig::load_within(path, &OpcUaConfig, limits).map_err(|errors| {
        for e in errors.iter() {
            eprintln!("error: {e}");
        }
        eprintln!("{} problem(s) in {}", errors.0.len(), path.display());
        Failure::Config
    })
}

pub(crate) fn validate(path: &Path, limits: LoadLimits) -> Result<(), Failure> {
    let cfg = load(path, limits)?;
    if cfg.source == SourceKind::Postgres {
        println!(
            "{}: OK (devices from the PostgreSQL registry, not contacted; kafka {} topic {})",
            path.display(),
            cfg.kafka.brokers,
            cfg.kafka.topic
        );
        return Ok(());
    }
    let nodes = collector_opcua::config::node_count(&cfg);
    println!(
        "{}: OK ({} devices, {} nodes, kafka {} topic {})",
        path.display(),
        cfg.devices.len(),
        nodes,
        cfg.kafka.brokers,
        cfg.kafka.topic
    );
    // What `run` will have here: the soft limit raised to the hard one.
    if let Some(files) = open_files::current() {
        let count = cfg.shard.count.max(1);
        let shards = u64::from(count);
        let needed = collector_opcua::config::session_count(&cfg, &cfg.devices) as u64;
        // The busiest replica's share: devices go to shards by their id's
        // hash, so the split is uneven.
        let per_replica = if count > 1 {
            let mut by_shard: std::collections::HashMap<u32, Vec<collector_core::Device>> =
                std::collections::HashMap::new();
            for d in &cfg.devices {
                by_shard
                    .entry(collector_core::shard::shard_of(&d.id, count))
                    .or_default()
                    .push(d.clone());
            }
            by_shard
                .values()
                .map(|d| collector_opcua::config::session_count(&cfg, d) as u64)
                .max()
                .unwrap_or(0)
        } else {
            needed
        };
        println!(
            "{files}: `run` raises the soft limit to the hard one, which allows {} sessions \
             (one per endpoint); this file needs {needed}{}",
            files.sessions_at_hard(),
            if shards > 1 {
                format!(", at most {per_replica} on one replica over {shards} shards")
            } else {
                String::new()
            }
        );
        if per_replica > files.sessions_at_hard() {
            eprintln!(
                "warning: {per_replica} sessions per replica exceed the {} this host's \
                 open-files limit allows; raise the hard limit (`ulimit -Hn`, \
                 LimitNOFILE=, the container runtime's nofile) or add shards",
                files.sessions_at_hard()
            );
        }
    }
    Ok(())
}

/// Raises the open-files limit and says what it allows against what the
/// first device list needs (a registry's is not known yet).
fn check_open_files(cfg: &CollectorConfig, mine: Option<&[collector_core::Device]>) {
    let Some(files) = open_files::raise() else {
        return;
    };
    let allows = files.sessions();
    match mine.map(|d| collector_opcua::config::session_count(cfg, d) as u64) {
        Some(needed) if needed > allows => tracing::warn!(
            soft = files.soft,
            hard = files.hard,
            allows,
            needed,
            "the open-files limit allows fewer sessions than the device list needs: \
             sessions beyond it fail with EMFILE (\"Too many open files\"); raise the hard \
             limit or add shards"
        ),
        needed => tracing::info!(
            raised_from = files.was,
            soft = files.soft,
            hard = files.hard,
            allows,
            needed,
            "open files: the limit allows {allows} sessions (one per endpoint)"
        ),
    }
}

pub(crate) async fn run(
    path: &Path,
    limits: LoadLimits,
    http_addr: Option<SocketAddr>,
) -> Result<(), Failure> {
    let cfg = load(path, limits)?;
    // The index: configured, else from the environment (worked out again
    // with every count). One not below the count (from the environment: a
    // configured one is checked with the file) is a replica started ahead
    // of its ConfigMap in a scale-up: it runs, reads nothing and says so,
    // and takes its devices when it reads the new count.
    let index = collector_core::shard::IndexSource::from_env().map_err(|e| {
        eprintln!("error: {e}");
        Failure::Config
    })?;
    let addr = http_addr.unwrap_or(cfg.http.addr);
    let metrics = telemetry::install_metrics()?;
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).context("OPC UA client")?);
    // The device list is live: this replica's shard of it, re-read when
    // its files change (`reload`), or read from the registry and polled.
    let registry = match cfg.source {
        SourceKind::File => None,
        SourceKind::Postgres => Some(Registry::new(&cfg.registry, limits).map_err(|e| {
            eprintln!("error: {}: {}", path.display(), e.cause());
            Failure::Config
        })?),
    };
    let (shard, mine) = reload::shard_devices(&cfg, &index);
    check_open_files(&cfg, registry.is_none().then_some(mine.as_slice()));
    if registry.is_none() {
        tracing::info!(
            shard = shard.index,
            shards = shard.count,
            listed = cfg.devices.len(),
            devices = mine.len(),
            "device list loaded"
        );
    }
    let starting_with = mine.len();
    let (sender, source) = collector_core::source::channel(mine);
    let mut reloader = reload::Reloader::new(path, limits, index, cfg.clone(), registry, sender);
    let list_status = reloader.status();
    // The phases for the devices this replica starts with (the registry's
    // arrive later: its replicas take the fewest), fixed until a restart;
    // the reloader keeps the file's setting to compare with.
    let mut cfg = cfg;
    cfg.schedule.phase_slots = Some(cfg.schedule.phase_slots_for(starting_with));
    let builder = Collector::builder(cfg).protocol(protocol).source(source);
    // Bind before building: recovering a large spill takes time, and
    // `/healthz` must answer meanwhile (`/startupz` and `/readyz` say 503).
    let stop_http = CancellationToken::new();
    let surface = http::AppState {
        metrics,
        health: builder.health(),
        devices: builder.devices(),
        list: Some(list_status),
    };
    let (_, http_task) = http::serve(addr, surface, stop_http.clone()).await?;
    // One listener for SIGTERM/SIGINT from here on: the wait for the
    // registry, the collector's start (a spill recovery) and its run all
    // end on it.
    let shutdown = CancellationToken::new();
    let signalled = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    // With a registry: its devices before the collector starts
    // (`/startupz` says 503 until then), however long it is unreachable.
    if !reloader
        .first_load(shutdown.clone().cancelled_owned())
        .await
    {
        stop_http.cancel();
        let _ = http_task.await;
        return Ok(());
    }
    let collector = builder.build().await.context("starting the collector")?;
    let stop_reload = CancellationToken::new();
    let reload_task = tokio::spawn(reloader.run(stop_reload.clone()));
    collector
        .run(shutdown.cancelled_owned())
        .await
        .context("collector")?;
    stop_reload.cancel();
    let _ = reload_task.await;
    stop_http.cancel();
    let _ = http_task.await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the collector");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
