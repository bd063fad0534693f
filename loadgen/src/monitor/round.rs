//! The sampler task of a device server's monitored items: one round per tick, each
//! handing the due data changes of every item to async-opcua's subscriptions.

use std::{
    collections::HashSet,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use opcua::types::{AttributeId, DataValue, DateTime, StatusCode};
use opcua_server::{MonitoredItemHandle, SubscriptionCache};
use tokio_util::sync::CancellationToken;

use super::{epoch_ms, Items, Shared, Source, Watch, MIN_TICK};
use crate::{
    model,
    nodes::{datetime_ms, model_to_variant, Node},
    steps,
};

/// Most step changes handed to one item per round: after a stall, older ones are cut.
const MAX_BACKLOG: i64 = 1000;
/// An enabled item the server does not know is forgotten after this long (its deletion
/// did not reach the node manager).
const FORGET_AFTER: Duration = Duration::from_secs(30);

/// The sampler task: a round per tick while there are items to sample.
pub(super) async fn run(
    shared: Arc<Shared>,
    source: Source,
    subscriptions: Arc<SubscriptionCache>,
    token: CancellationToken,
) {
    loop {
        let pause = pause(&shared.items(), shared.period_ms.is_some());
        let wait = async {
            match pause {
                Some(d) => tokio::time::sleep(d).await,
                None => shared.wake.notified().await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = token.cancelled() => return,
        }
        if pause.is_some() {
            sample(&shared, &source, &subscriptions);
        }
    }
}

/// The pause before the next round: [`MIN_TICK`] for stepped tags (`stepped`: with a
/// change rate), the smallest sampling interval (at least [`MIN_TICK`]) for other items;
/// `None` without any enabled item.
pub(super) fn pause(items: &Items, stepped: bool) -> Option<Duration> {
    items
        .watched
        .values()
        .flat_map(|w| {
            let tick = stepped && matches!(w.node, Node::Tag(_));
            w.items.values().map(move |i| (tick, i))
        })
        .filter(|(_, i)| !i.disabled)
        .map(|(tick, i)| if tick { MIN_TICK } else { i.interval })
        .min()
        .map(|d| d.max(MIN_TICK))
}

/// A step as a data value: its value, Good, source timestamp its start.
fn step_value(start_ms: i64, value: model::ModelValue, now: DateTime) -> DataValue {
    DataValue {
        value: Some(model_to_variant(value)),
        status: Some(StatusCode::Good),
        source_timestamp: Some(datetime_ms(start_ms).unwrap_or(now)),
        server_timestamp: Some(now),
        ..Default::default()
    }
}

/// One round: hand every due change to the server's subscriptions.
fn sample(shared: &Shared, source: &Source, subscriptions: &SubscriptionCache) {
    let now = crate::node_manager::now_ms();
    let now_ms = epoch_ms(&now);
    let instant = Instant::now();
    let (device, period) = (shared.device, shared.period_ms);
    let mut sent = 0u64;
    let mut forgotten = 0u64;
    let mut items = shared.items();
    // Holds a read lock of the subscription cache, submitted when dropped (before ours).
    let mut notifier = subscriptions.data_notifier();
    items.watched.retain(|node_id, watch| {
        let Watch { node, items } = watch;
        let node = *node;
        let mut batch = notifier.notify_for(node_id, AttributeId::Value);
        let enabled: HashSet<MonitoredItemHandle> = batch
            .as_ref()
            .map(|b| b.entries().map(|(h, _)| *h).collect())
            .unwrap_or_default();
        // Computed once per node and round.
        let mut sampled: Option<DataValue> = None;
        let mut stepped: Option<(i64, Vec<(i64, model::ModelValue)>)> = None;
        items.retain(|handle, item| {
            if item.disabled {
                return true;
            }
            let Some(batch) = batch.as_mut().filter(|_| enabled.contains(handle)) else {
                let since = *item.missing_since.get_or_insert(instant);
                let keep = instant.duration_since(since) < FORGET_AFTER;
                forgotten += u64::from(!keep);
                return keep;
            };
            item.missing_since = None;
            match (node, period) {
                (Node::Tag(tag), Some(p)) => {
                    // `last_step` is a step start: no new step before the next one.
                    if now_ms < item.last_step.saturating_add(p) {
                        return true;
                    }
                    let current = steps::step_start(
                        device,
                        tag,
                        steps::step_index(device, tag, now_ms, p),
                        p,
                    );
                    if current <= item.last_step {
                        return true;
                    }
                    let from = item.last_step.max(current - MAX_BACKLOG * p);
                    if stepped.as_ref().is_none_or(|(f, _)| *f != from) {
                        stepped =
                            Some((from, steps::changes_between(device, tag, from, now_ms, p)));
                    }
                    for (start, value) in stepped.iter().flat_map(|(_, c)| c) {
                        batch.data_value_to_item(step_value(*start, value.clone(), now), handle);
                        sent += 1;
                    }
                    item.last_step = current;
                }
                _ => {
                    if instant.duration_since(item.last_sample) < item.interval {
                        return true;
                    }
                    item.last_sample = instant;
                    let dv = sampled.get_or_insert_with(|| {
                        source.space.sample_value(node, now, &source.status)
                    });
                    // Unchanged: the server's data-change filter would drop it anyway.
                    if dv.value != item.last_value {
                        item.last_value = dv.value.clone();
                        batch.data_value_to_item(dv.clone(), handle);
                        sent += 1;
                    }
                }
            }
            true
        });
        !items.is_empty()
    });
    items.count -= forgotten;
    drop(notifier);
    drop(items);
    shared.forget(forgotten);
    if sent > 0 {
        shared
            .counters
            .data_change_notifications
            .fetch_add(sent, Ordering::Relaxed);
    }
}
