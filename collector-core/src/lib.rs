//! # collector-core
//!
//! The protocol-neutral engine of an industrial data collector: it reads
//! thousands of devices on a fixed schedule and delivers every sample to a
//! sink (Kafka by default) without losing one. Bring your own protocol
//! ([`protocol::Protocol`]), sink ([`sink::Sink`]) or device source
//! ([`source::DeviceSource`]); reuse the scheduler, worker pool, breakers,
//! batching, spill, replay and metrics.
//!
//! # The flow
//!
//! ```text
//!  source (DeviceSource) ──> reconcile ──> one schedule task per device
//!                                              │ tick (phase-spread), breaker,
//!                                              │ worker permit (worker pool)
//!                                              v
//!                          protocol (DeviceReader::read) ──> Record {device, seq, samples}
//!                                                                │
//!                                                                v
//!        sink (Sink) <── dispatcher <── batcher (time | count | bytes)
//!          │    ^                │
//!   failed │    │ replay (paced, │ sink known down
//!          v    │ oldest first)  v
//!         spill (segment log | sled; TTL, size cap)
//! ```
//!
//! Every fact along the way (a read, a skipped tick, a breaker transition,
//! records delivered, spilled, replayed or lost) is an internal event that
//! updates its metric (where it has one), the in-process
//! [`metrics::Stats`] and the device's `/devices` entry together, and logs
//! where it should.
//!
//! # Modules
//!
//! - [`config`]: the configuration model (serde structs with documented
//!   defaults), YAML loading with `${ENV}` expansion, and validation that
//!   reports every problem with `file:line`; the protocol adapter owns its
//!   part ([`config::Settings`], [`config::ProtocolConfig`]).
//! - [`source`]: where the device set comes from and how it changes
//!   (`reconcile` applies each version: added devices start, removed ones
//!   stop, changed ones restart alone, the rest keep their session and seq).
//! - [`protocol`]: the traits a protocol adapter implements (OPC UA lives in
//!   the `collector-opcua` crate). The adapter owns sessions; the core owns
//!   timing, concurrency and delivery.
//! - `scheduler`, `worker`, `breaker`: one timer per device, phase-spread,
//!   missed ticks skipped and counted; the semaphore that bounds concurrent
//!   reads; the per-device circuit breaker.
//! - [`record`]: what one device read produces, and its JSON encoding
//!   (documented in `docs/record-format.md`); `seq`: per-device sequence
//!   numbers that never repeat, also across restarts.
//! - `batcher`, `dispatcher`: group records, send batches, spill what the
//!   sink cannot take; [`sink`]: the sink trait and the Kafka sink
//!   (feature `kafka`, default).
//! - [`spill`]: the disk spill (segment log; sled with feature `sled`);
//!   `replay`: delivers it back, paced, when the sink is reachable.
//! - [`metrics`]: the metric table and [`metrics::Stats`]; [`health`]:
//!   readiness latches; [`device_status`]: the per-device view.
//! - [`Collector`] / [`CollectorBuilder`]: wire all of the above and take it
//!   down in order within the shutdown grace.
//!
//! # Examples
//!
//! `examples/custom_protocol.rs` (a protocol that is not OPC UA, through the
//! whole pipeline), `examples/custom_sink.rs` (records to a JSON-lines
//! file), and `protocols/opcua/examples/embedded.rs` (the OPC UA adapter).

#![warn(missing_docs)]

pub mod config;
pub mod deadletter;
pub mod device_status;
pub mod error;
pub mod health;
pub mod histogram;
pub mod metrics;
pub mod protocol;
pub mod record;
pub mod shard;
pub mod sink;
pub mod source;
pub mod spill;

pub(crate) mod backfill;
pub(crate) mod batcher;
pub(crate) mod breaker;
pub(crate) mod dispatcher;
pub(crate) mod internal_events;
pub(crate) mod last_reads;
pub(crate) mod pipeline;
pub(crate) mod push;
pub(crate) mod reconcile;
pub(crate) mod replay;
pub(crate) mod scheduler;
pub(crate) mod seq;
pub(crate) mod worker;

pub use config::{CollectorConfig, Device};
pub use error::{ConfigError, ConfigErrors, ReadError, SinkError};
pub use pipeline::{Collector, CollectorBuilder};
pub use record::{Origin, Record, Sample, Value};
