//! The collector: wires config, protocol, scheduler, worker pool, batcher,
//! dispatcher, sink, spill and replay into one running pipeline, and takes
//! it down in order on shutdown.
//!
//! Shutdown (SIGTERM) within `collector.shutdown_grace`: stop scheduling;
//! let in-flight reads finish; flush the batcher; wait for every batch to
//! be acknowledged or spilled. If [`ABORT_PENDING_AT`] of the grace passes
//! first, pending deliveries are aborted so they resolve as failed and are
//! spilled; the drain gives up at [`DRAIN_UNTIL`]. The rest of the grace
//! stops the replay, flushes the producer and the spill and closes
//! sessions; nothing waits past the deadline.

use crate::last_reads::Watermarks;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::run_batcher;
use crate::config::CollectorConfig;
use crate::device_status::DeviceBoard;
use crate::dispatcher::{run_dispatcher, Dispatch};
use crate::error::CollectorError;
use crate::health::Health;
use crate::internal_events::lifecycle::{
    CollectorStarted, CollectorStopped, ShutdownGraceExceeded, ShutdownStarted,
};
use crate::metrics::{Stats, StatsSnapshot};
use crate::protocol::Protocol;
use crate::reconcile::Reconciler;
use crate::replay::{run_replay, Replay};
use crate::scheduler::ScheduleContext;
use crate::seq::SeqBase;
#[cfg(feature = "kafka")]
use crate::sink::kafka::KafkaSink;
use crate::sink::Sink;
use crate::source::{DeviceSource, StaticSource};
use crate::spill::{self, SpillStore};
use crate::worker::WorkerPool;

/// Fraction of `collector.shutdown_grace` after which deliveries still
/// waiting for the sink are aborted, so they fail now and are spilled
/// while there is time to write them.
pub const ABORT_PENDING_AT: f64 = 0.6;
/// Fraction of the grace after which the drain gives up; what is still in
/// flight then is lost, and the error log says so with the totals so far.
/// The rest of the grace is for flushing and closing sessions.
pub const DRAIN_UNTIL: f64 = 0.9;
/// The longest a flush of the sink at shutdown may take, whatever is left
/// of the grace.
const MAX_SINK_FLUSH: Duration = Duration::from_secs(5);

/// Builds a [`Collector`].
pub struct CollectorBuilder {
    config: CollectorConfig,
    protocol: Option<Arc<dyn Protocol>>,
    sink: Option<Arc<dyn Sink>>,
    source: Option<Box<dyn DeviceSource>>,
    health: Health,
    board: DeviceBoard,
}

impl CollectorBuilder {
    /// Where the device set comes from, and how it changes while the
    /// collector runs; default: the configuration's `devices`, fixed.
    pub fn source(mut self, source: impl DeviceSource) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The protocol adapter that reads devices (required).
    pub fn protocol(mut self, protocol: Arc<dyn Protocol>) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// A custom sink; default: the Kafka sink built from `config.kafka`
    /// (cargo feature `kafka`, on by default; without it a sink is required).
    pub fn sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The health latches the collector will drive, available before
    /// [`build`](Self::build) so that `/healthz` and `/startupz` can be
    /// served while the spill is recovered (not ready, not started).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The per-device view the collector will fill (for `/devices`),
    /// available before [`build`](Self::build) like [`health`](Self::health).
    pub fn devices(&self) -> DeviceBoard {
        self.board.clone()
    }

