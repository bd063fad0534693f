//! The pool of endpoints: one slot per URL and security settings, the
//! session gauges, the fleet-wide connect rate limit, and the per-endpoint
//! state machine (live session, reconnect backoff, reactivation, close).
//!
//! A lost connection does not lose the session: the server keeps it for
//! `session.session_timeout`, and the next connect reactivates it on a new
//! secure channel (ActivateSession) instead of leaving it behind and
//! creating another; a new session only when the server refuses. A
//! session given up for good is closed once its server answers again:
//! within `session.session_timeout` for a removed device, within the
//! shutdown grace at shutdown; otherwise it is counted as left behind
//! (`collector_sessions_abandoned_total`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{DeviceSecurity, SessionConfig};
use collector_core::metrics::names;
use collector_core::ReadError;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::security::Clients;
use collector_core::protocol::SessionState;
use parking_lot::Mutex as SyncMutex;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::backoff::{backoff, fast_backoff};
use super::connect::Opened;
use super::endpoint::{Endpoint, Live, Resume, SlotState};

/// Shared by all endpoints: the client, limits and counters.
pub(crate) struct Pool {
    pub(super) clients: Arc<Clients>,
    pub(super) cfg: SessionConfig,
    limiter: DefaultDirectRateLimiter,
    endpoints: SyncMutex<HashMap<(String, DeviceSecurity), Arc<Endpoint>>>,
    connected: AtomicI64,
    connecting: AtomicI64,
    /// Background closes of sessions released while their connection was
    /// down (awaited by [`Pool::close_all`]).
    closing: SyncMutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    pub(crate) fn new(clients: Clients, cfg: SessionConfig) -> Self {
        let per_sec = NonZeroU32::new(cfg.max_connects_per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            clients: Arc::new(clients),
            limiter: RateLimiter::direct(Quota::per_second(per_sec)),
            cfg,
            endpoints: SyncMutex::new(HashMap::new()),
            connected: AtomicI64::new(0),
            connecting: AtomicI64::new(0),
            closing: SyncMutex::new(Vec::new()),
        }
    }

    /// The OPC UA clients (for GetEndpoints without a session).
    pub(crate) fn clients(&self) -> &Clients {
        &self.clients
    }

