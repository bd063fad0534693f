//! The live device list. The configuration file and the device files it
//! names are checked every [`CHECK_EVERY`] and re-read when one changed (a
//! new inode, size or modification time of what the path resolves to: a
//! Kubernetes ConfigMap update is an atomic `..data` symlink swap, which
//! shows as a new inode) or at once on SIGHUP. A good new version, cut to
//! this replica's shard, goes to the collector's reconciler (devices
//! added, removed, changed; the others untouched). A bad one is rejected
//! whole: the running set stays, every problem is logged with `file:line`,
//! counted, and shown in `/status` until a good version replaces it.
//!
//! With `source: postgres` the devices come from the registry instead
//! (`registry`): the file still gives `shard.count` and the defaults, and
//! the registry is polled for this shard's changes.
//!
//! Only the device list and `shard.count` apply live (with
//! `schedule.interval`, the default of the devices' intervals, and
//! `shard.handover_grace`); another changed section is said once per
//! reload (a restart applies it). A device a new count moves to another
//! replica is still read here for the handover grace (`handover`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collector_core::config::{Device, LoadLimits};
use collector_core::metrics::names;
use collector_core::shard::{IndexSource, Shard};
use collector_core::source::DeviceSetSender;
use collector_core::CollectorConfig;
use collector_opcua::config::OpcUaConfig;
use std::sync::{Mutex, PoisonError};
use tokio_util::sync::CancellationToken;

use crate::handover::Handovers;
use crate::registry::Registry;

mod registry;
mod restart;
mod stamp;
mod status;

use restart::restart_needed;
use stamp::{stamp, stamps, Stamp};
pub(crate) use status::{Fleet, ListStatus, SharedStatus};

/// How often the files are checked for a change.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// This replica's shard of `cfg`, and its devices.
pub(crate) fn shard_devices(cfg: &CollectorConfig, source: &IndexSource) -> (Shard, Vec<Device>) {
    let shard = Shard {
        index: source.index(cfg.shard.index, cfg.shard.count),
        count: cfg.shard.count,
    };
    let mine = cfg
        .devices
        .iter()
        .filter(|d| shard.owns(&d.id))
        .cloned()
        .collect();
    (shard, mine)
}

/// Watches the files of a running configuration and feeds new device sets.
pub(crate) struct Reloader {
    /// SIGHUP, listened for from the start (its default action would end
    /// the process while the collector is still starting).
    hangup: Option<tokio::signal::unix::Signal>,
    path: PathBuf,
    limits: LoadLimits,
    /// Where the shard index comes from (worked out again with each count).
    index: IndexSource,
    running: CollectorConfig,
    /// This shard's devices of `running`.
    mine: Vec<Device>,
    /// Other shards' devices still read here.
    handovers: Handovers,
    stamps: Vec<(PathBuf, Stamp)>,
    sender: DeviceSetSender,
    status: SharedStatus,
    /// The device registry, with `source: postgres`, and when to ask it
    /// next.
    registry: Option<Registry>,
    next_poll: Instant,
}

