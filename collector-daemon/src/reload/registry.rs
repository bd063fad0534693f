//! The registry side of the reloader (`source: postgres`): the first
//! load, which the collector waits for, and the polls for this shard's
//! changes, applied through the same handover and reconcile as a file.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use collector_core::config::Device;

use super::{now_rfc3339, Reloader};

impl Reloader {
    /// What a registry replica counts as listed for the handovers: its new
    /// devices, and those it reads now (a device it reads now that the
    /// registry no longer lists is among `mine` if it is this shard's, so
    /// it stops; one of another shard hands over until its grace ends).
    pub(super) fn listed_with(&self, mine: &[Device]) -> Vec<Device> {
        let mut seen: HashSet<Arc<str>> = mine.iter().map(|d| d.id.clone()).collect();
        let mut listed = mine.to_vec();
        for d in self.mine.iter().chain(self.handovers.devices()) {
            if seen.insert(d.id.clone()) {
                listed.push(d.clone());
            }
        }
        listed
    }

    /// With a registry: reads this shard's devices until the registry
    /// answers (backing off), and hands them to the collector. False if
    /// `stop` came first.
    pub(crate) async fn first_load(&mut self, stop: impl std::future::Future<Output = ()>) -> bool {
        let shard = self.shard_of(&self.running);
        let Some(registry) = self.registry.as_mut() else {
            return true;
        };
        tokio::pin!(stop);
        loop {
            let started = Instant::now();
            let outcome = registry.sync(shard, &self.running, true).await;
            self.next_poll = Instant::now() + registry.next_in();
            let view = registry.view();
            self.status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .status
                .registry = Some(view.clone());
            if outcome.is_ok() {
                let mine = registry.devices(shard);
                tracing::info!(
                    shard = shard.index,
                    shards = shard.count,
                    rows = view.rows,
                    rejected = view.rejected,
                    devices = mine.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "device list loaded from the registry"
                );
                {
                    let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                    s.status.listed = view.rows;
                    s.status.devices = mine.len();
                    s.status.loaded_at = now_rfc3339();
                }
                self.mine = mine;
                return self.send();
            }
            tokio::select! {
                _ = &mut stop => return false,
                _ = tokio::time::sleep_until(self.next_poll.into()) => {}
            }
        }
    }

    /// Asks the registry for this shard's changes and applies them. False
    /// once the collector takes no more sets.
    pub(super) async fn poll_registry(&mut self) -> bool {
        let shard = self.shard_of(&self.running);
        let Some(registry) = self.registry.as_mut() else {
            return true;
        };
        let started = Instant::now();
        let outcome = registry.sync(shard, &self.running, false).await;
        self.next_poll = Instant::now() + registry.next_in();
        let view = registry.view();
        let mine = registry.devices(shard);
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .status
            .registry = Some(view.clone());
        if !matches!(outcome, Ok(true)) {
            return true;
        }
        let listed = self.listed_with(&mine);
        let running = self.running.clone();
        self.apply(
            &running,
            shard,
            mine,
            &listed,
            view.rows,
            "the registry changed",
            started,
        )
    }
}
