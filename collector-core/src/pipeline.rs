//! The collector: wires config, protocol, scheduler, worker pool, batcher,
//! dispatcher and sink into one running pipeline, and takes it down in
//! order on shutdown (stop scheduling, finish in-flight reads, flush the
//! batcher, await acknowledgements, close sessions).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::run_batcher;
use crate::config::CollectorConfig;
use crate::device_status::DeviceBoard;
use crate::dispatcher::run_dispatcher;
use crate::error::CollectorError;
use crate::health::Health;
use crate::metrics::{names, Stats, StatsSnapshot};
use crate::protocol::Protocol;
use crate::scheduler::{run_device, ScheduleContext};
use crate::seq::SeqBase;
use crate::sink::kafka::KafkaSink;
use crate::sink::Sink;
use crate::worker::WorkerPool;

/// How long shutdown waits for in-flight reads, batches and acknowledgements.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

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

    /// Validates the configuration and creates the sink. Does not contact
    /// devices; the Kafka producer connects in the background.
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
        let seq = SeqBase::reserve(self.config.collector.state_dir.as_deref())?;
        Ok(Collector {
            health: Health::new(sink.clone()),
            config: self.config,
            protocol,
            sink,
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

    /// Live counters (reads, records delivered, ...).
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

    /// The protocol adapter (e.g. for its session count).
    pub fn protocol(&self) -> Arc<dyn Protocol> {
        self.protocol.clone()
    }

    /// Runs until `shutdown` resolves, then drains: in-flight reads finish,
    /// the batcher flushes, every batch is acknowledged (or counted as
    /// failed), and sessions are closed. Returns the final counters.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<StatsSnapshot, CollectorError> {
        let cfg = &self.config;
        let (record_tx, record_rx) = mpsc::channel(cfg.batch.queue_capacity);
        let (batch_tx, batch_rx) = mpsc::channel(cfg.batch.max_in_flight);
        let batcher = tokio::spawn(run_batcher(record_rx, cfg.batch.clone(), batch_tx));
        let dispatcher = tokio::spawn(run_dispatcher(
            batch_rx,
            self.sink.clone(),
            cfg.batch.max_in_flight,
            self.stats.clone(),
        ));

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
        tracing::info!("shutting down: stopping schedules, finishing in-flight reads");
        self.health.set_stopping();
        schedules_stop.cancel();

        let drain = async {
            tracker.wait().await;
            let _ = batcher.await;
            let _ = dispatcher.await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            let s = self.stats.snapshot();
            tracing::error!(
                grace = ?SHUTDOWN_GRACE,
                read = s.reads_ok,
                delivered = s.records_delivered,
                failed = s.records_failed,
                "shutdown grace exceeded; records read but not acknowledged are lost"
            );
        }
        if let Err(e) = self.sink.flush(Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "sink flush at shutdown");
        }
        self.protocol.shutdown().await;
        self.stop.cancel();
        let s = self.stats.snapshot();
        tracing::info!(
            reads_ok = s.reads_ok,
            reads_failed = s.reads_failed,
            delivered = s.records_delivered,
            failed = s.records_failed,
            "collector stopped"
        );
        Ok(s)
    }
}
