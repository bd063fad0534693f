//! The Kafka sink: an rdkafka producer with its own poll thread,
//! idempotent, snappy, one message per record keyed by device id,
//! acknowledged per record through the delivery callback.

mod delivery;
mod producer;
mod properties;
mod sink;
mod topic_limit;

pub(crate) use properties::conflicting_properties;
pub use properties::kafka_security_properties;
pub use sink::KafkaSink;