    /// Validates the configuration, creates the sink and opens the spill
    /// (recovering what a previous run left there: file reads and fsyncs,
    /// done on the blocking pool). Does not contact devices; the Kafka
    /// producer connects in the background.
    pub async fn build(mut self) -> Result<Collector, CollectorError> {
        self.config.validate()?;
        let protocol = self.protocol.ok_or_else(|| {
            CollectorError::Startup("no protocol adapter given (CollectorBuilder::protocol)".into())
        })?;
        let stop = CancellationToken::new();
        #[allow(unused_mut)] // only the Kafka sink has a probe
        let mut probe = None;
        let sink: Arc<dyn Sink> = match self.sink {
            Some(s) => s,
            #[cfg(feature = "kafka")]
            None => {
                let kafka = KafkaSink::new(&self.config.kafka, &self.config.collector_id())?;
                probe = Some(kafka.spawn_probe(stop.child_token()));
                Arc::new(kafka)
            }
            #[cfg(not(feature = "kafka"))]
            None => {
                return Err(CollectorError::Startup(
                    "no sink given (CollectorBuilder::sink) and collector-core was built without its `kafka` feature".into(),
                ))
            }
        };
        // From here on `stop` ends the probe if this function fails.
        let stop_probe_on_error = stop.clone().drop_guard();
        let spill_cfg = self.config.spill_config();
        let dead_cfg = self.config.dead_letter_config();
        let state_dir = self.config.collector.state_dir.clone();
        let (spill, dead_letters, seq, watermarks) = tokio::task::spawn_blocking(move || {
            let open = |cfg: Option<spill::SpillConfig>| match cfg {
                Some(cfg) => {
                    let store = spill::open(&cfg).map_err(|e| {
                        CollectorError::Startup(format!(
                            "opening the {} in {}: {e}",
                            cfg.role.label(),
                            cfg.dir.display()
                        ))
                    })?;
                    Ok(Some(Arc::<dyn SpillStore>::from(store)))
                }
                None => Ok::<_, CollectorError>(None),
            };
            let spill = open(spill_cfg)?;
            let dead_letters = open(dead_cfg)?;
            let seq = SeqBase::reserve(state_dir.as_deref())?;
            let watermarks = Arc::new(Watermarks::load(state_dir.as_deref()));
            Ok::<_, CollectorError>((spill, dead_letters, seq, watermarks))
        })
        .await
        .map_err(|e| CollectorError::Startup(format!("opening the state dir: {e}")))??;
        if spill.is_none() {
            tracing::warn!("no collector.state_dir or spill.dir: records Kafka cannot take will be lost (counted)");
        }
        stop_probe_on_error.disarm();
        self.health.attach(sink.clone(), spill.is_some());
        let source = match self.source {
            Some(s) => s,
            None => {
                // Phases for the devices it starts with (a source of its
                // own says how many through `schedule.phase_slots`).
                let slots = self
                    .config
                    .schedule
                    .phase_slots_for(self.config.devices.len());
                self.config.schedule.phase_slots = Some(slots);
                // The source owns the list from here (the collector keeps
                // no second copy of 2,000 devices' settings).
                Box::new(StaticSource::new(std::mem::take(&mut self.config.devices)))
            }
        };
        Ok(Collector {
            source: Some(source),
            health: self.health,
            config: self.config,
            protocol,
            sink,
            spill,
            dead_letters,
            stats: Arc::new(Stats::default()),
            board: self.board,
            seq,
            watermarks,
            stop,
            _probe: probe,
        })
    }
}