impl Reloader {
    /// For the configuration `running`, loaded from `path`, whose devices
    /// of its shard (`index`) the collector started with. (A file edited
    /// between that load and this call is seen at its next change.) With a
    /// `registry`, the collector starts with none: [`Reloader::first_load`]
    /// reads them.
    pub(crate) fn new(
        path: &Path,
        limits: LoadLimits,
        index: IndexSource,
        running: CollectorConfig,
        registry: Option<Registry>,
        sender: DeviceSetSender,
    ) -> Self {
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the device files are still checked every 2s");
                None
            }
        };
        let (shard, mut mine) = shard_devices(&running, &index);
        if registry.is_some() {
            mine.clear();
        }
        publish_shard(shard);
        metrics::gauge!(names::CONFIG_LAST_RELOAD).set(unix_now());
        let status = Arc::new(Mutex::new(Fleet {
            status: ListStatus {
                shard_index: shard.index,
                shard_count: shard.count,
                shard_generation: 0,
                handovers: 0,
                listed: running.devices.len(),
                devices: mine.len(),
                reloads_ok: 0,
                reloads_failed: 0,
                loaded_at: now_rfc3339(),
                last_error: None,
                registry: registry.as_ref().map(Registry::view),
            },
            handovers: HashMap::new(),
        }));
        metrics::gauge!(names::SHARD_GENERATION).set(0.0);
        metrics::gauge!(names::SHARD_HANDOVERS).set(0.0);
        let mut r = Self {
            hangup,
            path: path.to_path_buf(),
            limits,
            index,
            running,
            mine,
            handovers: Handovers::default(),
            stamps: Vec::new(),
            sender,
            status,
            registry,
            next_poll: Instant::now(),
        };
        r.stamps = r
            .watched()
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
        r
    }

    /// The status `/status` shows.
    pub(crate) fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    fn watched(&self) -> Vec<PathBuf> {
        std::iter::once(self.path.clone())
            .chain(self.running.device_files.iter().cloned())
            .collect()
    }

    /// Checks and reloads until `stop` (or until the collector takes no
    /// more device sets).
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut hangup = self.hangup.take();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let handover_end = self.handovers.next_end();
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                _ = async {
                    match handover_end {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if !self.end_handovers() {
                        return;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(self.next_poll.into()), if self.registry.is_some() => {
                    // A poll in flight gives way to a stop (its timeout
                    // could otherwise hold the shutdown).
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        sent = self.poll_registry() => if !sent { return },
                    }
                    continue;
                }
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
                _ = tick.tick() => {
                    if !self.changed().await {
                        continue;
                    }
                    "a file changed"
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = self.reload(why) => if !sent { return },
            }
        }
    }

    /// Whether a watched file changed since it was last read.
    async fn changed(&self) -> bool {
        let now = stamps(self.stamps.iter().map(|(p, _)| p.clone()).collect()).await;
        now != self.stamps
    }

    /// Reads the configuration again and applies its device list, or
    /// rejects it whole. False once the collector takes no more sets.
    async fn reload(&mut self, why: &str) -> bool {
        let started = Instant::now();
        // Taken before reading: a change during the read is seen next time.
        let mut taken = stamps(self.watched()).await;
        let (path, limits) = (self.path.clone(), self.limits);
        let loaded = tokio::task::spawn_blocking(move || {
            CollectorConfig::load_within(&path, &OpcUaConfig, limits)
        })
        .await;
        let cfg = match loaded {
            Ok(Ok(cfg)) => cfg,
            Ok(Err(errors)) => {
                let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
                for p in &problems {
                    tracing::warn!(problem = %p, "device list reload rejected");
                }
                tracing::warn!(
                    problems = problems.len(),
                    why,
                    "device list reload rejected; the running devices are kept"
                );
                // Also watch the files the problems are in (a device file
                // the new list names for the first time), so that fixing
                // one is seen.
                let mut named: Vec<PathBuf> = errors
                    .iter()
                    .filter_map(|e| e.file.clone())
                    .filter(|f| !taken.iter().any(|(p, _)| p == f))
                    .collect();
                named.sort();
                named.dedup();
                taken.extend(stamps(named).await);
                self.stamps = taken;
                self.fail(problems);
                return true;
            }
            Err(e) => {
                self.stamps = taken;
                self.fail(vec![format!("reload task: {e}")]);
                return true;
            }
        };
        if cfg.source != self.running.source {
            self.stamps = taken;
            self.fail(vec![format!(
                "{}: `source` changed; a restart applies it (the running devices are kept)",
                self.path.display()
            )]);
            return true;
        }
        let restart = restart_needed(&self.running, &cfg);
        if !restart.is_empty() {
            tracing::warn!(
                sections = %restart.join(", "),
                "these sections changed; only the device list and shard.count apply without a restart"
            );
        }
        let shard = self.shard_of(&cfg);
        let sent = match self.registry.as_mut() {
            None => {
                let (_, mine) = shard_devices(&cfg, &self.index);
                self.apply(
                    &cfg,
                    shard,
                    mine,
                    &cfg.devices,
                    cfg.devices.len(),
                    why,
                    started,
                )
            }
            Some(registry) => {
                // The defaults may have changed: every row is checked
                // again. Unreachable, the rows held are kept (cut to the
                // new shard) and the next poll loads the shard.
                let _ = registry.sync(shard, &cfg, true).await;
                self.next_poll = Instant::now() + registry.next_in();
                let mine = registry.devices(shard);
                let rows = registry.view().rows;
                let listed = self.listed_with(&mine);
                self.apply(&cfg, shard, mine, &listed, rows, why, started)
            }
        };
        if !sent {
            return false;
        }
        self.running = cfg;
        // The new list may name other device files.
        let new: Vec<PathBuf> = self
            .watched()
            .into_iter()
            .filter(|p| !taken.iter().any(|(q, _)| q == p))
            .collect();
        taken.extend(stamps(new).await);
        self.stamps = taken;
        true
    }

    /// This replica's shard under `cfg`.
    fn shard_of(&self, cfg: &CollectorConfig) -> Shard {
        Shard {
            index: self.index.index(cfg.shard.index, cfg.shard.count),
            count: cfg.shard.count,
        }
    }

    /// Makes `mine` (this `shard`'s devices under `cfg`) the running set,
    /// with the handovers `listed` (every device the new list has, of any
    /// shard) calls for. False once the collector takes no more sets.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        cfg: &CollectorConfig,
        shard: Shard,
        mine: Vec<Device>,
        listed: &[Device],
        listed_count: usize,
        why: &str,
        started: Instant,
    ) -> bool {
        let scheduled = mine.len();
        let before = self.scheduled_ids();
        let resized = shard.count != self.running.shard.count;
        let handing_over = self.handovers.follow(
            &before,
            listed,
            shard,
            cfg.shard.handover_grace,
            Instant::now(),
        );
        self.mine = mine;
        if !self.send() {
            return false;
        }
        if resized {
            let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            s.status.shard_generation += 1;
            metrics::gauge!(names::SHARD_GENERATION).set(s.status.shard_generation as f64);
        }
        if handing_over > 0 {
            tracing::info!(
                devices = handing_over,
                shards = shard.count,
                "devices moved to other shards: still read here until their handover grace ends"
            );
        }
        publish_shard(shard);
        metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
        metrics::gauge!(names::CONFIG_LAST_RELOAD).set(unix_now());
        tracing::info!(
            why,
            listed = listed_count,
            shard = shard.index,
            shards = shard.count,
            devices = scheduled,
            took_ms = started.elapsed().as_millis() as u64,
            "device list reloaded"
        );
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &mut s.status;
        s.shard_index = shard.index;
        s.shard_count = shard.count;
        s.listed = listed_count;
        s.devices = scheduled;
        s.reloads_ok += 1;
        s.loaded_at = now_rfc3339();
        s.last_error = None;
        if let Some(r) = &self.registry {
            s.registry = Some(r.view());
        }
        true
    }

    fn fail(&self, problems: Vec<String>) {
        metrics::counter!(names::CONFIG_RELOADS, "result" => "failed").increment(1);
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.status.reloads_failed += 1;
        s.status.last_error = Some(problems);
    }

    /// The ids scheduled now: this shard's and those handing over.
    fn scheduled_ids(&self) -> HashSet<Arc<str>> {
        self.mine
            .iter()
            .chain(self.handovers.devices())
            .map(|d| d.id.clone())
            .collect()
    }

    /// Sends this shard's devices and those handing over to the collector,
    /// and shows the handovers. False once it takes no more sets.
    fn send(&self) -> bool {
        let set: Vec<Device> = self
            .mine
            .iter()
            .chain(self.handovers.devices())
            .cloned()
            .collect();
        if !self.sender.send(set) {
            return false;
        }
        metrics::gauge!(names::SHARD_HANDOVERS).set(self.handovers.len() as f64);
        let views = self.handovers.views();
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.status.handovers = self.handovers.len();
        s.handovers = views;
        true
    }

    /// Stops reading the devices whose handover grace is over. False once
    /// the collector takes no more sets.
    fn end_handovers(&mut self) -> bool {
        let ended = self.handovers.expire(Instant::now());
        if ended == 0 {
            return true;
        }
        tracing::info!(
            devices = ended,
            still_handing_over = self.handovers.len(),
            "handover grace over: devices of other shards no longer read here"
        );
        self.send()
    }
}

fn publish_shard(shard: Shard) {
    metrics::gauge!(names::SHARD_INDEX).set(f64::from(shard.index));
    metrics::gauge!(names::SHARD_COUNT).set(f64::from(shard.count));
    if shard.index >= shard.count {
        tracing::warn!(
            shard = shard.index,
            shards = shard.count,
            "this replica's shard is not below shard.count: it reads no device of its own (started before the count grew, or being scaled away)"
        );
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
