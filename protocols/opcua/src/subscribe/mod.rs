//! A subscribed device (`mode: subscribe`): one subscription on the
//! endpoint's shared session, its monitored items, and a watchdog.
//!
//! The server samples the nodes and sends what changed; each publish
//! response with data becomes one batch for the core (one record). A
//! subscription can look fine and deliver nothing (a server restart, a lost
//! publish, a failed transfer), so the subscriber checks, at least once per
//! publishing interval, that it was heard from (data or keep-alive) within
//! its bound — the revised publishing interval x (keep-alive count + 1)
//! plus `session.read_timeout` — and that the server did not end it (a
//! StatusChangeNotification, publishes answered BadNoSubscription while it
//! stayed quiet). If not, it is deleted and recreated (and its session,
//! when that is gone too), counted by cause and logged with the device id;
//! a silent one also counts as a costly failure for the device's breaker,
//! so a server that keeps accepting subscriptions and never publishes is
//! backed off, not recreated every bound. When its session ends the
//! subscriber wakes at once; on the next session the old subscription is
//! registered with the library first and then transferred (the server may
//! still hold it in a reactivated session), else deleted and recreated.
//! Set-up failures go through the device's breaker and the pool's backoff
//! and connect rate limit, as reads do.

mod establish;
mod items;
mod notify;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collector_core::config::Device;
use collector_core::metrics::names;
use collector_core::protocol::{Delivery, DeviceReader, SessionState};
use collector_core::record::Sample;
use collector_core::ReadError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{NodeAddress, OpcUaDevice, SubscriptionSettings};
use crate::session::{Endpoint, Live, Pool};
use notify::{CallbackMetrics, Heard, Notifications, Overflow};

/// The longest bound a server's revised settings can make (a hostile or
/// broken server must not overflow the watchdog's arithmetic).
const MAX_BOUND: Duration = Duration::from_secs(24 * 3600);

/// Why a subscription is set up again (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Not heard from within its bound.
    Silent,
    /// The server ended it (StatusChangeNotification).
    StatusChange,
    /// The server answered publishes with BadNoSubscription.
    LostOnServer,
    /// Its session was lost; set up on the next one.
    NewSession,
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Silent => "silent",
            Cause::StatusChange => "status_change",
            Cause::LostOnServer => "lost_on_server",
            Cause::NewSession => "new_session",
        }
    }
}

/// A subscription that is set up.
struct Active {
    live: Arc<Live>,
    id: u32,
    rx: mpsc::Receiver<Vec<Sample>>,
    overflow: Arc<Overflow>,
    heard: Arc<Heard>,
    /// How long it may stay silent while healthy.
    bound: Duration,
    /// How often the watchdog looks (the publishing interval, at least 1 s).
    check_every: Duration,
    /// `live.subscriptions_lost` when it was set up.
    lost_seen: u64,
    revised: (Duration, u32, u32),
}

pub(crate) struct OpcUaSubscriber {
    pool: Arc<Pool>,
    endpoint: Arc<Endpoint>,
    device: Arc<str>,
    nodes: Vec<NodeAddress>,
    texts: Arc<[Arc<str>]>,
    settings: SubscriptionSettings,
    active: Option<Active>,
    /// The subscription lost with its session: transferred to the next
    /// one if the server allows it (session generation, id, revised).
    orphan: Option<(u64, u32, (Duration, u32, u32))>,
    /// A subscription being set up (created, items not yet): deleted by
    /// `close` if a stop cuts the set-up off.
    creating: Option<(Arc<Live>, u32)>,
    /// Why the next set-up happens, for its count (None: the first).
    cause: Option<Cause>,
    /// Bad samples of nodes that cannot be monitored, delivered as the
    /// first record after a set-up.
    pending: Vec<Sample>,
    prepared: Option<Result<Arc<Live>, ReadError>>,
    released: bool,
}

/// Deletes subscription `id` on `live`'s session (and from the library's
/// list), waiting at most `timeout`.
async fn delete(live: &Live, id: u32, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, live.session.delete_subscriptions(&[id])).await;
}

/// Whether `e` says the server no longer knows the session.
fn session_gone(e: &opcua::types::Error) -> bool {
    matches!(
        e.status(),
        opcua::types::StatusCode::BadSessionIdInvalid
            | opcua::types::StatusCode::BadSessionClosed
            | opcua::types::StatusCode::BadSessionNotActivated
    )
}

impl OpcUaSubscriber {
    pub(crate) fn new(pool: Arc<Pool>, device: &Device, opc: OpcUaDevice) -> Self {
        let endpoint = pool.endpoint(&device.endpoint, &opc.security);
        let texts: Arc<[Arc<str>]> = opc.nodes.iter().map(|n| n.text().clone()).collect();
        metrics::gauge!(names::SUBSCRIPTIONS, "state" => "down").increment(1.0);
        Self {
            pool,
            endpoint,
            device: device.id.clone(),
            nodes: opc.nodes,
            texts,
            settings: opc.subscription,
            active: None,
            orphan: None,
            creating: None,
            cause: None,
            pending: Vec::new(),
            prepared: None,
            released: false,
        }
    }

    /// Why the active subscription must be set up again, if it must.
    fn check(&self, a: &Active) -> Option<Cause> {
        let quiet_for = a.heard.last().elapsed();
        if !a.live.is_alive() {
            Some(Cause::NewSession)
        } else if a.heard.ended().is_some() {
            Some(Cause::StatusChange)
        } else if a.live.subscriptions_lost.load(Ordering::Relaxed) > a.lost_seen
            // Corroborated by silence: a BadNoSubscription can also answer
            // a publish that raced a delete of another subscription.
            && quiet_for > a.revised.0.saturating_mul(2)
        {
            Some(Cause::LostOnServer)
        } else if quiet_for > a.bound {
            Some(Cause::Silent)
        } else {
            None
        }
    }

