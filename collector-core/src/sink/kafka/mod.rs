//! The Kafka sink: an rdkafka producer with its own poll thread,
//! idempotent, snappy, one message per record keyed by device id,
//! acknowledged per record through the delivery callback.

mod delivery;
mod producer;
mod sink;

pub use sink::KafkaSink;