    pub(crate) fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub(crate) fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed).max(0) as usize
    }

    /// The slot for `url` with `security`, created on first use; counts
    /// one more user.
    pub(crate) fn endpoint(&self, url: &str, security: &DeviceSecurity) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock();
        let ep = map
            .entry((url.to_string(), security.clone()))
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    url: url.to_string(),
                    security: security.clone(),
                    state: Mutex::new(SlotState::default()),
                    generation: AtomicU64::new(0),
                    users: AtomicI64::new(0),
                    first_namespaces: SyncMutex::new(None),
                })
            })
            .clone();
        ep.users.fetch_add(1, Ordering::Relaxed);
        ep
    }

    fn publish_gauges(&self) {
        let connected = self.connected.load(Ordering::Relaxed);
        let connecting = self.connecting.load(Ordering::Relaxed);
        let total = self.endpoints.lock().len() as i64;
        metrics::gauge!(names::SESSIONS, "state" => "connected").set(connected as f64);
        metrics::gauge!(names::SESSIONS, "state" => "connecting").set(connecting as f64);
        metrics::gauge!(names::SESSIONS, "state" => "disconnected")
            .set((total - connected - connecting).max(0) as f64);
    }

    /// Whether a read of `ep` would have to connect now (no live session,
    /// not in backoff): the reader then connects before the scheduler hands
    /// out a worker permit, so devices queued behind the fleet-wide connect
    /// rate limit, or waiting out a connect timeout, hold no permit the
    /// healthy devices need.
    pub(crate) fn needs_connect(&self, ep: &Endpoint) -> bool {
        // Connecting: another device of the endpoint is connecting it; wait
        // for that here too, not holding a permit.
        matches!(
            ep.state(),
            SessionState::Disconnected | SessionState::Connecting
        )
    }

    /// The live session of `ep`, connecting first (after a token of the
    /// fleet-wide connect rate limit) if there is none.
    pub(crate) async fn session(&self, ep: &Endpoint) -> Result<Arc<Live>, ReadError> {
        let mut st = ep.state.lock().await;
        if let Some(live) = &st.live {
            if live.is_alive() {
                return Ok(live.clone());
            }
            tracing::info!(endpoint = %ep.url, "connection lost; will reactivate the session");
            let dead = st.live.take();
            self.connected.fetch_sub(1, Ordering::Relaxed);
            if let Some(dead) = dead {
                st.resume = dead.resume().or(st.resume.take());
                dead.loop_task.abort();
            }
            self.publish_gauges();
        }
        if let Some(at) = st.next_attempt {
            let now = Instant::now();
            if now < at {
                metrics::counter!(names::SESSION_BACKOFF_SKIPS).increment(1);
                let wait = at - now;
                // Keep the cause, and its kind (so its cost: a breaker's
                // probe that lands in the wait is not a cheap success of
                // sorts), visible while waiting.
                return Err(match &st.last_failure {
                    Some(ReadError::Security { endpoint, reason }) => ReadError::Security {
                        endpoint: endpoint.clone(),
                        reason: format!("{reason} (next attempt in {wait:.1?})"),
                    },
                    Some(ReadError::Refused { endpoint, reason }) => ReadError::Refused {
                        endpoint: endpoint.clone(),
                        reason: format!("{reason} (next attempt in {wait:.1?})"),
                    },
                    Some(ReadError::Timeout { after, .. }) => ReadError::Timeout {
                        what: "an earlier connect",
                        after: *after,
                    },
                    Some(last) => {
                        // The last failure without its own "connect to <url>
                        // failed" prefix: this error carries the endpoint.
                        let cause = match last {
                            ReadError::Connect { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        };
                        ReadError::Connect {
                            endpoint: ep.url.clone(),
                            reason: format!(
                                "in reconnect backoff for another {wait:.1?} after: {cause}"
                            ),
                        }
                    }
                    None => ReadError::Connect {
                        endpoint: ep.url.clone(),
                        reason: format!("in reconnect backoff for another {wait:.1?}"),
                    },
                });
            }
        }
        self.limiter.until_ready().await;
        // Counted while connecting, also when the caller gives up on the
        // connect half-way (a device removed, shutdown).
        let connecting = Connecting::start(self);
        let generation = ep.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let resume = st.resume.clone();
        let result = tokio::time::timeout(
            self.cfg.connect_timeout,
            self.connect(ep, generation, &mut st.offered, resume),
        )
        .await;
        drop(connecting);
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(ReadError::Timeout {
                what: "connect",
                after: self.cfg.connect_timeout,
            }),
        };
        match result {
            Ok((live, opened)) => {
                metrics::counter!(names::SESSION_CONNECTS, "result" => "ok").increment(1);
                let how = match opened {
                    Opened::Reactivated => "reactivated",
                    Opened::Created => "created",
                };
                metrics::counter!(names::SESSIONS_OPENED, "how" => how).increment(1);
                if opened == Opened::Created && st.resume.is_some() {
                    // The server no longer had it (restarted, or it timed
                    // out): nothing left behind.
                    metrics::counter!(names::SESSION_REACTIVATIONS_REFUSED).increment(1);
                    tracing::info!(endpoint = %ep.url, "the server refused to reactivate the session; a new one was created");
                }
                st.resume = None;
                self.connected.fetch_add(1, Ordering::Relaxed);
                if st.consecutive_failures > 0 {
                    tracing::info!(endpoint = %ep.url, after_failures = st.consecutive_failures, "session re-established");
                }
                st.consecutive_failures = 0;
                st.slow_failures = 0;
                st.next_attempt = None;
                st.last_failure = None;
                let live = Arc::new(live);
                st.live = Some(live.clone());
                self.publish_gauges();
                Ok(live)
            }
            Err(e) => {
                if matches!(e, ReadError::Security { .. }) {
                    st.offered = None;
                }
                let label = if matches!(e, ReadError::Timeout { .. }) {
                    "timeout"
                } else {
                    "error"
                };
                metrics::counter!(names::SESSION_CONNECTS, "result" => label).increment(1);
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                // Judged by cost: a refused or reset connection costs
                // nothing and may succeed a moment later (a flaky link), so
                // it retries after `reconnect_initial`, at most once per
                // read; timeouts and refusals on security grounds escalate.
                let delay = if matches!(e, ReadError::Connect { .. }) {
                    fast_backoff(&self.cfg)
                } else {
                    st.slow_failures = st.slow_failures.saturating_add(1);
                    backoff(&self.cfg, st.slow_failures)
                };
                st.next_attempt = Some(Instant::now() + delay);
                if matches!(e, ReadError::Security { .. }) {
                    // Actionable, and bounded by the backoff: say it loudly.
                    tracing::warn!(endpoint = %ep.url, error = %e, retry_in = ?delay, "cannot open a secure session");
                } else {
                    tracing::debug!(endpoint = %ep.url, error = %e, retry_in = ?delay, "connect failed");
                }
                st.last_failure = Some(e.clone());
                self.publish_gauges();
                Err(e)
            }
        }
    }

    /// Drops the connection of `ep`'s session if it is still generation
    /// `generation` (a read on it failed: the connection is suspect); the
    /// next read reconnects and reactivates the session.
    pub(crate) async fn invalidate(&self, ep: &Endpoint, generation: u64) {
        let mut st = ep.state.lock().await;
        let dead = match &st.live {
            Some(l) if l.generation == generation => st.live.take(),
            _ => None,
        };
        if let Some(dead) = dead {
            st.resume = dead.resume().or(st.resume.take());
            dead.loop_task.abort();
            self.connected.fetch_sub(1, Ordering::Relaxed);
            self.publish_gauges();
        }
    }

    /// One user of `ep` is done; closes the session when it was the last.
    /// A session that cannot be closed now (its connection is down) is
    /// closed in the background once the server answers again, within the
    /// session timeout (after which the server has dropped it anyway).
    pub(crate) async fn release(self: &Arc<Self>, ep: &Arc<Endpoint>) {
        if ep.users.fetch_sub(1, Ordering::Relaxed) > 1 {
            return;
        }
        let (dead, resume) = {
            let mut st = ep.state.lock().await;
            (st.live.take(), st.resume.take())
        };
        let left = match dead {
            Some(dead) => {
                self.connected.fetch_sub(1, Ordering::Relaxed);
                self.publish_gauges();
                close(&dead, &ep.url, false).await.err()
            }
            None => resume,
        };
        if let Some(resume) = left {
            let pool = self.clone();
            let ep = ep.clone();
            let limit = self.cfg.session_timeout;
            let task = tokio::spawn(async move {
                // Dropped at the limit: counted as left behind.
                let _ = tokio::time::timeout(limit, pool.close_left(ep, resume)).await;
            });
            let mut closing = self.closing.lock();
            closing.retain(|t| !t.is_finished());
            closing.push(task);
        }
    }

    /// Closes every session still open, and those whose connection is
    /// down once their server answers again (until the caller stops
    /// waiting: what is left then is counted as left behind).
    pub(crate) async fn close_all(&self) {
        let eps: Vec<Arc<Endpoint>> = self.endpoints.lock().values().cloned().collect();
        let mut lives = Vec::new();
        let mut resumes = Vec::new();
        for ep in eps {
            let mut st = ep.state.lock().await;
            if let Some(l) = st.live.take() {
                self.connected.fetch_sub(1, Ordering::Relaxed);
                lives.push((l, ep.clone()));
            }
            if let Some(r) = st.resume.take() {
                resumes.push((ep.clone(), r));
            }
        }
        self.publish_gauges();
        let closing: Vec<_> = std::mem::take(&mut *self.closing.lock());
        futures::future::join3(
            futures::future::join_all(closing),
            futures::future::join_all(lives.into_iter().map(|(l, ep)| async move {
                // A session whose connection died unnoticed cannot be
                // closed on it: close it once the server answers again.
                if let Err(resume) = close(&l, &ep.url, false).await {
                    self.close_left(ep, resume).await;
                }
            })),
            futures::future::join_all(resumes.into_iter().map(|(ep, r)| self.close_left(ep, r))),
        )
        .await;
    }

    /// Reactivates `resume`'s session on `ep` as soon as the server answers,
    /// and closes it. Counted as left behind if dropped before that.
    async fn close_left(&self, ep: Arc<Endpoint>, resume: Resume) {
        let mut pending = LeftBehind::new(
            &ep.url,
            "its server did not answer again in time to close it",
        );
        loop {
            self.limiter.until_ready().await;
            let mut offered = ep.state.lock().await.offered.clone();
            let attempt = tokio::time::timeout(
                self.cfg.connect_timeout,
                self.connect(&ep, 0, &mut offered, Some(resume.clone())),
            )
            .await;
            if let Ok(Ok((live, _))) = attempt {
                let _ = close(&live, &ep.url, true).await;
                pending.disarm();
                return;
            }
            // As for a device that refuses: one attempt per reconnect delay.
            tokio::time::sleep(self.cfg.reconnect_initial.max(CLOSE_RETRY_MIN)).await;
        }
    }
}

