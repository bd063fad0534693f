//! Backfill from the server's history: HistoryRead (ReadRawModifiedDetails,
//! raw values, no bounds) of a gap's window for every node, following
//! continuation points, in node chunks of at most the server's
//! MaxNodesPerHistoryReadData (and 100). Each
//! response becomes one batch (one record). A fleet-wide budget (backfills
//! at once, HistoryRead requests per second) keeps live reads first. A
//! node the server keeps no history of is reported once and not asked
//! again; a read that fails half-way resumes after the last value it
//! delivered, a bounded number of times.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use collector_core::protocol::{BackfillOutcome, History, Unrecoverable};
use collector_core::record::{Sample, Window};
use collector_core::ReadError;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use opcua::client::HistoryReadAction;
use opcua::types::{
    ByteString, DataValue, HistoryData, HistoryReadValueId, NumericRange, QualifiedName,
    ReadRawModifiedDetails, StatusCode, TimestampsToReturn,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};

use crate::config::{BackfillBudget, BackfillSettings, NodeAddress};
use crate::convert;
use crate::reader::node_id_of;
use crate::session::{Endpoint, Pool};

/// Nodes per HistoryRead request at most (the server's
/// MaxNodesPerHistoryReadData applies when smaller).
const NODES_PER_REQUEST: usize = 100;
/// Values asked for per node and request.
const VALUES_PER_REQUEST: u32 = 1000;

/// The fleet-wide backfill budget, shared by every device's history.
pub(crate) struct Budget {
    running: Semaphore,
    requests: DefaultDirectRateLimiter,
    attempts: u32,
}

impl Budget {
    pub(crate) fn new(b: BackfillBudget) -> Self {
        let rate = NonZeroU32::new(b.requests_per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            running: Semaphore::new(b.max_concurrent as usize),
            requests: RateLimiter::direct(Quota::per_second(rate)),
            attempts: b.attempts,
        }
    }
}

/// One device's history.
pub(crate) struct OpcUaHistory {
    pub(crate) pool: Arc<Pool>,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) device: Arc<str>,
    pub(crate) nodes: Vec<NodeAddress>,
    pub(crate) settings: BackfillSettings,
    pub(crate) budget: Arc<Budget>,
    /// Nodes the server keeps no history of (indexes into `nodes`).
    pub(crate) unsupported: Mutex<HashSet<usize>>,
}

/// Where one node's read stands.
struct NodeRead {
    index: usize,
    continuation: ByteString,
    values: u32,
    /// Source time of the last value delivered (a retry resumes after it).
    last: Option<DateTime<Utc>>,
    done: bool,
}

fn no_history(code: StatusCode) -> bool {
    matches!(
        code,
        StatusCode::BadHistoryOperationUnsupported
            | StatusCode::BadHistoryOperationInvalid
            | StatusCode::BadNotReadable
            | StatusCode::BadUserAccessDenied
    )
}

/// Values (all nodes together) one request may ask for: bounds a
/// response, and so a record, whatever the node count.
const VALUES_PER_RESPONSE: u32 = 10_000;

