//! The session pool: at most one OPC UA session per endpoint, opened on
//! first use, shared by every device on that endpoint, re-opened by us (not
//! by the library's hidden retry loop) with exponential backoff and jitter,
//! under a fleet-wide connect rate limit.
//!
//! The library's event loop is driven here with reconnects disabled: when
//! the transport drops, or keep-alives fail, the loop ends, the session is
//! marked dead and the next read opens a new one after its backoff. So
//! every connection attempt passes through one place that counts it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use crate::config::{DeviceSecurity, Identity, SecurityPolicy, SessionConfig};
use collector_core::metrics::names;
use collector_core::ReadError;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use opcua::client::{Session, SessionPollResult};
use opcua::types::{
    EndpointDescription, MessageSecurityMode, ReadValueId, StatusCode, TimestampsToReturn,
    UserTokenPolicy, VariableId, Variant,
};

use crate::security::{identity_token, Clients, SecurityError};
use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A task that is aborted when this handle is dropped: a session's event
/// loop owns its TCP connection, so a connect abandoned half-way (e.g. by
/// the connect timeout) must not leave the loop, and the connection,
/// running.
pub(crate) struct LoopTask(tokio::task::JoinHandle<()>);

impl LoopTask {
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for LoopTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a connected session knows about its server.
pub(crate) struct Live {
    pub(crate) session: Arc<Session>,
    /// Cleared when the event loop ends (transport lost, keep-alive failed).
    alive: Arc<AtomicBool>,
    loop_task: LoopTask,
    /// Namespace URI -> index, read at connect.
    pub(crate) namespaces: HashMap<String, u16>,
    /// Namespace indexes that moved since the first session on this
    /// endpoint (old index -> new index, or None if the URI is gone):
    /// configured `ns=` ids keep meaning what they meant at first connect.
    pub(crate) remap: HashMap<u16, Option<u16>>,
    /// Nodes per Read request: min(server's MaxNodesPerRead, our cap).
    pub(crate) max_nodes_per_read: usize,
    /// Increases with every new session on this endpoint, so readers know
    /// to re-resolve their node ids.
    pub(crate) generation: u64,
}

impl Live {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && !self.loop_task.is_finished()
    }
}

#[derive(Default)]
struct SlotState {
    live: Option<Arc<Live>>,
    /// The server's endpoints from its last GetEndpoints: discovery runs
    /// once, and again only after a connect failed on security grounds
    /// (e.g. a new server certificate).
    offered: Option<Vec<EndpointDescription>>,
    consecutive_failures: u32,
    next_attempt: Option<Instant>,
    /// Why the last connect failed: reads refused during the backoff say it.
    last_failure: Option<ReadError>,
}

/// One endpoint's session slot (per URL and security settings: devices
/// that share both share the session).
pub(crate) struct Endpoint {
    pub(crate) url: String,
    security: DeviceSecurity,
    state: Mutex<SlotState>,
    generation: AtomicU64,
    /// Devices attached to this endpoint; the session closes when it drops to 0.
    users: AtomicI64,
    /// The NamespaceArray seen at the first connect: what `ns=N` in the
    /// configuration refers to.
    first_namespaces: StdMutex<Option<Vec<String>>>,
}

impl Endpoint {
    /// `connected`, `connecting`, `backoff` or `disconnected`, without waiting.
    pub(crate) fn state_label(&self) -> &'static str {
        match self.state.try_lock() {
            Err(_) => "connecting",
            Ok(st) => match (&st.live, st.next_attempt) {
                (Some(l), _) if l.is_alive() => "connected",
                (_, Some(at)) if at > Instant::now() => "backoff",
                _ => "disconnected",
            },
        }
    }

    /// Maps configured namespace indexes onto the current server's.
    fn remap(&self, current: &[String]) -> HashMap<u16, Option<u16>> {
        let mut guard = match self.first_namespaces.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let first = guard.get_or_insert_with(|| current.to_vec());
        let mut remap = HashMap::new();
        for (old, uri) in first.iter().enumerate() {
            let Ok(old) = u16::try_from(old) else { break };
            let new = current
                .iter()
                .position(|u| u == uri)
                .and_then(|i| u16::try_from(i).ok());
            if new != Some(old) {
                remap.insert(old, new);
            }
        }
        if !remap.is_empty() {
            tracing::warn!(endpoint = %self.url, ?remap, "server namespace array changed since first connect; remapping configured ns= indexes by URI");
        }
        remap
    }
}

