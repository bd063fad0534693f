//! HistoryRead of the simulated tags (Read Raw, OPC UA Part 11 6.5.3): the history of a
//! tag is computed from the deterministic model, so a test knows exactly which values a
//! backfill must get ([`history_between`]).
//!
//! # What a tag's history holds
//!
//! * **with a change rate** ([`crate::steps`]): one entry per step, stamped with the
//!   step's start and holding the step's value. Every step start is an entry, also the
//!   (rare) step whose value equals the previous one: the history is what the device
//!   "recorded" at each of its own updates, not a deduplicated change log;
//! * **without a change rate**: one entry per whole second `s` (Unix ms `s · 1000`)
//!   holding [`model::value_at`]`(device, tag, s · 1000)`, as a historian sampling every
//!   second records it;
//! * **bad tags** ([`model::is_bad`]): the same entries with status `BadSensorFailure`
//!   and no value, which is what a historian records for a failed sensor (and what
//!   polling would have read at those instants);
//! * source timestamp = server timestamp = the entry's instant; only entries at or before
//!   the instant of the call exist, and none older than the retention
//!   ([`HistorySettings::retention`]).
//!
//! # Request semantics
//!
//! `isReadModified` must be false (true: `BadHistoryOperationUnsupported`, no modified
//! values are kept) and `returnBounds` is ignored (no bounding values). The time domain
//! (MinDateTime = unset): start and end given, start < end: the entries in
//! `[start, end)`; start = end: the entry at exactly that instant, if any; start and
//! `numValuesPerNode` only: the first `numValuesPerNode` entries from start on. Reverse
//! reads (end < start, or end and `numValuesPerNode` only) are refused with
//! `BadInvalidArgument`; fewer than two of the three parameters with
//! `BadInvalidTimestampArgument`. One call returns at most `numValuesPerNode` (0 = no
//! limit) and at most [`HistorySettings::max_values_per_call`] values per node, then a
//! continuation point to get the rest (async-opcua stores it in the session and hands
//! the client opaque bytes; it holds the next entry's instant). A call without values
//! answers `GoodNoData`.

use std::time::Duration;

use opcua::types::{
    DataValue, DateTime, HistoryData, NumericRange, ReadRawModifiedDetails, StatusCode,
    TimestampsToReturn,
};
use opcua_server::{node_manager::HistoryNode, ContinuationPoint};

use crate::{
    model::{self, ModelValue},
    nodes::{datetime_ms, model_to_variant, DeviceSpace, Node},
    steps,
};

/// Default of [`HistorySettings::retention`] (and of `--history-retention`): 1 hour.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

/// Default of [`HistorySettings::max_values_per_call`] (`--max-history-values`).
pub const DEFAULT_MAX_VALUES_PER_CALL: u32 = 1000;

/// Default of [`HistorySettings::max_nodes_per_read`] (`--max-nodes-per-history-read`).
pub const DEFAULT_MAX_NODES_PER_READ: u32 = 100;

/// AccessLevel bit `CurrentRead`.
pub const ACCESS_CURRENT_READ: u8 = 0x01;

/// AccessLevel bit `HistoryRead`.
pub const ACCESS_HISTORY_READ: u8 = 0x04;

/// How a device serves HistoryRead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// Whether the device keeps history; false (the `no-history` fault): every node of
    /// a HistoryRead answers `BadHistoryOperationUnsupported`.
    pub enabled: bool,
    /// Entries older than the instant of the call minus this are not served.
    pub retention: Duration,
    /// Most values returned per node and call (served as MaxReturnDataValues, i=11273);
    /// 0 counts as 1.
    pub max_values_per_call: u32,
    /// MaxNodesPerHistoryReadData (i=12165), enforced by async-opcua
    /// (`BadTooManyOperations`).
    pub max_nodes_per_read: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: DEFAULT_RETENTION,
            max_values_per_call: DEFAULT_MAX_VALUES_PER_CALL,
            max_nodes_per_read: DEFAULT_MAX_NODES_PER_READ,
        }
    }
}

impl HistorySettings {
    /// AccessLevel (and UserAccessLevel) of a tag: CurrentRead, plus HistoryRead when
    /// the device keeps history.
    pub fn tag_access_level(&self) -> u8 {
        if self.enabled {
            ACCESS_CURRENT_READ | ACCESS_HISTORY_READ
        } else {
            ACCESS_CURRENT_READ
        }
    }

    fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The history entries of a tag from an instant on, in time order: (instant in Unix ms,
/// value); see the module documentation.
struct Entries {
    device: u32,
    tag: u32,
    period_ms: Option<i64>,
    /// Step index (with a period) or whole second of the next entry.
    next: i64,
}

impl Entries {
    /// The entries at or after `from_ms`.
    fn from(device: u32, tag: u32, from_ms: i64, period_ms: Option<i64>) -> Self {
        let next = match period_ms {
            Some(period) => {
                let n = steps::step_index(device, tag, from_ms, period);
                if steps::step_start(device, tag, n, period) < from_ms {
                    n.saturating_add(1)
                } else {
                    n
                }
            }
            None => from_ms.div_euclid(1000) + i64::from(from_ms.rem_euclid(1000) != 0),
        };
        Self {
            device,
            tag,
            period_ms,
            next,
        }
    }
}

impl Iterator for Entries {
    type Item = (i64, ModelValue);

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.next;
        self.next = n.checked_add(1)?;
        Some(match self.period_ms {
            Some(period) => (
                steps::step_start(self.device, self.tag, n, period),
                steps::step_value(self.device, self.tag, n),
            ),
            None => {
                let ms = n.saturating_mul(1000);
                (ms, model::value_at(self.device, self.tag, ms))
            }
        })
    }
}

/// The history entries the simulator serves for a Good tag in `[from_ms, to_ms)`
/// (ignoring retention and the instant of the call): (source timestamp in Unix ms,
/// value), in time order. `change_rate` is [`crate::SimConfig::change_rate`]. For a bad
/// tag the simulator serves the same timestamps with `BadSensorFailure` and no value.
///
/// The result has one entry per second (per step with a change rate), so keep the
/// window reasonable.
pub fn history_between(
    device: u32,
    tag: u32,
    from_ms: i64,
    to_ms: i64,
    change_rate: Option<f64>,
) -> Vec<(i64, ModelValue)> {
    Entries::from(device, tag, from_ms, change_rate.map(steps::period_ms))
        .take_while(|(at, _)| *at < to_ms)
        .collect()
}

/// The time domain of a Read Raw request in whole Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Domain {
    /// First instant (inclusive).
    from_ms: i64,
    /// End (exclusive); `None`: up to the instant of the call.
    to_ms: Option<i64>,
    /// Values wanted in all (start and numValuesPerNode only); `None`: all in range.
    total: Option<u64>,
}

/// Ticks (100 ns) from 1601-01-01 to the Unix epoch.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
const TICKS_PER_MS: i64 = 10_000;

/// `t` in Unix ms rounded up, and whether it was a whole millisecond.
fn ceil_ms(t: &DateTime) -> (i64, bool) {
    let ticks = t.ticks().saturating_sub(UNIX_EPOCH_TICKS);
    let rem = ticks.rem_euclid(TICKS_PER_MS);
    (
        ticks.div_euclid(TICKS_PER_MS) + i64::from(rem != 0),
        rem == 0,
    )
}

/// Resolve the request's time domain; see the module documentation.
fn domain(details: &ReadRawModifiedDetails) -> Result<Domain, StatusCode> {
    if details.is_read_modified {
        return Err(StatusCode::BadHistoryOperationUnsupported);
    }
    let count = details.num_values_per_node;
    match (details.start_time.is_null(), details.end_time.is_null()) {
        (false, false) => {
            let (start, exact) = ceil_ms(&details.start_time);
            let (start_ticks, end_ticks) = (details.start_time.ticks(), details.end_time.ticks());
            let to_ms = if end_ticks < start_ticks {
                return Err(StatusCode::BadInvalidArgument);
            } else if end_ticks == start_ticks {
                start + i64::from(exact)
            } else {
                ceil_ms(&details.end_time).0
            };
            Ok(Domain {
                from_ms: start,
                to_ms: Some(to_ms),
                total: None,
            })
        }
        (false, true) if count > 0 => Ok(Domain {
            from_ms: ceil_ms(&details.start_time).0,
            to_ms: None,
            total: Some(u64::from(count)),
        }),
        // End and a count only: a reverse read.
        (true, false) if count > 0 => Err(StatusCode::BadInvalidArgument),
        _ => Err(StatusCode::BadInvalidTimestampArgument),
    }
}

/// Where a node's next call continues (the payload of its continuation point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// The tag it was handed out for.
    tag: u32,
    /// Instant of the next entry, Unix ms.
    next_ms: i64,
    /// Values still wanted (reads with a start and a count only).
    remaining: Option<u64>,
}

/// The values of one node and call: `[from_ms, to_ms)`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    from_ms: i64,
    to_ms: i64,
    limit: u64,
    remaining: Option<u64>,
}

fn window(
    domain: Domain,
    cursor: Option<Cursor>,
    num_values: u32,
    settings: &HistorySettings,
    now_ms: i64,
) -> Window {
    let (from_ms, remaining) = match cursor {
        Some(c) => (c.next_ms, c.remaining),
        None => (domain.from_ms, domain.total),
    };
    let mut limit = u64::from(settings.max_values_per_call.max(1));
    if num_values > 0 {
        limit = limit.min(u64::from(num_values));
    }
    if let Some(r) = remaining {
        limit = limit.min(r);
    }
    Window {
        from_ms: from_ms.max(now_ms.saturating_sub(settings.retention_ms())),
        to_ms: domain
            .to_ms
            .unwrap_or(i64::MAX)
            .min(now_ms.saturating_add(1)),
        limit,
        remaining,
    }
}

