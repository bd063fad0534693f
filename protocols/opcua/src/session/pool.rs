//! The pool of endpoints: one slot per URL and security settings, the
//! session gauges, the fleet-wide connect rate limit, and the per-endpoint
//! state machine (live session, reconnect backoff, close).

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

use super::backoff::backoff;
use super::endpoint::{Endpoint, Live, SlotState};

/// Shared by all endpoints: the client, limits and counters.
pub(crate) struct Pool {
    pub(super) clients: Arc<Clients>,
    pub(super) cfg: SessionConfig,
    limiter: DefaultDirectRateLimiter,
    endpoints: SyncMutex<HashMap<(String, DeviceSecurity), Arc<Endpoint>>>,
    connected: AtomicI64,
    connecting: AtomicI64,
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
        }
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
    /// not in backoff): the scheduler then waits for a connect token before
    /// taking a worker permit, so devices queued behind the fleet-wide
    /// connect rate limit do not hold permits healthy devices need.
    pub(crate) fn needs_connect(&self, ep: &Endpoint) -> bool {
        ep.state() == SessionState::Disconnected
    }

    /// Waits for a token of the fleet-wide connect rate limit.
    pub(crate) async fn connect_token(&self) {
        self.limiter.until_ready().await;
    }

    /// The live session of `ep`, connecting first if there is none
    /// (`admitted`: a connect token was already taken).
    pub(crate) async fn session(
        &self,
        ep: &Endpoint,
        admitted: bool,
    ) -> Result<Arc<Live>, ReadError> {
        let mut st = ep.state.lock().await;
        if let Some(live) = &st.live {
            if live.is_alive() {
                return Ok(live.clone());
            }
            tracing::info!(endpoint = %ep.url, "session lost; will reconnect");
            let dead = st.live.take();
            self.connected.fetch_sub(1, Ordering::Relaxed);
            if let Some(dead) = dead {
                dead.loop_task.abort();
            }
            self.publish_gauges();
        }
        if let Some(at) = st.next_attempt {
            let now = Instant::now();
            if now < at {
                metrics::counter!(names::SESSION_BACKOFF_SKIPS).increment(1);
                let wait = at - now;
                // Keep the cause (and its kind) visible while waiting.
                return Err(match &st.last_failure {
                    Some(ReadError::Security { endpoint, reason }) => ReadError::Security {
                        endpoint: endpoint.clone(),
                        reason: format!("{reason} (next attempt in {wait:.1?})"),
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
        if !admitted {
            self.limiter.until_ready().await;
        }
        self.connecting.fetch_add(1, Ordering::Relaxed);
        self.publish_gauges();
        let generation = ep.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let result = tokio::time::timeout(
            self.cfg.connect_timeout,
            self.connect(ep, generation, &mut st.offered),
        )
        .await;
        self.connecting.fetch_sub(1, Ordering::Relaxed);
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(ReadError::Timeout {
                what: "connect",
                after: self.cfg.connect_timeout,
            }),
        };
        match result {
            Ok(live) => {
                metrics::counter!(names::SESSION_CONNECTS, "result" => "ok").increment(1);
                self.connected.fetch_add(1, Ordering::Relaxed);
                if st.consecutive_failures > 0 {
                    tracing::info!(endpoint = %ep.url, after_failures = st.consecutive_failures, "session re-established");
                }
                st.consecutive_failures = 0;
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
                let delay = backoff(&self.cfg, st.consecutive_failures);
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

    /// Drops the session of `ep` if it is still generation `generation`
    /// (a read on it failed in a way that makes it suspect).
    pub(crate) async fn invalidate(&self, ep: &Endpoint, generation: u64) {
        let dead = {
            let mut st = ep.state.lock().await;
            match &st.live {
                Some(l) if l.generation == generation => st.live.take(),
                _ => None,
            }
        };
        if let Some(dead) = dead {
            self.connected.fetch_sub(1, Ordering::Relaxed);
            self.publish_gauges();
            close(&dead).await;
        }
    }

    /// One user of `ep` is done; closes the session when it was the last.
    pub(crate) async fn release(&self, ep: &Endpoint) {
        if ep.users.fetch_sub(1, Ordering::Relaxed) > 1 {
            return;
        }
        let dead = ep.state.lock().await.live.take();
        if let Some(dead) = dead {
            self.connected.fetch_sub(1, Ordering::Relaxed);
            self.publish_gauges();
            close(&dead).await;
        }
    }

    /// Closes every session still open.
    pub(crate) async fn close_all(&self) {
        let eps: Vec<Arc<Endpoint>> = self.endpoints.lock().values().cloned().collect();
        let mut lives = Vec::new();
        for ep in eps {
            if let Some(l) = ep.state.lock().await.live.take() {
                self.connected.fetch_sub(1, Ordering::Relaxed);
                lives.push(l);
            }
        }
        futures::future::join_all(lives.iter().map(|l| close(l))).await;
        self.publish_gauges();
    }
}

async fn close(live: &Live) {
    match tokio::time::timeout(Duration::from_secs(2), live.session.disconnect()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "session close"),
        Err(_) => tracing::debug!("session close timed out"),
    }
    live.loop_task.abort();
}
