//! The per-device circuit breaker: a device whose failures are costly
//! (timeouts that hold a worker permit or a connection, refusals that need
//! a fix) stops being read for a while, and is probed again, one read at a
//! time, after a cool-down that grows exponentially (with jitter) while it
//! stays broken.
//!
//! Failures are judged by what they cost ([`FailureCost`]): a refused or
//! reset connection costs almost nothing, and a device on a flaky link
//! that answered a moment ago deserves its next read. Cheap failures never
//! open the breaker (the adapter's reconnect delay bounds them to one
//! attempt per read), and a probe that fails cheaply closes it. A success
//! resets everything.
//!
//! ```text
//! Closed --N consecutive costly failures--> Open --cool-down--> HalfOpen
//!   ^                                         ^                    |
//!   +------- success or cheap failure --------|-- costly failure --+
//! ```

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::error::FailureCost;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Reads go ahead.
    Closed,
    /// Reads are skipped until the cool-down ends.
    Open,
    /// One probe read is allowed; its outcome closes or re-opens.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case label for metrics and `/devices`.
    pub fn label(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says about a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Read normally.
    Read,
    /// Read as the half-open probe.
    Probe,
    /// Skip this tick.
    Skip,
}

/// One device's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    /// Consecutive costly failures (what opens the breaker).
    costly_failures: u32,
    /// How many times in a row it opened (drives the cool-down growth).
    trips: u32,
    open_until: Instant,
    probe_in_flight: bool,
}

impl Breaker {
    pub(crate) fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            costly_failures: 0,
            trips: 0,
            open_until: Instant::now(),
            probe_in_flight: false,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Whether a tick at `now` may read. At most one probe is admitted
    /// while half-open, until its outcome is recorded.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            BreakerState::Closed => Admit::Read,
            BreakerState::Open if now >= self.open_until => {
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                Admit::Probe
            }
            BreakerState::Open => Admit::Skip,
            BreakerState::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                Admit::Probe
            }
            BreakerState::HalfOpen => Admit::Skip,
        }
    }

    /// Records a successful read; returns the previous state.
    pub(crate) fn success(&mut self) -> BreakerState {
        let prev = self.state;
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.costly_failures = 0;
        self.trips = 0;
        self.probe_in_flight = false;
        prev
    }

    /// Records a failed read at `now` that cost `cost`; returns the
    /// previous state.
    pub(crate) fn failure(&mut self, now: Instant, cost: FailureCost) -> BreakerState {
        let prev = self.state;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.probe_in_flight = false;
        if cost == FailureCost::Cheap {
            if self.state == BreakerState::HalfOpen {
                // The device answers, and quickly: read it again.
                self.state = BreakerState::Closed;
            }
            return prev;
        }
        self.costly_failures = self.costly_failures.saturating_add(1);
        let trip = match self.state {
            BreakerState::Closed => self.costly_failures >= self.cfg.failure_threshold,
            BreakerState::HalfOpen | BreakerState::Open => true,
        };
        if trip {
            self.state = BreakerState::Open;
            self.open_until = now + self.cooldown();
            self.trips = self.trips.saturating_add(1);
        }
        prev
    }

    /// The cool-down for the current trip: `cooldown_initial` doubled per
    /// consecutive trip, capped at `cooldown_max`, times a jitter in
    /// [80 %, 120 %] so devices that broke together do not probe together.
    fn cooldown(&self) -> Duration {
        let base = self
            .cfg
            .cooldown_initial
            .saturating_mul(1u32 << self.trips.min(20))
            .min(self.cfg.cooldown_max);
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            cooldown_initial: Duration::from_secs(10),
            cooldown_max: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_closes_on_probe_success() {
        let mut b = Breaker::new(cfg());
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t), Admit::Read);
            b.failure(t, FailureCost::Costly);
            assert_eq!(b.state(), BreakerState::Closed);
        }
        assert_eq!(b.admit(t), Admit::Read);
        b.failure(t, FailureCost::Costly);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.admit(t + Duration::from_secs(7)),
            Admit::Skip,
            "inside the cool-down"
        );
        assert_eq!(
            b.admit(t + Duration::from_secs(13)),
            Admit::Probe,
            "after the cool-down (<= 12 s)"
        );
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.success(), BreakerState::HalfOpen);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    /// Refused or reset connections never open the breaker, however many;
    /// a costly failure still counts toward it, and a cheap probe closes it.
    #[tokio::test(start_paused = true)]
    async fn cheap_failures_never_open_the_breaker() {
        let mut b = Breaker::new(cfg());
        let t = Instant::now();
        for _ in 0..50 {
            assert_eq!(b.admit(t), Admit::Read);
            b.failure(t, FailureCost::Cheap);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 50);
        for _ in 0..3 {
            b.failure(t, FailureCost::Costly);
        }
        assert_eq!(b.state(), BreakerState::Open, "three timeouts in a row");
        let later = t + Duration::from_secs(13);
        assert_eq!(b.admit(later), Admit::Probe);
        b.failure(later, FailureCost::Cheap);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a probe refused at once closes it"
        );
        assert_eq!(b.admit(later), Admit::Read);
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_probe_at_a_time() {
        let mut b = Breaker::new(cfg());
        let t = Instant::now();
        for _ in 0..3 {
            b.failure(t, FailureCost::Costly);
        }
        let later = t + Duration::from_secs(30);
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(
            b.admit(later),
            Admit::Skip,
            "a second probe while the first is out"
        );
        assert_eq!(b.admit(later + Duration::from_secs(1)), Admit::Skip);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_with_a_longer_cooldown_up_to_max() {
        let mut b = Breaker::new(cfg());
        let mut t = Instant::now();
        for _ in 0..3 {
            b.failure(t, FailureCost::Costly);
        }
        // Trip k waits cooldown_initial * 2^(k-1) (+-20 %), capped at 60 s.
        let mut waits = Vec::new();
        for _ in 0..5 {
            let mut waited = Duration::ZERO;
            while b.admit(t + waited) != Admit::Probe {
                waited += Duration::from_millis(100);
            }
            waits.push(waited);
            t += waited;
            b.failure(t, FailureCost::Costly);
            assert_eq!(b.state(), BreakerState::Open);
        }
        let secs: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
        assert!((8.0..=12.1).contains(&secs[0]), "{secs:?}");
        assert!((16.0..=24.1).contains(&secs[1]), "{secs:?}");
        assert!((32.0..=48.1).contains(&secs[2]), "{secs:?}");
        assert!(secs[3] <= 72.1 && secs[4] <= 72.1, "capped: {secs:?}");
    }
}