/// Shared by all endpoints: the client, limits and counters.
pub(crate) struct Pool {
    clients: Arc<Clients>,
    cfg: SessionConfig,
    limiter: DefaultDirectRateLimiter,
    endpoints: StdMutex<HashMap<(String, DeviceSecurity), Arc<Endpoint>>>,
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
            endpoints: StdMutex::new(HashMap::new()),
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
        let mut map = match self.endpoints.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let ep = map
            .entry((url.to_string(), security.clone()))
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    url: url.to_string(),
                    security: security.clone(),
                    state: Mutex::new(SlotState::default()),
                    generation: AtomicU64::new(0),
                    users: AtomicI64::new(0),
                    first_namespaces: StdMutex::new(None),
                })
            })
            .clone();
        ep.users.fetch_add(1, Ordering::Relaxed);
        ep
    }

    fn publish_gauges(&self) {
        let connected = self.connected.load(Ordering::Relaxed);
        let connecting = self.connecting.load(Ordering::Relaxed);
        let total = self.endpoints.lock().map(|m| m.len() as i64).unwrap_or(0);
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
        ep.state_label() == "disconnected"
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
        let eps: Vec<Arc<Endpoint>> = match self.endpoints.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
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

    async fn connect(
        &self,
        ep: &Endpoint,
        generation: u64,
        offered_cache: &mut Option<Vec<EndpointDescription>>,
    ) -> Result<Live, ReadError> {
        let url = ep.url.as_str();
        let connect_err = |reason: String| ReadError::Connect {
            endpoint: url.to_string(),
            reason,
        };
        let security_err = |reason: String| ReadError::Security {
            endpoint: url.to_string(),
            reason,
        };
        let sec = ep.security.clone();
        // Without security and user there is nothing to choose: skip
        // discovery. Otherwise ask the server what it offers (GetEndpoints
        // on an unsecured channel, as every OPC UA client does).
        let offered: Option<Vec<EndpointDescription>> =
            if sec.policy == SecurityPolicy::None && sec.identity == Identity::Anonymous {
                None
            } else if let Some(cached) = offered_cache {
                Some(cached.clone())
            } else {
                let eps = self
                    .clients
                    .plain()
                    .get_server_endpoints_from_url(url)
                    .await
                    .map_err(|e| connect_err(format!("GetEndpoints: {e}")))?;
                *offered_cache = Some(eps.clone());
                Some(eps)
            };
        // Building a session reads the certificate store from disk (and the
        // first secure one may generate the client certificate): keep that
        // blocking work off the executor threads the schedules run on.
        let clients = self.clients.clone();
        let endpoint_url = url.to_string();
        let build_sec = sec.clone();
        let built = tokio::task::spawn_blocking(move || {
            let prepared = match offered {
                None => None,
                Some(eps) => Some(
                    clients
                        .prepare(&endpoint_url, &build_sec, &eps)
                        .map_err(BuildError::Security)?,
                ),
            };
            let (client, endpoint) = match &prepared {
                None => (
                    clients.plain(),
                    EndpointDescription::from((
                        endpoint_url.as_str(),
                        opcua::types::constants::SECURITY_POLICY_NONE_URI,
                        MessageSecurityMode::None,
                        UserTokenPolicy::anonymous(),
                    )),
                ),
                Some(p) => (p.client(clients.plain()), p.endpoint.clone()),
            };
            let chosen = format!(
                "{}/{:?}",
                opcua::crypto::SecurityPolicy::from_uri(endpoint.security_policy_uri.as_ref()),
                endpoint.security_mode
            );
            let token = identity_token(&build_sec.identity).map_err(BuildError::Security)?;
            client
                .session_builder()
                .connect_to_endpoint_directly(endpoint)
                .and_then(|b| {
                    b.user_identity_token(token)
                        .build(client.certificate_store().clone())
                })
                .map(|(session, event_loop)| (session, event_loop, chosen))
                .map_err(|e| BuildError::Other(e.to_string()))
        })
        .await;
        let (session, event_loop, chosen) = match built {
            Ok(Ok(v)) => v,
            Ok(Err(BuildError::Security(e))) => return Err(security_err(e.to_string())),
            Ok(Err(BuildError::Other(e))) => return Err(connect_err(e)),
            Err(e) => return Err(connect_err(format!("session build task: {e}"))),
        };
        // We own reconnects: when this session's transport ends, its loop ends.
        session.disable_reconnects();
        let alive = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), StatusCode>>();
        let loop_alive = alive.clone();
        let loop_url = url.to_string();
        let loop_task = LoopTask(tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let stream = event_loop.enter();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(SessionPollResult::Reconnected(_)) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(SessionPollResult::ConnectionLost(code)) => {
                        tracing::debug!(endpoint = %loop_url, %code, "connection lost");
                    }
                    Ok(_) => {}
                    Err(code) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Err(code));
                        }
                        break;
                    }
                }
            }
            loop_alive.store(false, Ordering::Relaxed);
        }));
        let abort_on_err = |e: ReadError| {
            loop_task.abort();
            e
        };
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(code)) => {
                let e = match rejection_hint(code, &sec, &chosen) {
                    Some(reason) => security_err(reason),
                    None => connect_err(code.to_string()),
                };
                return Err(abort_on_err(e));
            }
            Err(_) => return Err(abort_on_err(connect_err("session event loop ended".into()))),
        }
        let (namespace_array, server_max) = match discover(&session).await {
            Ok(v) => v,
            Err(e) => {
                let _ = session.disconnect().await;
                return Err(abort_on_err(e));
            }
        };
        let cap = self.cfg.max_nodes_per_read as usize;
        let max_nodes_per_read = match (server_max, cap) {
            (0, 0) => usize::MAX,
            (0, c) => c,
            (s, 0) => s,
            (s, c) => s.min(c),
        };
        tracing::debug!(endpoint = %url, security = %chosen, identity = %sec.identity.describe(), max_nodes_per_read, "session connected");
        let remap = ep.remap(&namespace_array);
        let namespaces = namespace_array
            .into_iter()
            .enumerate()
            .filter_map(|(i, uri)| u16::try_from(i).ok().map(|i| (uri, i)))
            .collect();
        Ok(Live {
            session,
            alive,
            loop_task,
            namespaces,
            remap,
            max_nodes_per_read,
            generation,
        })
    }
}