/// The entries of one call and, if more are left, where the next call continues.
fn page(
    device: u32,
    tag: u32,
    period_ms: Option<i64>,
    w: &Window,
) -> (Vec<(i64, ModelValue)>, Option<Cursor>) {
    if w.to_ms <= w.from_ms || w.limit == 0 {
        return (Vec::new(), None);
    }
    let limit = usize::try_from(w.limit).unwrap_or(usize::MAX);
    let mut entries =
        Entries::from(device, tag, w.from_ms, period_ms).take_while(|(at, _)| *at < w.to_ms);
    let page: Vec<_> = entries.by_ref().take(limit).collect();
    let remaining = w.remaining.map(|r| r.saturating_sub(page.len() as u64));
    let next = if page.len() == limit && remaining != Some(0) {
        entries.next().map(|(next_ms, _)| Cursor {
            tag,
            next_ms,
            remaining,
        })
    } else {
        None
    };
    (page, next)
}

/// One history entry as the DataValue a HistoryRead returns.
fn data_value(
    tag: u32,
    at_ms: i64,
    value: ModelValue,
    index_range: &NumericRange,
    timestamps: TimestampsToReturn,
) -> Result<DataValue, StatusCode> {
    let (value, status) = if model::is_bad(tag) {
        (None, StatusCode::from(model::BAD_SENSOR_FAILURE))
    } else {
        let v = model_to_variant(value).range_of_owned(index_range)?;
        (Some(v), StatusCode::Good)
    };
    let at = datetime_ms(at_ms).unwrap_or_default();
    let source = matches!(
        timestamps,
        TimestampsToReturn::Source | TimestampsToReturn::Both
    );
    let server = matches!(
        timestamps,
        TimestampsToReturn::Server | TimestampsToReturn::Both
    );
    Ok(DataValue {
        value,
        status: Some(status),
        source_timestamp: source.then_some(at),
        server_timestamp: server.then_some(at),
        ..Default::default()
    })
}

/// Answer a Read Raw HistoryRead of `nodes` on the device `space` at `now_ms` (Unix
/// ms); returns the number of values returned.
pub(crate) fn read_raw(
    space: &DeviceSpace,
    details: &ReadRawModifiedDetails,
    nodes: &mut [&mut HistoryNode],
    timestamps: TimestampsToReturn,
    now_ms: i64,
) -> u64 {
    let domain = if !space.history.enabled {
        Err(StatusCode::BadHistoryOperationUnsupported)
    } else if matches!(
        timestamps,
        TimestampsToReturn::Neither | TimestampsToReturn::Invalid
    ) {
        Err(StatusCode::BadTimestampsToReturnInvalid)
    } else {
        domain(details)
    };
    let mut served = 0;
    for node in nodes.iter_mut() {
        let result = if space.history.enabled {
            read_node(space, domain, details, node, timestamps, now_ms)
        } else {
            Err(StatusCode::BadHistoryOperationUnsupported)
        };
        match result {
            Ok(n) => served += n,
            Err(code) => {
                node.set_status(code);
                node.set_next_continuation_point(None);
            }
        }
    }
    served
}

fn read_node(
    space: &DeviceSpace,
    domain: Result<Domain, StatusCode>,
    details: &ReadRawModifiedDetails,
    node: &mut HistoryNode,
    timestamps: TimestampsToReturn,
    now_ms: i64,
) -> Result<u64, StatusCode> {
    let tag = match space.resolve(node.node_id()) {
        Some(Node::Tag(tag)) => tag,
        Some(_) => return Err(StatusCode::BadHistoryOperationUnsupported),
        None => return Err(StatusCode::BadNodeIdUnknown),
    };
    let domain = domain?;
    let cursor = match node.continuation_point() {
        None => None,
        Some(cp) => Some(
            cp.get::<Cursor>()
                .copied()
                .filter(|c| c.tag == tag)
                .ok_or(StatusCode::BadContinuationPointInvalid)?,
        ),
    };
    let w = window(
        domain,
        cursor,
        details.num_values_per_node,
        &space.history,
        now_ms,
    );
    let (entries, next) = page(space.device, tag, space.period_ms, &w);
    let values = entries
        .into_iter()
        .map(|(at, v)| data_value(tag, at, v, node.index_range(), timestamps))
        .collect::<Result<Vec<_>, _>>()?;
    let served = values.len() as u64;
    node.set_status(if values.is_empty() {
        StatusCode::GoodNoData
    } else {
        StatusCode::Good
    });
    node.set_result(HistoryData {
        data_values: Some(values),
    });
    node.set_next_continuation_point(next.map(|c| ContinuationPoint::new(Box::new(c))));
    Ok(served)
}

#[cfg(test)]
mod tests;
