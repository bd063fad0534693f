//! The collector: wires config, protocol, scheduler, worker pool, batcher,
//! dispatcher, sink, spill and replay into one running pipeline, and takes
//! it down in order on shutdown.
//!
//! Shutdown (SIGTERM) within `collector.shutdown_grace`: stop scheduling;
//! let in-flight reads finish; flush the batcher; wait for every batch to
//! be acknowledged or spilled. If 60 % of the grace passes first, pending
//! Kafka deliveries are aborted so they resolve as failed and are spilled.
//! Then the replay stops, the producer and the spill are flushed, and
//! sessions are closed.

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
use crate::metrics::{names, Stats, StatsSnapshot};
use crate::protocol::Protocol;
use crate::replay::run_replay;
use crate::scheduler::{run_device, ScheduleContext};
use crate::seq::SeqBase;
use crate::sink::kafka::KafkaSink;
use crate::sink::Sink;
use crate::spill::{self, SpillStore};
use crate::worker::WorkerPool;

/// Builds a [`Collector`].
pub struct CollectorBuilder {
    config: CollectorConfig,
    protocol: Option<Arc<dyn Protocol>>,
    sink: Option<Arc<dyn Sink>>,
}

impl CollectorBuilder {
    /// The protocol adapter that reads devices (required).
    pub fn protocol(mut self, protocol: Arc<dyn Protocol>) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// A custom sink; default: a [`KafkaSink`] built from `config.kafka`.
    pub fn sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Validates the configuration, creates the sink and opens the spill
    /// (recovering what a previous run left there). Does not contact
    /// devices; the Kafka producer connects in the background. Call from
    /// within a tokio runtime.
    pub fn build(self) -> Result<Collector, CollectorError> {
        self.config.validate()?;
        let protocol = self.protocol.ok_or_else(|| {
            CollectorError::Startup("no protocol adapter given (CollectorBuilder::protocol)".into())
        })?;
        let stop = CancellationToken::new();
        let mut probe = None;
        let sink: Arc<dyn Sink> = match self.sink {
            Some(s) => s,
            None => {
                let kafka = KafkaSink::new(&self.config.kafka, &self.config.collector_id())?;
                probe = Some(kafka.spawn_probe(stop.child_token()));
                Arc::new(kafka)
            }
        };
        let spill: Option<Arc<dyn SpillStore>> = match self.config.spill_config() {
            Some(cfg) => {
                let store = spill::open(&cfg).map_err(|e| {
                    CollectorError::Startup(format!(
                        "opening the spill in {}: {e}",
                        cfg.dir.display()
                    ))
                })?;
                Some(Arc::from(store))
            }
            None => {
                tracing::warn!("no collector.state_dir or spill.dir: records Kafka cannot take will be lost (counted)");
                None
            }
        };
        let seq = SeqBase::reserve(self.config.collector.state_dir.as_deref())?;
        Ok(Collector {
            health: Health::new(sink.clone(), spill.is_some()),
            config: self.config,
            protocol,
            sink,
            spill,
            stats: Arc::new(Stats::default()),
            board: DeviceBoard::default(),
            seq,
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
    spill: Option<Arc<dyn SpillStore>>,
    stats: Arc<Stats>,
    board: DeviceBoard,
    health: Health,
    seq: SeqBase,
    stop: CancellationToken,
    _probe: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Starts building a collector from a validated configuration.
    pub fn builder(config: CollectorConfig) -> CollectorBuilder {
        CollectorBuilder {
            config,
            protocol: None,
            sink: None,
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

    /// The protocol adapter (e.g. for its session count).
    pub fn protocol(&self) -> Arc<dyn Protocol> {
        self.protocol.clone()
    }

    /// Runs until `shutdown` resolves, then drains within the shutdown
    /// grace (see the module docs). Returns the final counters.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<StatsSnapshot, CollectorError> {
        let cfg = &self.config;
        let (record_tx, record_rx) = mpsc::channel(cfg.batch.queue_capacity);
        let (batch_tx, batch_rx) = mpsc::channel(cfg.batch.max_in_flight);
        let batcher = tokio::spawn(run_batcher(record_rx, cfg.batch.clone(), batch_tx));
        let dispatch = Dispatch {
            sink: self.sink.clone(),
            spill: self.spill.clone(),
            stats: self.stats.clone(),
        };
        let dispatcher = tokio::spawn(run_dispatcher(batch_rx, dispatch, cfg.batch.max_in_flight));
        let replay_stop = CancellationToken::new();
        let replay = self.spill.clone().map(|store| {
            tokio::spawn(run_replay(
                store,
                self.sink.clone(),
                cfg.spill.replay_batches_per_second,
                self.stats.clone(),
                replay_stop.clone(),
            ))
        });

        let schedules_stop = CancellationToken::new();
        let ctx = Arc::new(ScheduleContext {
            pool: WorkerPool::new(cfg.workers.permits),
            records: record_tx,
            stats: self.stats.clone(),
            board: self.board.clone(),
            breaker: cfg.breaker.clone(),
            epoch: tokio::time::Instant::now(),
            seq_base: self.seq.0,
            stop: schedules_stop.clone(),
        });
        let tracker = TaskTracker::new();
        let mut attached = 0u64;
        for device in &cfg.devices {
            match self.protocol.attach(device) {
                Ok(reader) => {
                    tracker.spawn(run_device(device.clone(), reader, ctx.clone()));
                    attached += 1;
                }
                Err(e) => {
                    tracing::error!(device = %device.id, error = %e, "device rejected by the protocol adapter; not scheduled")
                }
            }
        }
        drop(ctx);
        tracker.close();
        Stats::add(&self.stats.devices, attached);
        metrics::gauge!(names::DEVICES).set(attached as f64);
        self.health.set_started();
        tracing::info!(devices = attached, collector_id = %cfg.collector_id(), "collector started");

        shutdown.await;
        let grace = cfg.collector.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(
            ?grace,
            "shutting down: stopping schedules, finishing in-flight reads"
        );
        self.health.set_stopping();
        schedules_stop.cancel();

        let drain = async {
            tracker.wait().await;
            let _ = batcher.await;
            let _ = dispatcher.await;
        };
        tokio::pin!(drain);
        if tokio::time::timeout(grace.mul_f64(0.6), &mut drain)
            .await
            .is_err()
        {
            tracing::warn!("deliveries still pending at 60% of the shutdown grace; aborting them so they are spilled");
            self.sink.abort_pending();
            if tokio::time::timeout_at(deadline - grace.mul_f64(0.1), &mut drain)
                .await
                .is_err()
            {
                let s = self.stats.snapshot();
                tracing::error!(
                    ?grace,
                    read = s.reads_ok,
                    delivered = s.records_delivered,
                    spilled = s.records_spilled,
                    "shutdown grace exceeded; records read but neither acknowledged nor spilled are lost"
                );
            }
        }
        replay_stop.cancel();
        if let Some(replay) = replay {
            let _ = tokio::time::timeout_at(deadline, replay).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = self.sink.flush(left.min(Duration::from_secs(5))).await {
            tracing::warn!(error = %e, "sink flush at shutdown");
        }
        let sink = self.sink.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || sink.close()).await {
            tracing::warn!(error = %e, "sink close task");
        }
        if let Some(store) = self.spill.clone() {
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "spill flush at shutdown"),
                Err(e) => tracing::error!(error = %e, "spill flush task"),
            }
        }
        self.protocol.shutdown().await;
        self.stop.cancel();
        let s = self.stats.snapshot();
        tracing::info!(
            reads_ok = s.reads_ok,
            reads_failed = s.reads_failed,
            delivered = s.records_delivered,
            failed = s.records_failed,
            spilled = s.records_spilled,
            replayed = s.records_replayed,
            undelivered = s.records_undelivered,
            "collector stopped"
        );
        Ok(s)
    }
}