/// A configured collector, ready to [`run`](Collector::run).
pub struct Collector {
    config: CollectorConfig,
    protocol: Arc<dyn Protocol>,
    sink: Arc<dyn Sink>,
    source: Option<Box<dyn DeviceSource>>,
    spill: Option<Arc<dyn SpillStore>>,
    dead_letters: Option<Arc<dyn SpillStore>>,
    stats: Arc<Stats>,
    board: DeviceBoard,
    health: Health,
    seq: SeqBase,
    watermarks: Arc<Watermarks>,
    stop: CancellationToken,
    _probe: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Collector {
    /// A collector dropped without running (or after) stops what `build`
    /// started in the background: the sink's reachability probe.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Collector {
    /// Starts building a collector from a validated configuration.
    pub fn builder(config: CollectorConfig) -> CollectorBuilder {
        CollectorBuilder {
            config,
            protocol: None,
            sink: None,
            source: None,
            health: Health::new(),
            board: DeviceBoard::default(),
        }
    }

    /// Live counters (reads, records delivered, spilled, ...).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Per-device state for `/devices`.
    pub fn devices(&self) -> DeviceBoard {
        self.board.clone()
    }

    /// Health latches for `/healthz`, `/readyz`, `/startupz`.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The spill store, when configured (for its statistics).
    pub fn spill(&self) -> Option<Arc<dyn SpillStore>> {
        self.spill.clone()
    }

    /// The dead-letter store, when configured (see [`crate::deadletter`]).
    pub fn dead_letters(&self) -> Option<Arc<dyn SpillStore>> {
        self.dead_letters.clone()
    }

    /// The protocol adapter (e.g. for its session count).
    pub fn protocol(&self) -> Arc<dyn Protocol> {
        self.protocol.clone()
    }

    /// Runs until `shutdown` resolves, then drains within the shutdown
    /// grace (see the module docs). Returns the final counters.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<StatsSnapshot, CollectorError> {
        let cfg = &self.config;
        let (record_tx, record_rx) = mpsc::channel(cfg.batch.queue_capacity);
        let (batch_tx, batch_rx) = mpsc::channel(cfg.batch.max_in_flight);
        let batcher = tokio::spawn(run_batcher(record_rx, cfg.batch.clone(), batch_tx));
        let dispatch = Dispatch {
            sink: self.sink.clone(),
            spill: self.spill.clone(),
            dead_letters: self.dead_letters.clone(),
            stats: self.stats.clone(),
        };
        let dispatcher = tokio::spawn(run_dispatcher(batch_rx, dispatch, cfg.batch.max_in_flight));
        let replay_stop = CancellationToken::new();
        let replay = self.spill.clone().map(|store| {
            tokio::spawn(run_replay(
                Replay {
                    store,
                    dead_letters: self.dead_letters.clone(),
                    sink: self.sink.clone(),
                    stats: self.stats.clone(),
                },
                cfg.spill.replay_batches_per_second,
                replay_stop.clone(),
            ))
        });

        let schedules_stop = CancellationToken::new();
        let backfills = TaskTracker::new();
        let watermarks_stop = CancellationToken::new();
        let watermarks = tokio::spawn(self.watermarks.clone().run(watermarks_stop.clone()));
        let ctx = Arc::new(ScheduleContext {
            pool: WorkerPool::new(cfg.workers.permits),
            records: record_tx,
            stats: self.stats.clone(),
            board: self.board.clone(),
            breaker: cfg.breaker.clone(),
            epoch: tokio::time::Instant::now(),
            phase_slots: cfg.schedule.phase_slots_for(0),
            seq_base: self.seq.0,
            watermarks: self.watermarks.clone(),
            backfills: backfills.clone(),
        });
        let tracker = TaskTracker::new();
        let mut reconciler = Reconciler::new(
            self.protocol.clone(),
            ctx,
            tracker.clone(),
            schedules_stop.clone(),
        );
        let mut source = self
            .source
            .take()
            .unwrap_or_else(|| Box::new(StaticSource::default()));
        let initial = source.initial().await;
        let applied = reconciler.apply(initial);
        let attached = reconciler.len();
        // The reconciler holds the record queue's sender: the batcher ends
        // once it and every device schedule have stopped.
        tracker.spawn(reconciler.follow(source));
        tracker.close();
        self.health.set_started();
        CollectorStarted {
            devices: attached,
            rejected: applied.rejected,
            collector_id: &cfg.collector_id(),
        }
        .emit();

        shutdown.await;
        let grace = cfg.collector.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        ShutdownStarted { grace }.emit();
        self.health.set_stopping();
        schedules_stop.cancel();

        let drain = async {
            tracker.wait().await;
            backfills.close();
            backfills.wait().await;
            watermarks_stop.cancel();
            let _ = watermarks.await;
            let _ = batcher.await;
            let _ = dispatcher.await;
        };
        tokio::pin!(drain);
        if tokio::time::timeout(grace.mul_f64(ABORT_PENDING_AT), &mut drain)
            .await
            .is_err()
        {
            tracing::warn!(
                at = ABORT_PENDING_AT,
                "deliveries still pending late in the shutdown grace; aborting them so they are spilled"
            );
            // Purging takes the sink's client locks: off the executor, whose
            // threads are still finishing reads and spills.
            let sink = self.sink.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || sink.abort_pending()).await {
                tracing::error!(error = %e, "aborting pending deliveries");
            }
            let give_up =
                tokio::time::Instant::now().max(deadline - grace.mul_f64(1.0 - DRAIN_UNTIL));
            if tokio::time::timeout_at(give_up, &mut drain).await.is_err() {
                ShutdownGraceExceeded {
                    grace,
                    totals: self.stats.snapshot(),
                }
                .emit();
            }
        }
        // The replay gets until the drain's give-up point, so a replayed
        // batch in flight cannot eat the time sessions need to close.
        replay_stop.cancel();
        if let Some(replay) = replay {
            let until =
                tokio::time::Instant::now().max(deadline - grace.mul_f64(1.0 - DRAIN_UNTIL));
            let _ = tokio::time::timeout_at(until, replay).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = self.sink.flush(left.min(MAX_SINK_FLUSH)).await {
            tracing::warn!(error = %e, "sink flush at shutdown");
        }
        let sink = self.sink.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || sink.close()).await {
            tracing::warn!(error = %e, "sink close task");
        }
        for store in [self.spill.clone(), self.dead_letters.clone()]
            .into_iter()
            .flatten()
        {
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "spill flush at shutdown"),
                Err(e) => tracing::error!(error = %e, "spill flush task"),
            }
        }
        // Sessions are closed within what is left of the grace; a server that
        // does not answer in time expires them with its session timeout.
        if tokio::time::timeout_at(deadline, self.protocol.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "sessions not all closed within the shutdown grace; their servers will expire them"
            );
        }
        self.stop.cancel();
        let totals = self.stats.snapshot();
        CollectorStopped { totals }.emit();
        Ok(totals)
    }
}
