//! # collector-core
//!
//! The protocol-neutral engine of an industrial data collector: it reads
//! thousands of devices on a fixed schedule and delivers every sample to a
//! sink (Kafka) without losing one.
//!
//! # Layout
//!
//! The modules follow the data flow, left to right:
//!
//! ```text
//! config ──> scheduler ──> worker pool ──> protocol (DeviceReader) ──> record
//!                                                                        │
//!            sink::kafka <── dispatcher <── batcher <────────────────────┘
//! ```
//!
//! - [`config`]: the configuration model (serde structs with documented
//!   defaults), YAML loading with `${ENV}` expansion, and validation that
//!   reports every problem with `file:line`.
//! - [`protocol`]: the trait a protocol adapter implements (OPC UA lives in
//!   the `collector-opcua` crate). The adapter owns sessions; the core owns
//!   timing, concurrency and delivery.
//! - `scheduler`: one timer per device, phase-spread over the interval,
//!   missed ticks skipped and counted, lateness measured.
//! - `worker`: the semaphore that bounds concurrent reads.
//! - [`breaker`]: the per-device circuit breaker; [`device_status`]: the
//!   per-device view served at `/devices`.
//! - [`record`]: what one device read produces, and its JSON encoding
//!   (documented in `docs/record-format.md`).
//! - `seq`: per-device sequence numbers that never repeat, also across
//!   restarts.
//! - `batcher`: groups records and flushes on time, count or bytes.
//! - [`sink`]: where batches go; [`sink::kafka`] is the production sink.
//! - [`metrics`]: metric names and the few in-process counters the daemon
//!   prints; [`health`]: readiness latches.
//! - [`pipeline`]: wires all of the above; [`Collector`] is the entry point.
//!
//! # Example
//!
//! See `examples/embedded.rs` for a collector embedded in another program.

pub mod breaker;
pub mod config;
pub mod device_status;
pub mod error;
pub mod health;
pub mod histogram;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod record;
pub mod sink;
pub mod source;
pub mod spill;

pub(crate) mod batcher;
pub(crate) mod dispatcher;
pub(crate) mod internal_events;
pub(crate) mod reconcile;
pub(crate) mod replay;
pub(crate) mod scheduler;
pub(crate) mod seq;
pub(crate) mod worker;

pub use config::{CollectorConfig, Device};
pub use error::{ConfigError, ConfigErrors, ReadError, SinkError};
pub use pipeline::{Collector, CollectorBuilder};
pub use record::{Record, Sample, Value};
