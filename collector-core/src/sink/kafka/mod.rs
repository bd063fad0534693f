//! The Kafka sink: rdkafka's threaded producer, idempotent, snappy, one
//! message per record keyed by device id, acknowledged per record through
//! the delivery callback.

mod delivery;
mod sink;

pub use sink::KafkaSink;