impl OpcUaHistory {
    /// Reads `(from, to)` of the nodes in `reads` until each is done,
    /// sending every response's values to `out`; `Err` when a request
    /// fails (the caller retries). Nodes asked together share a start: the
    /// window's, or after the last value a node delivered (paging by time
    /// for servers that cut a page without a continuation point).
    async fn read_window(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reads: &mut [NodeRead],
        out: &mpsc::Sender<Vec<Sample>>,
        lost: &mut Vec<Unrecoverable>,
        values: &mut u64,
    ) -> Result<(), ReadError> {
        let live = self.pool.session(&self.endpoint).await?;
        let timeout = self.pool.config().read_timeout;
        let per_request = match live.max_nodes_per_history_read {
            0 => NODES_PER_REQUEST,
            n => NODES_PER_REQUEST.min(n),
        };
        loop {
            // The next group: pending nodes with the same start and the
            // same kind of request (with or without a continuation point).
            let Some(first) = reads.iter().position(|r| !r.done) else {
                return Ok(());
            };
            let key = |r: &NodeRead| (r.last, r.continuation.is_null_or_empty());
            let group_key = key(&reads[first]);
            let group: Vec<usize> = (first..reads.len())
                .filter(|i| !reads[*i].done && key(&reads[*i]) == group_key)
                .take(per_request)
                .collect();
            let start = group_key.0.map_or(from, |t| t.max(from));
            if start >= to {
                for i in group {
                    reads[i].done = true;
                }
                continue;
            }
            let mut ids = Vec::with_capacity(group.len());
            let mut asked = Vec::with_capacity(group.len());
            for i in group {
                let r = &mut reads[i];
                match node_id_of(&self.nodes[r.index], &live) {
                    Ok(node_id) => {
                        ids.push(HistoryReadValueId {
                            node_id,
                            index_range: NumericRange::None,
                            data_encoding: QualifiedName::null(),
                            continuation_point: r.continuation.clone(),
                        });
                        asked.push(i);
                    }
                    Err(code) => {
                        r.done = true;
                        self.node_lost(lost, r.index, from, to, "node_failed", code);
                    }
                }
            }
            if ids.is_empty() {
                continue;
            }
            let per_node = (VALUES_PER_RESPONSE / ids.len() as u32)
                .clamp(10, VALUES_PER_REQUEST)
                .min(self.settings.max_values_per_node);
            // Start inclusive (the client filter drops what is not strictly
            // after `from` or a node's last value), end exclusive.
            let details = ReadRawModifiedDetails {
                is_read_modified: false,
                start_time: start.into(),
                end_time: to.into(),
                num_values_per_node: per_node,
                return_bounds: false,
            };
            self.budget.requests.until_ready().await;
            let results = tokio::time::timeout(
                timeout,
                live.session.history_read(
                    HistoryReadAction::ReadRawModifiedDetails(details),
                    TimestampsToReturn::Both,
                    false,
                    &ids,
                ),
            )
            .await
            .map_err(|_| ReadError::Timeout {
                what: "HistoryRead",
                after: timeout,
            })?
            .map_err(|e| ReadError::Service(format!("HistoryRead: {e}")))?;
            if results.len() != asked.len() {
                return Err(ReadError::Service(format!(
                    "HistoryRead returned {} results for {} nodes",
                    results.len(),
                    asked.len()
                )));
            }
            let mut batch = Vec::new();
            let mut release = Vec::new();
            for (i, result) in asked.iter().zip(results.iter()) {
                let r = &mut reads[*i];
                let node = &self.nodes[r.index];
                let code = result.status_code;
                if no_history(code) {
                    if self.unsupported.lock().insert(r.index) {
                        tracing::warn!(device = %self.device, node = %node.text(), status = %code, "the server keeps no history of this node; its gaps stay gaps");
                    }
                    r.done = true;
                    continue;
                }
                if code.is_bad() {
                    r.done = true;
                    self.node_lost(
                        lost,
                        r.index,
                        r.last.unwrap_or(from),
                        to,
                        "node_failed",
                        code,
                    );
                    continue;
                }
                let data: Vec<DataValue> = result
                    .history_data
                    .inner_as::<HistoryData>()
                    .and_then(|h| h.data_values.clone())
                    .unwrap_or_default();
                let full_page = data.len() >= per_node as usize;
                let before = r.last;
                let mut newest = None;
                for dv in data {
                    let at = dv
                        .source_timestamp
                        .or(dv.server_timestamp)
                        .map(|t| t.as_chrono());
                    if at > newest {
                        newest = at;
                    }
                    // Strictly inside the window, after what was sent.
                    let fresh = at
                        .is_some_and(|t| t > from && t < to && r.last.is_none_or(|last| t > last));
                    if !fresh || r.values >= self.settings.max_values_per_node {
                        continue;
                    }
                    r.last = at;
                    r.values += 1;
                    batch.push(convert::sample(node.text(), dv));
                }
                r.continuation = result.continuation_point.clone();
                // A full page without a continuation point: some servers
                // (asyncua) cut at numValuesPerNode and say nothing: page on
                // by time while the page moves forward.
                let moved = newest > before;
                let more = !r.continuation.is_null_or_empty() || (full_page && moved);
                if r.values >= self.settings.max_values_per_node && more {
                    r.done = true;
                    if !r.continuation.is_null_or_empty() {
                        release.push(r.index);
                    }
                    self.node_lost(
                        lost,
                        r.index,
                        r.last.unwrap_or(from),
                        to,
                        "max_values",
                        StatusCode::Good,
                    );
                } else if !more {
                    r.done = true;
                }
            }
            if !release.is_empty() {
                self.release(&live, reads, &release).await;
            }
            if !batch.is_empty() {
                *values += batch.len() as u64;
                if out.send(batch).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Releases the continuation points the server holds for `indexes`
    /// (best effort: a point left open only costs the server memory until
    /// the session ends).
    async fn release(
        &self,
        live: &crate::session::Live,
        reads: &mut [NodeRead],
        indexes: &[usize],
    ) {
        let mut ids = Vec::new();
        for r in reads.iter_mut().filter(|r| indexes.contains(&r.index)) {
            if r.continuation.is_null_or_empty() {
                continue;
            }
            if let Ok(node_id) = node_id_of(&self.nodes[r.index], live) {
                ids.push(HistoryReadValueId {
                    node_id,
                    index_range: NumericRange::None,
                    data_encoding: QualifiedName::null(),
                    continuation_point: std::mem::replace(&mut r.continuation, ByteString::null()),
                });
            }
        }
        if ids.is_empty() {
            return;
        }
        let details = ReadRawModifiedDetails {
            is_read_modified: false,
            start_time: opcua::types::DateTime::null(),
            end_time: opcua::types::DateTime::null(),
            num_values_per_node: 0,
            return_bounds: false,
        };
        let _ = tokio::time::timeout(
            self.pool.config().read_timeout,
            live.session.history_read(
                HistoryReadAction::ReadRawModifiedDetails(details),
                TimestampsToReturn::Both,
                true,
                &ids,
            ),
        )
        .await;
    }

    /// Records that node `index`'s part `(from, to)` stays a gap.
    fn node_lost(
        &self,
        lost: &mut Vec<Unrecoverable>,
        index: usize,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reason: &'static str,
        code: StatusCode,
    ) {
        let node = self.nodes[index].text();
        let detail = match reason {
            "max_values" => format!(
                "node {node}: more than backfill.max_values_per_node ({}) values in the gap",
                self.settings.max_values_per_node
            ),
            _ => format!("node {node}: HistoryRead answered {code}"),
        };
        lost.push(Unrecoverable {
            window: Window { from, to },
            reason,
            detail,
        });
    }
}

#[async_trait]
impl History for OpcUaHistory {
    async fn backfill(&self, window: Window, out: mpsc::Sender<Vec<Sample>>) -> BackfillOutcome {
        let mut outcome = BackfillOutcome::default();
        let max =
            chrono::Duration::from_std(self.settings.max_window).unwrap_or(chrono::Duration::MAX);
        let from = if window.to - window.from > max {
            let cut = window.to - max;
            outcome.unrecoverable.push(Unrecoverable {
                window: Window {
                    from: window.from,
                    to: cut,
                },
                reason: "beyond_max_window",
                detail: format!(
                    "the gap is longer than backfill.max_window ({:?}); only its last part is read",
                    self.settings.max_window
                ),
            });
            cut
        } else {
            window.from
        };
        let known_unsupported = self.unsupported.lock().clone();
        let mut reads: Vec<NodeRead> = (0..self.nodes.len())
            .filter(|i| !known_unsupported.contains(i))
            .map(|index| NodeRead {
                index,
                continuation: ByteString::null(),
                values: 0,
                last: None,
                done: false,
            })
            .collect();
        if reads.is_empty() {
            outcome.unrecoverable.push(no_history_at_all(window));
            return outcome;
        }
        let Ok(_permit) = self.budget.running.acquire().await else {
            return outcome;
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut lost = Vec::new();
            let result = self
                .read_window(
                    from,
                    window.to,
                    &mut reads,
                    &out,
                    &mut lost,
                    &mut outcome.values,
                )
                .await;
            outcome.unrecoverable.append(&mut lost);
            match result {
                Ok(()) => break,
                Err(e) if attempt < self.budget.attempts => {
                    let wait = Duration::from_secs(1 << attempt.min(5));
                    tracing::info!(device = %self.device, error = %e, attempt, from = %from, to = %window.to, "backfill read failed; retrying after {wait:?}");
                    // Start the pending nodes afresh after their last value
                    // (the server may have dropped the points with the
                    // failed request; a point it kept costs it memory only
                    // until the session ends).
                    for r in reads.iter_mut() {
                        r.continuation = ByteString::null();
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let from = reads
                        .iter()
                        .filter(|r| !r.done)
                        .map(|r| r.last.unwrap_or(from))
                        .min()
                        .unwrap_or(from);
                    outcome.unrecoverable.push(Unrecoverable {
                        window: Window {
                            from,
                            to: window.to,
                        },
                        reason: "failed",
                        detail: format!("HistoryRead kept failing ({attempt} attempts): {e}"),
                    });
                    return outcome;
                }
            }
        }
        if self.unsupported.lock().len() == self.nodes.len() {
            outcome.unrecoverable.push(no_history_at_all(window));
        }
        outcome
    }
}

fn no_history_at_all(window: Window) -> Unrecoverable {
    Unrecoverable {
        window,
        reason: "no_history",
        detail: "the server keeps no history of any of the device's nodes (BadHistoryOperationUnsupported)".into(),
    }
}
