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

impl OpcUaHistory {
    /// Reads `[from, to)` of the nodes in `reads` until each is done,
    /// sending every response's values to `out`; `Err` when a request
    /// fails (the caller retries).
    async fn read_window(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reads: &mut [NodeRead],
        out: &mpsc::Sender<Vec<Sample>>,
        values: &mut u64,
    ) -> Result<(), ReadError> {
        let live = self.pool.session(&self.endpoint).await?;
        let timeout = self.pool.config().read_timeout;
        let per_request = match live.max_nodes_per_history_read {
            0 => NODES_PER_REQUEST,
            n => NODES_PER_REQUEST.min(n),
        };
        loop {
            let pending: Vec<usize> = (0..reads.len()).filter(|i| !reads[*i].done).collect();
            if pending.is_empty() {
                return Ok(());
            }
            for chunk in pending.chunks(per_request) {
                let mut ids = Vec::with_capacity(chunk.len());
                let mut asked = Vec::with_capacity(chunk.len());
                for &i in chunk {
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
                        Err(_) => r.done = true,
                    }
                }
                if ids.is_empty() {
                    continue;
                }
                // A retry starts after the last value delivered.
                let start = asked
                    .iter()
                    .filter_map(|i| reads[*i].last)
                    .min()
                    .map_or(from, |t| t.max(from));
                let per_node = VALUES_PER_REQUEST.min(self.settings.max_values_per_node);
                let details = ReadRawModifiedDetails {
                    is_read_modified: false,
                    start_time: (start + chrono::Duration::milliseconds(1)).into(),
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
                let mut batch = Vec::new();
                for (i, result) in asked.iter().zip(results.iter()) {
                    let r = &mut reads[*i];
                    let node = &self.nodes[r.index];
                    let code = result.status_code;
                    if no_history(code) {
                        if self.unsupported.lock().insert(r.index) {
                            tracing::warn!(device = %self.device, node = %node.text, status = %code, "the server keeps no history of this node; its gaps stay gaps");
                        }
                        r.done = true;
                        continue;
                    }
                    if code.is_bad() {
                        tracing::warn!(device = %self.device, node = %node.text, status = %code, "HistoryRead of this node failed; its part of the gap stays open");
                        r.done = true;
                        continue;
                    }
                    let data: Vec<DataValue> = result
                        .history_data
                        .inner_as::<HistoryData>()
                        .and_then(|h| h.data_values.clone())
                        .unwrap_or_default();
                    // A full page without a continuation point: some servers
                    // (asyncua) cut at numValuesPerNode and say nothing; ask
                    // again after the last value.
                    let full_page = data.len() >= per_node as usize;
                    let before = r.values;
                    for dv in data {
                        let at = dv.source_timestamp.map(|t| t.as_chrono());
                        // Strictly inside the window, after what was sent.
                        let fresh = at.is_some_and(|t| {
                            t > from && t < to && r.last.is_none_or(|last| t > last)
                        });
                        if !fresh || r.values >= self.settings.max_values_per_node {
                            continue;
                        }
                        r.last = at;
                        r.values += 1;
                        batch.push(convert::sample(&node.text, dv));
                    }
                    r.continuation = result.continuation_point.clone();
                    let progressed = r.values > before;
                    let more = !r.continuation.is_null_or_empty() || (full_page && progressed);
                    if !more || r.values >= self.settings.max_values_per_node {
                        r.done = true;
                    }
                }
                if results.len() < asked.len() {
                    return Err(ReadError::Service(format!(
                        "HistoryRead returned {} results for {} nodes",
                        results.len(),
                        asked.len()
                    )));
                }
                if !batch.is_empty() {
                    *values += batch.len() as u64;
                    if out.send(batch).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
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
            outcome.unrecoverable = Some(Unrecoverable {
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
            outcome.unrecoverable = Some(no_history_at_all(window));
            return outcome;
        }
        let Ok(_permit) = self.budget.running.acquire().await else {
            return outcome;
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .read_window(from, window.to, &mut reads, &out, &mut outcome.values)
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < self.budget.attempts => {
                    let wait = Duration::from_secs(1 << attempt.min(5));
                    tracing::info!(device = %self.device, error = %e, attempt, "backfill read failed; retrying after {wait:?}");
                    // Continuation points die with a failed request.
                    for r in reads.iter_mut() {
                        r.continuation = ByteString::null();
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    outcome.unrecoverable = Some(Unrecoverable {
                        window: Window {
                            from: reads
                                .iter()
                                .filter(|r| !r.done)
                                .filter_map(|r| r.last)
                                .min()
                                .unwrap_or(from),
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
            outcome.unrecoverable = Some(no_history_at_all(window));
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