/// Why a session could not be built.
enum BuildError {
    Security(SecurityError),
    Other(String),
}

/// An actionable reason for a session the server refused on security
/// grounds, or None for other failures.
fn rejection_hint(code: StatusCode, sec: &DeviceSecurity, chosen: &str) -> Option<String> {
    let name = format!("{code}");
    if code == StatusCode::BadUserAccessDenied
        || code == StatusCode::BadIdentityTokenInvalid
        || code == StatusCode::BadIdentityTokenRejected
    {
        return Some(format!(
            "authentication failed for {} ({name}): check the user name and password (or user certificate)",
            sec.identity.describe()
        ));
    }
    if name.starts_with("BadCertificate")
        || code == StatusCode::BadNoValidCertificates
        || code == StatusCode::BadSecurityChecksFailed
        || code == StatusCode::BadSecurityPolicyRejected
        || code == StatusCode::BadSecurityModeRejected
    {
        return Some(format!(
            "the {chosen} channel failed its certificate checks ({name}): the server may not trust the collector's client certificate yet (add it to the server's trust list), the server's certificate may have changed, or a check failed (validity dates, hostname, application URI)"
        ));
    }
    None
}

/// Reads the namespace array and MaxNodesPerRead in one request.
async fn discover(session: &Session) -> Result<(Vec<String>, usize), ReadError> {
    let ids = [
        ReadValueId::from(opcua::types::NodeId::from(
            VariableId::Server_NamespaceArray,
        )),
        ReadValueId::from(opcua::types::NodeId::from(
            VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        )),
    ];
    let results = session
        .read(&ids, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| ReadError::Service(format!("reading NamespaceArray/MaxNodesPerRead: {e}")))?;
    let mut namespaces = Vec::new();
    if let Some(Some(Variant::Array(a))) = results.first().map(|dv| dv.value.clone()) {
        for v in &a.values {
            namespaces.push(match v {
                Variant::String(s) => s.as_ref().to_string(),
                _ => String::new(),
            });
        }
    }
    let max = match results.get(1).and_then(|dv| dv.value.clone()) {
        Some(Variant::UInt32(n)) => n as usize,
        _ => 0,
    };
    Ok((namespaces, max))
}

async fn close(live: &Live) {
    match tokio::time::timeout(Duration::from_secs(2), live.session.disconnect()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "session close"),
        Err(_) => tracing::debug!("session close timed out"),
    }
    live.loop_task.abort();
}

/// Reconnect delay after `failures` consecutive failures: exponential from
/// `reconnect_initial`, capped at `reconnect_max`, with jitter in [50%, 100%]
/// so devices that failed together do not retry together.
pub(crate) fn backoff(cfg: &SessionConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = cfg
        .reconnect_initial
        .saturating_mul(1u32 << exp)
        .min(cfg.reconnect_max);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let cfg = SessionConfig::default();
        let d1 = backoff(&cfg, 1);
        assert!(d1 >= cfg.reconnect_initial / 2 && d1 <= cfg.reconnect_initial);
        let d4 = backoff(&cfg, 4);
        assert!(d4 >= cfg.reconnect_initial * 4 && d4 <= cfg.reconnect_initial * 8);
        let d30 = backoff(&cfg, 30);
        assert!(d30 <= cfg.reconnect_max && d30 >= cfg.reconnect_max / 2);
    }
}
