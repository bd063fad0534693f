//! The session keep-alive, ours rather than the library's: a Read of the
//! server's state only when nothing else proved the session alive within
//! `session.keep_alive_interval`. A successful Read of a device's nodes or
//! a Publish response is the same proof, so a device read every 10 s never
//! needs one; the library's timer sent one every interval regardless, a
//! quarter of all requests at 10 s reads and 30 s keep-alives.
//!
//! Past `session.max_failed_keep_alives` failures in a row the session's
//! event loop ends (see `connect`): the pool reconnects and resumes the
//! session on a new connection, as after a lost transport.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, QualifiedName, ReadValueId, StatusCode, TimestampsToReturn, VariableId,
};
use tokio::time::Instant;

/// When the session last proved alive; shared by the event loop and the
/// readers of the session (one atomic store per successful read).
#[derive(Debug)]
pub(crate) struct Liveness {
    base: Instant,
    /// Milliseconds since `base`.
    last_ms: AtomicU64,
}

impl Liveness {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// The server answered a request on this session just now.
    pub(crate) fn proven(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// What the keep-alive checks.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeepAlive {
    pub(super) interval: Duration,
    /// Failures in a row that end the session's loop; 0: never.
    pub(super) max_failed: u32,
    pub(super) timeout: Duration,
}

impl KeepAlive {
    /// Runs until `max_failed` keep-alives in a row failed; returns the
    /// last failure's status.
    pub(super) async fn run(self, session: Arc<Session>, liveness: Arc<Liveness>) -> StatusCode {
        let mut failed = 0u32;
        // After a failure the next try waits a whole interval, as the
        // library's timer did.
        let mut next = liveness.last().max(Instant::now()) + self.interval;
        loop {
            tokio::time::sleep_until(next).await;
            let due = liveness.last() + self.interval;
            if due > Instant::now() {
                // A read or publish proved it meanwhile (also after a
                // failed keep-alive: the session answers).
                failed = 0;
                next = due;
                continue;
            }
            match self.check(&session).await {
                Ok(()) => {
                    failed = 0;
                    liveness.proven();
                    next = Instant::now() + self.interval;
                }
                Err(code) => {
                    failed += 1;
                    tracing::debug!(%code, failed, "keep-alive failed");
                    if self.max_failed != 0 && failed >= self.max_failed {
                        return code;
                    }
                    next = Instant::now() + self.interval;
                }
            }
        }
    }

    /// Reads the server's state: Ok when it says Running (0).
    async fn check(&self, session: &Session) -> Result<(), StatusCode> {
        let state = ReadValueId {
            node_id: VariableId::Server_ServerStatus_State.into(),
            attribute_id: AttributeId::Value as u32,
            index_range: Default::default(),
            data_encoding: QualifiedName::null(),
        };
        let nodes = [state];
        let read = session.read(&nodes, TimestampsToReturn::Neither, 0.0);
        let values = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => return Err(e.status()),
            Err(_) => return Err(StatusCode::BadTimeout),
        };
        let value = values.into_iter().next().and_then(|dv| dv.value);
        match value.and_then(|v| v.try_cast_to::<i32>().ok()) {
            Some(0) => Ok(()),
            Some(_) => Err(StatusCode::BadServerHalted),
            None => Err(StatusCode::BadUnknownResponse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn liveness_moves_forward_only() {
        let l = Liveness::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        l.proven();
        let at = l.last();
        assert!(at >= l.base + Duration::from_secs(5));
        // A late store of an earlier time (another thread) cannot move it back.
        l.last_ms.fetch_max(1_000, Ordering::Relaxed);
        assert_eq!(l.last(), at);
    }
}