    /// Gives up the active subscription for `cause`: deletes it (unless
    /// its session is gone: then it may be transferred to the next one).
    async fn drop_active(&mut self, cause: Cause) {
        let Some(a) = self.active.take() else { return };
        metrics::gauge!(names::SUBSCRIPTIONS, "state" => "active").decrement(1.0);
        metrics::gauge!(names::SUBSCRIPTIONS, "state" => "down").increment(1.0);
        let device = &self.device;
        match cause {
            Cause::Silent => {
                tracing::warn!(%device, subscription = a.id, silent_for = ?a.heard.last().elapsed(), bound = ?a.bound, "subscription delivered nothing (not even a keep-alive) within its bound; recreating it")
            }
            Cause::StatusChange => {
                tracing::warn!(%device, subscription = a.id, status = ?a.heard.ended(), "the server ended the subscription; recreating it")
            }
            Cause::LostOnServer => {
                tracing::warn!(%device, subscription = a.id, "the server no longer knows this session's subscriptions; recreating it")
            }
            Cause::NewSession => {
                tracing::info!(%device, subscription = a.id, "session lost; the subscription moves to the next session")
            }
        }
        self.cause = Some(cause);
        if cause == Cause::NewSession {
            self.orphan = Some((a.live.generation, a.id, a.revised));
            return;
        }
        // Awaited, so the delete cannot overtake the next CreateSubscription.
        delete(&a.live, a.id, self.pool.config().read_timeout).await;
    }

    fn callback(
        &self,
        tx: mpsc::Sender<Vec<Sample>>,
        heard: Arc<Heard>,
        overflow: Arc<Overflow>,
    ) -> Notifications {
        Notifications {
            device: self.device.clone(),
            nodes: self.texts.clone(),
            tx,
            heard,
            overflow,
            metrics: CallbackMetrics::new(),
        }
    }
}

#[async_trait]
impl DeviceReader for OpcUaSubscriber {
    async fn prepare(&mut self) {
        if self.active.is_none()
            && self.prepared.is_none()
            && self.pool.needs_connect(&self.endpoint)
        {
            self.prepared = Some(self.pool.session(&self.endpoint).await);
        }
    }

    fn delivery(&self) -> Delivery {
        Delivery::Push
    }

    async fn read(&mut self) -> Result<Vec<Sample>, ReadError> {
        Err(ReadError::Config(format!(
            "device `{}` is subscribed (mode: subscribe); it is not read",
            self.device
        )))
    }

    async fn changes(&mut self) -> Result<Vec<Sample>, ReadError> {
        loop {
            if let Some(cause) = self.active.as_ref().and_then(|a| self.check(a)) {
                let bound = self.active.as_ref().map_or(MAX_BOUND, |a| a.bound);
                self.drop_active(cause).await;
                if cause == Cause::Silent {
                    // Costly for the breaker: a server that accepts
                    // subscriptions and never publishes is backed off.
                    return Err(ReadError::Timeout {
                        what: "subscription (no data, no keep-alive)",
                        after: bound,
                    });
                }
            }
            if self.active.is_none() {
                let live = match self.prepared.take() {
                    Some(prepared) => prepared?,
                    None => self.pool.session(&self.endpoint).await?,
                };
                self.establish(live).await?;
            }
            if !self.pending.is_empty() {
                return Ok(std::mem::take(&mut self.pending));
            }
            let Some(a) = self.active.as_mut() else {
                continue;
            };
            let now = Instant::now();
            let wake = a
                .heard
                .last()
                .checked_add(a.bound)
                .unwrap_or(now + MAX_BOUND)
                .min(now + a.check_every);
            let ended = a.live.ended.clone();
            tokio::select! {
                batch = a.rx.recv() => match batch {
                    Some(mut samples) => {
                        // What a full queue held back: newer than anything
                        // queued, so only once the queue is empty.
                        if a.rx.is_empty() {
                            samples.extend(a.overflow.take());
                        }
                        return Ok(samples);
                    }
                    // The library dropped the callback: the subscription
                    // is gone from the session; set up again after an
                    // interval (through the breaker), not at once.
                    None => {
                        self.drop_active(Cause::LostOnServer).await;
                        return Err(ReadError::Service(
                            "the subscription was dropped from the session".into(),
                        ));
                    }
                },
                _ = ended.cancelled() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn session_state(&self) -> SessionState {
        self.endpoint.state()
    }

    async fn close(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let timeout = self.pool.config().read_timeout;
        if let Some((live, id)) = self.creating.take() {
            delete(&live, id, timeout).await;
        }
        match self.active.take() {
            Some(a) => {
                metrics::gauge!(names::SUBSCRIPTIONS, "state" => "active").decrement(1.0);
                if a.live.is_alive() {
                    delete(&a.live, a.id, timeout).await;
                } else {
                    self.orphan = Some((a.live.generation, a.id, a.revised));
                }
            }
            None => metrics::gauge!(names::SUBSCRIPTIONS, "state" => "down").decrement(1.0),
        }
        // Lost with its session: delete it on the session now open (a
        // reactivated one may still hold it), unless none is.
        if let Some((_, id, _)) = self.orphan.take() {
            if self.endpoint.state() == SessionState::Connected {
                if let Ok(live) = self.pool.session(&self.endpoint).await {
                    delete(&live, id, timeout).await;
                }
            }
        }
        self.pool.release(&self.endpoint).await;
    }
}
