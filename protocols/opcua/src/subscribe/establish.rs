//! Setting a device's subscription up on a session: transferred from the
//! session it was on when the server still holds it, else created anew
//! with its monitored items, then registered with the watchdog.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use collector_core::metrics::names;
use collector_core::record::Sample;
use collector_core::ReadError;
use opcua::client::Subscription;
use tokio::sync::mpsc;

use super::notify::{self, Heard, Notifications, Overflow};
use super::{delete, items, session_gone, Active, Cause, OpcUaSubscriber, MAX_BOUND};
use crate::reader::node_id_of;
use crate::session::Live;

impl OpcUaSubscriber {
    /// Sets up the subscription on `live`: transferred from the lost
    /// session if possible, else created with its monitored items.
    pub(super) async fn establish(&mut self, live: Arc<Live>) -> Result<(), ReadError> {
        let timeout = self.pool.config().read_timeout;
        let (tx, rx) = mpsc::channel(notify::QUEUE);
        let heard = Heard::new();
        heard.reset();
        let overflow = Arc::new(Overflow::default());
        let lost_seen = live.subscriptions_lost.load(Ordering::Relaxed);
        if let Some((_, old_id, revised)) = self.orphan.take().filter(|o| o.0 != live.generation) {
            let callback = self.callback(tx.clone(), heard.clone(), overflow.clone());
            if self
                .transfer(&live, old_id, revised, callback, timeout)
                .await
            {
                self.activate(
                    live,
                    old_id,
                    rx,
                    overflow,
                    heard,
                    lost_seen,
                    revised,
                    "transferred",
                );
                return Ok(());
            }
        }
        let s = &self.settings;
        let callback = self.callback(tx, heard.clone(), overflow.clone());
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
            Ok(Err(e)) => {
                if session_gone(&e) {
                    self.pool.invalidate(&self.endpoint, live.generation).await;
                }
                return Err(ReadError::Service(format!("CreateSubscription: {e}")));
            }
            Err(_) => {
                self.pool.invalidate(&self.endpoint, live.generation).await;
                return Err(ReadError::Timeout {
                    what: "CreateSubscription",
                    after: timeout,
                });
            }
        };
        self.creating = Some((live.clone(), id));
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
        let mut refused = Vec::new();
        for (i, (node, item)) in self.nodes.iter().zip(&s.items).enumerate() {
            match node_id_of(node, &live) {
                Ok(id) => requests.push(items::request(id, i, item)),
                Err(code) => refused.push(items::refusal(&self.device, node.text(), code)),
            }
        }
        let created = match items::create(
            &live.session,
            id,
            requests,
            live.max_monitored_items_per_call,
            &self.device,
            &self.texts,
            timeout,
        )
        .await
        {
            Ok(more) => {
                refused.extend(more);
                Ok(())
            }
            Err(e) => Err(e),
        };
        let created = created.and_then(|()| {
            if refused.len() >= self.nodes.len() {
                Err(ReadError::Service(format!(
                    "the server refused to monitor every node of the device (first: {} {})",
                    refused.first().map_or("", |s| &s.node_id),
                    refused.first().map_or("", |s| s.status.name)
                )))
            } else {
                Ok(())
            }
        });
        self.creating = None;
        if let Err(e) = created {
            delete(&live, id, timeout).await;
            if matches!(e, ReadError::Timeout { .. }) {
                self.pool.invalidate(&self.endpoint, live.generation).await;
            }
            return Err(e);
        }
        self.pending.extend(refused);
        let cause = self.cause.map(Cause::label);
        self.activate(
            live,
            id,
            rx,
            overflow,
            heard,
            lost_seen,
            revised,
            cause.unwrap_or(""),
        );
        Ok(())
    }

    /// Moves `old_id` to `live`'s session: registered with the library
    /// first (a reactivated session may still hold it, and its next publish
    /// must find the callback), then TransferSubscriptions; on failure it
    /// is deleted there (and from the library's list).
    async fn transfer(
        &self,
        live: &Live,
        old_id: u32,
        revised: (Duration, u32, u32),
        callback: Notifications,
        timeout: Duration,
    ) -> bool {
        let (pi, ka, lifetime) = revised;
        let sub = Subscription::new(old_id, pi, lifetime, ka, 0, 0, true, Box::new(callback));
        live.session
            .subscription_state()
            .lock()
            .add_subscription(sub);
        let sent = tokio::time::timeout(
            timeout,
            live.session.transfer_subscriptions(&[old_id], true),
        )
        .await;
        let ok = matches!(&sent, Ok(Ok(r)) if r.first().is_some_and(|t| t.status_code.is_good()));
        if ok {
            live.session.trigger_publish_now();
            return true;
        }
        tracing::debug!(device = %self.device, subscription = old_id, result = ?sent.as_ref().map(|r| r.as_ref().map(|v| v.first().map(|t| t.status_code))), "subscription not transferred; creating a new one");
        delete(live, old_id, timeout).await;
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn activate(
        &mut self,
        live: Arc<Live>,
        id: u32,
        rx: mpsc::Receiver<Vec<Sample>>,
        overflow: Arc<Overflow>,
        heard: Arc<Heard>,
        lost_seen: u64,
        revised: (Duration, u32, u32),
        cause: &'static str,
    ) {
        let (pi, ka, _) = revised;
        let bound = pi
            .checked_mul(ka.saturating_add(1))
            .and_then(|b| b.checked_add(self.pool.config().read_timeout))
            .unwrap_or(MAX_BOUND)
            .min(MAX_BOUND);
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
            overflow,
            heard,
            bound,
            check_every: pi.clamp(Duration::from_secs(1), MAX_BOUND),
            lost_seen,
            revised,
        });
    }
}
