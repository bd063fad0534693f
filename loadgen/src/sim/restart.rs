//! Restarting one device's server behind its port, optionally with the device
//! namespace shifted to another index (to test namespace re-resolution).

use std::{sync::atomic::Ordering, time::Instant};

use tracing::{info, warn};

use crate::{model, SimError};

use super::{
    server::{start_server, stop_server, wait_listening},
    Simulator, SHUTDOWN_TIMEOUT, STARTUP_TIMEOUT,
};

/// Device namespace index after [`Simulator::restart_device`] with `shift_namespace`.
const SHIFTED_NAMESPACE_INDEX: u16 = model::DEVICE_NAMESPACE_INDEX + 1;

impl Simulator {
    /// Current namespace index of the tags of device `index`: [`model::DEVICE_NAMESPACE_INDEX`]
    /// (2), or 3 after [`Simulator::restart_device`] with `shift_namespace`.
    /// `None` for an index outside the simulator.
    pub fn namespace_index(&self, index: u32) -> Option<u16> {
        self.slot(index)
            .ok()
            .map(|s| s.namespace_index.load(Ordering::Relaxed))
    }

    /// Restart the server of device `index`: drop its connections, stop it, and start it
    /// again behind the same port. With `shift_namespace` the namespace array gets a
    /// placeholder URI before the device namespace, so the tags move to `ns=3` and
    /// `ns=2;s=TagNNN` answers `BadNodeIdUnknown`; without, they are (back) at `ns=2`.
    ///
    /// Counters of the device carry over; sessions do not (the new server has none).
    /// A dead device stays dead (only its namespace index is recorded).
    pub async fn restart_device(&self, index: u32, shift_namespace: bool) -> Result<(), SimError> {
        let slot = self.slot(index)?;
        let _serial = slot.restart.lock().await;
        let namespace = if shift_namespace {
            SHIFTED_NAMESPACE_INDEX
        } else {
            model::DEVICE_NAMESPACE_INDEX
        };
        slot.namespace_index.store(namespace, Ordering::Relaxed);
        if slot.is_dead() {
            return Ok(());
        }
        slot.front.set_target(None);
        slot.front.drop_connections();
        let old = slot.server().take();
        if let Some(old) = old {
            if stop_server(old, tokio::time::Instant::now() + SHUTDOWN_TIMEOUT).await {
                warn!(index, "device server did not stop in time and was aborted");
            }
        }
        let server = start_server(
            &self.inner.cfg,
            &self.inner.fleet,
            index,
            slot.public_port,
            &slot.faults,
            &slot.counters,
            namespace,
        )
        .await?;
        if let Err(e) = wait_listening(&server, index, Instant::now() + STARTUP_TIMEOUT).await {
            server.handle.cancel();
            return Err(e);
        }
        slot.front.set_target(Some(server.addr));
        *slot.server() = Some(server);
        info!(index, namespace, "device restarted");
        Ok(())
    }
}
