//! # collector-testkit
//!
//! What the workspace's tests, examples, demo and benchmark share to drive
//! a collector from outside: an in-process Kafka-protocol cluster and a
//! topic reader ([`kafka`]), a Prometheus text parser ([`prom`]), a minimal
//! HTTP GET ([`http`]), the collector's final statistics line
//! ([`stopped`]), a throwaway PostgreSQL server ([`postgres`]) and, with
//! the `protobuf` feature, records read back through the published
//! Protobuf schema (`protobuf`). It
//! exists so that each of these is written once.
//!
//! Dev-only: the shipped `opc-collector` binary never links it (the demo,
//! which uses the embedded Kafka, is behind the daemon's `demo` feature).

#![warn(missing_docs)]

#[cfg(unix)]
pub mod configmap;
pub mod http;
pub mod kafka;
pub mod postgres;
pub mod prom;
#[cfg(feature = "protobuf")]
pub mod protobuf;
pub mod stopped;

pub use kafka::{consume_all, ConsumedMessage, EmbeddedKafka};
pub use prom::Scrape;
pub use stopped::StoppedLine;
