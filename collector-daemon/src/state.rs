//! `opc-collector spill ...` and `opc-collector deadletter ...`: what the
//! spill and the dead letters hold, and sending dead letters back once
//! their cause is fixed. Offline: the stores take their directory's lock,
//! so these refuse to run while a collector holds it.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{anyhow, Context as _};
use collector_core::config::LoadLimits;
use collector_core::deadletter::{self, Inventory};
use collector_core::spill::{self, SpillConfig, SpillError, SpillStore, StoreRole};

use crate::cli::StateAction;
use crate::Failure;

/// Runs `action` on the store of `kind` configured in `config`.
pub(crate) fn run(
    config: Option<&Path>,
    limits: LoadLimits,
    kind: StoreRole,
    action: StateAction,
) -> Result<(), Failure> {
    let Some(config) = config else {
        eprintln!(
            "error: --config <CONFIG> is required (the collector's configuration: its state dir)"
        );
        return Err(Failure::Config);
    };
    let cfg = crate::run::load(config, limits)?;
    let store_cfg = match kind {
        StoreRole::Spill => cfg.spill_config(),
        StoreRole::DeadLetters => cfg.dead_letter_config(),
    }
    .ok_or_else(|| {
        anyhow!(
            "{}: no collector.state_dir (nor spill.dir / dead_letters.dir): there is no {}",
            config.display(),
            kind.label()
        )
    })?;
    let Some(store) = open_existing(&store_cfg)? else {
        println!(
            "{}: empty ({} does not exist)",
            kind.label(),
            store_cfg.dir.display()
        );
        return Ok(());
    };
    match action {
        StateAction::Stats => {
            let inv = deadletter::inventory(&*store, kind).context("reading the store")?;
            print_stats(kind, &store_cfg, &inv);
        }
        StateAction::Inspect { limit } => {
            inspect(&*store, kind, limit).context("reading the store")?;
        }
        StateAction::Requeue => {
            if kind != StoreRole::DeadLetters {
                return Err(anyhow!(
                    "only dead letters are requeued (`opc-collector deadletter requeue`)"
                )
                .into());
            }
            let spill_cfg = cfg.spill_config().ok_or_else(|| {
                anyhow!(
                    "{}: dead letters are requeued into the spill, and none is configured",
                    config.display()
                )
            })?;
            let spill = open(&spill_cfg)?;
            let moved = deadletter::requeue(&*store, &*spill).context("requeueing")?;
            println!(
                "requeued {} records in {} batches into the spill ({}); the collector replays them when it next runs{}",
                moved.records,
                moved.batches,
                spill_cfg.dir.display(),
                if moved.undecodable > 0 {
                    format!("; {} batches do not decode and were left in place", moved.undecodable)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

/// Opens a store that exists; None when its directory does not.
fn open_existing(cfg: &SpillConfig) -> Result<Option<Box<dyn SpillStore>>, Failure> {
    if !cfg.dir.exists() {
        return Ok(None);
    }
    open(cfg).map(Some)
}

fn open(cfg: &SpillConfig) -> Result<Box<dyn SpillStore>, Failure> {
    spill::open(cfg).map_err(|e| match e {
        SpillError::Locked(dir) => Failure::Runtime(anyhow!(
            "{} is held by a running collector; stop it first (these tools work offline)",
            dir.display()
        )),
        other => Failure::Runtime(anyhow!("opening {}: {other}", cfg.dir.display())),
    })
}

fn age(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => {
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
                + " ago"
        }
        None => "-".to_string(),
    }
}

fn print_stats(kind: StoreRole, cfg: &SpillConfig, inv: &Inventory) {
    println!("{}: {}", kind.label(), cfg.dir.display());
    println!("  batches   {}", inv.batches);
    println!("  records   {}", inv.records);
    println!("  oldest    {}", age(inv.oldest));
    println!("  newest    {}", age(inv.newest));
    println!("  devices   {}", inv.devices.len());
    let mut top: Vec<(&String, &u64)> = inv.devices.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (device, n) in top.iter().take(10) {
        println!("    {device:<32} {n}");
    }
    if top.len() > 10 {
        println!("    ... and {} more", top.len() - 10);
    }
    if kind == StoreRole::DeadLetters {
        println!("  causes");
        for (cause, (n, detail)) in &inv.causes {
            println!("    {:<16} {n:<8} e.g. {detail}", cause.label());
        }
    }
    if inv.undecodable > 0 {
        println!("  undecodable batches {}", inv.undecodable);
    }
}

fn inspect(store: &dyn SpillStore, kind: StoreRole, limit: usize) -> Result<(), SpillError> {
    let mut shown = 0usize;
    let mut total = 0usize;
    deadletter::for_each_batch(store, |b| {
        total += 1;
        if shown >= limit {
            return;
        }
        shown += 1;
        match deadletter::batch_messages(kind, b) {
            Ok(batch) => {
                let mut devices: Vec<&str> =
                    batch.messages.iter().map(|m| m.key.as_str()).collect();
                devices.dedup();
                let cause = batch
                    .refusal
                    .as_ref()
                    .map(|(c, d)| format!(" cause={} ({d})", c.label()))
                    .unwrap_or_default();
                println!(
                    "batch {} written {} records={} devices={}{cause}",
                    b.id,
                    age(Some(b.written_at)),
                    b.records,
                    devices.join(","),
                );
            }
            Err(e) => println!(
                "batch {} written {} records={} undecodable: {e}",
                b.id,
                age(Some(b.written_at)),
                b.records
            ),
        }
    })?;
    if total > shown {
        println!("... {} more batches (--limit)", total - shown);
    }
    Ok(())
}
