//! The reconnect delay: exponential with jitter after slow failures, so
//! devices that failed together do not retry together; flat after fast
//! ones.

use std::time::Duration;

use crate::config::SessionConfig;
use rand::Rng;

/// Reconnect delay after `failures` consecutive failures: exponential from
/// `reconnect_initial`, capped at `reconnect_max`, with jitter in [50%, 100%]
/// so devices that failed together do not retry together.
pub(super) fn backoff(cfg: &SessionConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = cfg
        .reconnect_initial
        .saturating_mul(1u32 << exp)
        .min(cfg.reconnect_max);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    base.mul_f64(jitter)
}

/// Reconnect delay after a fast failure (refused, reset): `reconnect_initial`
/// with jitter in [50%, 100%], not escalating. The read schedule then
/// bounds the attempts: at most one per read.
pub(super) fn fast_backoff(cfg: &SessionConfig) -> Duration {
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    cfg.reconnect_initial.mul_f64(jitter)
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
