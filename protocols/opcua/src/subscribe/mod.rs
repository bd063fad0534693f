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
//! StatusChangeNotification, publishes answered BadNoSubscription). If
//! not, it is recreated (and its session, when that is gone too), counted
//! by cause and logged with the device id. After a new session the old
//! subscription is transferred when the server allows it, otherwise
//! recreated. Set-up failures go through the device's breaker and the
//! pool's backoff and connect rate limit, as reads do.

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
use opcua::client::Subscription;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{NodeAddress, OpcUaDevice, SubscriptionSettings};
use crate::reader::node_id_of;
use crate::session::{Endpoint, Live, Pool};
use notify::{CallbackMetrics, Heard, Notifications};

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
    /// Why the next set-up happens, for its count (None: the first).
    cause: Option<Cause>,
    /// Bad samples of nodes that cannot be monitored, delivered as the
    /// first record after a set-up.
    pending: Vec<Sample>,
    prepared: Option<Result<Arc<Live>, ReadError>>,
    released: bool,
}

impl OpcUaSubscriber {
    pub(crate) fn new(pool: Arc<Pool>, device: &Device, opc: OpcUaDevice) -> Self {
        let endpoint = pool.endpoint(&device.endpoint, &opc.security);
        let texts: Arc<[Arc<str>]> = opc.nodes.iter().map(|n| n.text.clone()).collect();
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
            cause: None,
            pending: Vec::new(),
            prepared: None,
            released: false,
        }
    }

    /// Why the active subscription must be set up again, if it must.
    fn check(&self, a: &Active) -> Option<Cause> {
        if !a.live.is_alive() {
            Some(Cause::NewSession)
        } else if a.heard.ended().is_some() {
            Some(Cause::StatusChange)
        } else if a.live.subscriptions_lost.load(Ordering::Relaxed) > a.lost_seen {
            Some(Cause::LostOnServer)
        } else if Instant::now() > a.heard.last() + a.bound {
            Some(Cause::Silent)
        } else {
            None
        }
    }

    /// Gives up the active subscription for `cause`; deletes it on the
    /// server in the background unless its session is gone (then it may
    /// be transferred to the next one).
    fn drop_active(&mut self, cause: Cause) {
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
        let session = a.live.session.clone();
        let timeout = self.pool.config().read_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, session.delete_subscriptions(&[a.id])).await;
        });
    }

    fn callback(&self, tx: mpsc::Sender<Vec<Sample>>, heard: Arc<Heard>) -> Notifications {
        Notifications {
            device: self.device.clone(),
            nodes: self.texts.clone(),
            tx,
            heard,
            metrics: CallbackMetrics::new(),
        }
    }

    /// Sets up the subscription on `live`: transferred from the lost
    /// session if possible, else created with its monitored items.
    async fn establish(&mut self, live: Arc<Live>) -> Result<(), ReadError> {
        let timeout = self.pool.config().read_timeout;
        let (tx, rx) = mpsc::channel(notify::QUEUE);
        let heard = Heard::new();
        heard.reset();
        let lost_seen = live.subscriptions_lost.load(Ordering::Relaxed);
        let orphan = self.orphan.take();
        if let Some((_, old_id, revised)) = orphan.filter(|o| o.0 != live.generation) {
            if self
                .transfer(&live, old_id, revised, tx.clone(), heard.clone(), timeout)
                .await
            {
                self.activate(live, old_id, rx, heard, lost_seen, revised, "transferred");
                return Ok(());
            }
        }
        let s = &self.settings;
        let callback = self.callback(tx, heard.clone());
        let created = tokio::time::timeout(
            timeout,
            live.session.create_subscription(
                s.publishing_interval,
                s.lifetime_count,
                s.keep_alive_count,
                0,
                0,
                true,
                callback,
            ),
        )
        .await;
        let id = match created {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => return Err(ReadError::Service(format!("CreateSubscription: {e}"))),
            Err(_) => {
                self.pool.invalidate(&self.endpoint, live.generation).await;
                return Err(ReadError::Timeout {
                    what: "CreateSubscription",
                    after: timeout,
                });
            }
        };
        let revised = {
            let state = live.session.subscription_state().lock();
            state.get(id).map_or(
                (s.publishing_interval, s.keep_alive_count, s.lifetime_count),
                |sub| {
                    (
                        sub.publishing_interval(),
                        sub.max_keep_alive_count(),
                        sub.lifetime_count(),
                    )
                },
            )
        };
        let mut requests = Vec::with_capacity(self.nodes.len());
        for (i, (node, item)) in self.nodes.iter().zip(&s.items).enumerate() {
            match node_id_of(node, &live) {
                Ok(id) => requests.push(items::request(id, i, item)),
                Err(code) => self
                    .pending
                    .push(items::refusal(&self.device, &node.text, code)),
            }
        }
        let refused = items::create(
            &live.session,
            id,
            requests,
            live.max_monitored_items_per_call,
            &self.device,
            &self.texts,
            timeout,
        )
        .await;
        match refused {
            Ok(refused) => self.pending.extend(refused),
            Err(e) => {
                self.pending.clear();
                let session = live.session.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(timeout, session.delete_subscriptions(&[id])).await;
                });
                if matches!(e, ReadError::Timeout { .. }) {
                    self.pool.invalidate(&self.endpoint, live.generation).await;
                }
                return Err(e);
            }
        }
        let cause = self.cause.map(Cause::label);
        self.activate(live, id, rx, heard, lost_seen, revised, cause.unwrap_or(""));
        Ok(())
    }

    /// TransferSubscriptions of `old_id` to `live`'s session; registers it
    /// with the library on success.
    async fn transfer(
        &self,
        live: &Live,
        old_id: u32,
        revised: (Duration, u32, u32),
        tx: mpsc::Sender<Vec<Sample>>,
        heard: Arc<Heard>,
        timeout: Duration,
    ) -> bool {
        let sent = tokio::time::timeout(
            timeout,
            live.session.transfer_subscriptions(&[old_id], true),
        )
        .await;
        let ok = matches!(&sent, Ok(Ok(r)) if r.first().is_some_and(|t| t.status_code.is_good()));
        if !ok {
            tracing::debug!(device = %self.device, subscription = old_id, result = ?sent.as_ref().map(|r| r.as_ref().map(|v| v.first().map(|t| t.status_code))), "subscription not transferred; creating a new one");
            return false;
        }
        let (pi, ka, lifetime) = revised;
        let sub = Subscription::new(
            old_id,
            pi,
            lifetime,
            ka,
            0,
            0,
            true,
            Box::new(self.callback(tx, heard)),
        );
        live.session
            .subscription_state()
            .lock()
            .add_subscription(sub);
        live.session.trigger_publish_now();
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn activate(
        &mut self,
        live: Arc<Live>,
        id: u32,
        rx: mpsc::Receiver<Vec<Sample>>,
        heard: Arc<Heard>,
        lost_seen: u64,
        revised: (Duration, u32, u32),
        cause: &'static str,
    ) {
        let (pi, ka, _) = revised;
        let bound = pi * (ka.saturating_add(1)) + self.pool.config().read_timeout;
        if !cause.is_empty() {
            metrics::counter!(names::SUBSCRIPTION_RECREATIONS, "cause" => cause).increment(1);
            tracing::info!(device = %self.device, subscription = id, cause, "subscription set up again");
        }
        self.cause = None;
        metrics::gauge!(names::SUBSCRIPTIONS, "state" => "down").decrement(1.0);
        metrics::gauge!(names::SUBSCRIPTIONS, "state" => "active").increment(1.0);
        self.active = Some(Active {
            live,
            id,
            rx,
            heard,
            bound,
            check_every: pi.max(Duration::from_secs(1)),
            lost_seen,
            revised,
        });
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
                self.drop_active(cause);
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
            let wake = (a.heard.last() + a.bound).min(Instant::now() + a.check_every);
            tokio::select! {
                batch = a.rx.recv() => match batch {
                    Some(samples) => return Ok(samples),
                    // The library dropped the callback: the subscription
                    // is gone from the session.
                    None => self.drop_active(Cause::LostOnServer),
                },
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
        match self.active.take() {
            Some(a) => {
                metrics::gauge!(names::SUBSCRIPTIONS, "state" => "active").decrement(1.0);
                if a.live.is_alive() {
                    let timeout = self.pool.config().read_timeout;
                    let _ =
                        tokio::time::timeout(timeout, a.live.session.delete_subscriptions(&[a.id]))
                            .await;
                }
            }
            None => metrics::gauge!(names::SUBSCRIPTIONS, "state" => "down").decrement(1.0),
        }
        self.pool.release(&self.endpoint).await;
    }
}