/// Shortest pause between attempts to reach a server whose session must be
/// closed.
const CLOSE_RETRY_MIN: Duration = Duration::from_millis(500);

/// A session on a server that is counted as left behind (and why) if
/// dropped before [`LeftBehind::disarm`]: closed, or handed on.
pub(super) struct LeftBehind {
    url: Option<String>,
    why: &'static str,
}

impl LeftBehind {
    pub(super) fn new(url: &str, why: &'static str) -> Self {
        Self {
            url: Some(url.to_string()),
            why,
        }
    }

    /// The session was closed or handed on: nothing left behind.
    pub(super) fn disarm(&mut self) {
        self.url = None;
    }
}

impl Drop for LeftBehind {
    fn drop(&mut self) {
        if let Some(url) = self.url.take() {
            abandoned(&url, self.why);
        }
    }
}

/// One connect in progress, in the `connecting` gauge until dropped.
struct Connecting<'a>(&'a Pool);

impl<'a> Connecting<'a> {
    fn start(pool: &'a Pool) -> Self {
        pool.connecting.fetch_add(1, Ordering::Relaxed);
        pool.publish_gauges();
        Connecting(pool)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a session the server may still hold (until its timeout).
fn abandoned(url: &str, why: &str) {
    metrics::counter!(names::SESSIONS_ABANDONED).increment(1);
    tracing::info!(endpoint = %url, why, "session left on the server until its session_timeout");
}

/// Closes a session (CloseSession, then the connection). When that fails,
/// returns what reactivating it takes, or counts it as left behind when
/// `final_attempt` (or it cannot be reactivated).
async fn close(live: &Live, url: &str, final_attempt: bool) -> Result<(), Resume> {
    let why = match tokio::time::timeout(CLOSE_TIMEOUT, live.session.disconnect()).await {
        Ok(Ok(())) => {
            live.loop_task.abort();
            return Ok(());
        }
        Ok(Err(e)) => {
            tracing::debug!(endpoint = %url, error = %e, "session close");
            "CloseSession failed"
        }
        Err(_) => {
            tracing::debug!(endpoint = %url, "session close timed out");
            "CloseSession timed out"
        }
    };
    live.loop_task.abort();
    match live.resume() {
        Some(resume) if !final_attempt => Err(resume),
        _ => {
            abandoned(url, why);
            Ok(())
        }
    }
}

/// How long a CloseSession may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
