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
use std::sync::{Arc, OnceLock};
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

/// Keep-alives fall due on the points of one process-wide grid, so the
/// sessions due in the same step send theirs in one timer tick and share
/// the runtime's wake-ups (2,000 idle sessions at 30 s: 67 in one burst a
/// second, not one every 15 ms). The step is a tenth of the interval, at
/// most [`MAX_STEP`]: a keep-alive is at most that much later.
const MAX_STEP: Duration = Duration::from_secs(1);

/// The first point of the keep-alive grid for `interval` at or after `t`.
fn on_grid(t: Instant, interval: Duration) -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let step = (interval / 10).min(MAX_STEP);
    grid_point(*BASE.get_or_init(Instant::now), t, step)
}

/// The first point of the grid of `step` from `base` at or after `t`.
fn grid_point(base: Instant, t: Instant, step: Duration) -> Instant {
    let Some(since) = t.checked_duration_since(base) else {
        return t;
    };
    let grid = step.as_nanos().max(1);
    let slots = since.as_nanos().div_ceil(grid);
    base + Duration::from_nanos(u64::try_from(slots * grid).unwrap_or(u64::MAX))
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
        let mut next = on_grid(
            liveness.last().max(Instant::now()) + self.interval,
            self.interval,
        );
        loop {
            tokio::time::sleep_until(next).await;
            let due = liveness.last() + self.interval;
            if due > Instant::now() {
                // A read or publish proved it meanwhile (also after a
                // failed keep-alive: the session answers).
                failed = 0;
                next = on_grid(due, self.interval);
                continue;
            }
            match self.check(&session).await {
                Ok(()) => {
                    failed = 0;
                    liveness.proven();
                    next = on_grid(Instant::now() + self.interval, self.interval);
                }
                Err(code) => {
                    failed += 1;
                    tracing::debug!(%code, failed, "keep-alive failed");
                    if self.max_failed != 0 && failed >= self.max_failed {
                        return code;
                    }
                    next = on_grid(Instant::now() + self.interval, self.interval);
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

    #[test]
    fn keep_alives_fall_due_on_grid_points() {
        let base = Instant::now();
        let ms = |n| base + Duration::from_millis(n);
        let sec = Duration::from_secs(1);
        assert_eq!(grid_point(base, ms(300), sec), ms(1000));
        assert_eq!(grid_point(base, ms(900), sec), ms(1000));
        // A point on the grid stays; just past it, the next one.
        assert_eq!(grid_point(base, ms(1000), sec), ms(1000));
        assert_eq!(grid_point(base, ms(1001), sec), ms(2000));
        assert_eq!(grid_point(base, ms(30_400), sec), ms(31_000));
        assert_eq!(
            grid_point(base, ms(520), Duration::from_millis(50)),
            ms(550)
        );
        // Before the base: as it is.
        assert_eq!(grid_point(ms(5_000), base, sec), base);
        // The process-wide grid: a second at 30 s, 50 ms at 500 ms.
        let t = Instant::now() + Duration::from_millis(300);
        let at = on_grid(t, Duration::from_secs(30));
        assert!(at >= t && at < t + MAX_STEP);
        let at = on_grid(t, Duration::from_millis(500));
        assert!(at >= t && at < t + Duration::from_millis(50));
    }

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
