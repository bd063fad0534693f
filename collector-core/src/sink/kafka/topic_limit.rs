//! Compares `kafka.max_record_bytes` with the topic's `max.message.bytes`
//! as the broker reports it (DescribeConfigs), once, when Kafka is first
//! reachable: a split limit above the topic's means records the broker
//! will refuse (they would go to the dead letters), so it is said at start,
//! with the fix, rather than discovered in the dead letters.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// How long the broker may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the broker said about the topic's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicLimit {
    /// The topic's `max.message.bytes`, at or above the split limit.
    Fits(u64),
    /// The topic's `max.message.bytes`, below the split limit.
    TooLow(u64),
    /// Not known (the broker does not answer DescribeConfigs, the topic
    /// does not exist yet, no permission): why.
    Unknown(String),
}

/// Asks the broker for `topic`'s `max.message.bytes` and compares it with
/// `max_record_bytes`; logs the outcome (warn when too low).
pub(crate) async fn check(config: &ClientConfig, topic: &str, max_record_bytes: u64) -> TopicLimit {
    let outcome = describe(config, topic)
        .await
        .map_or_else(TopicLimit::Unknown, |limit| {
            if limit >= max_record_bytes {
                TopicLimit::Fits(limit)
            } else {
                TopicLimit::TooLow(limit)
            }
        });
    match &outcome {
        TopicLimit::Fits(limit) => tracing::info!(
            topic,
            topic_max_message_bytes = limit,
            max_record_bytes,
            "topic accepts records up to kafka.max_record_bytes"
        ),
        TopicLimit::TooLow(limit) => tracing::warn!(
            topic,
            topic_max_message_bytes = limit,
            max_record_bytes,
            "kafka.max_record_bytes is above the topic's max.message.bytes: records between the two sizes will be refused by the broker and kept in the dead letters; set kafka.max_record_bytes to at most the topic's limit less 1KiB, or raise the topic's max.message.bytes"
        ),
        TopicLimit::Unknown(why) => tracing::info!(topic, why = %why, "topic max.message.bytes not known; kafka.max_record_bytes not checked against it"),
    }
    outcome
}

async fn describe(config: &ClientConfig, topic: &str) -> Result<u64, String> {
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| format!("admin client: {e}"))?;
    let results = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(TIMEOUT)),
        )
        .await
        .map_err(|e| format!("DescribeConfigs: {e}"))?;
    let resource = results
        .into_iter()
        .next()
        .ok_or("no result")?
        .map_err(|code| format!("DescribeConfigs: {code}"))?;
    let value = resource
        .get("max.message.bytes")
        .and_then(|e| e.value.clone())
        .ok_or("the broker reports no max.message.bytes")?;
    value
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("max.message.bytes {value:?}: {e}"))
}
