//! Whether a sink's destination can take records, as last observed: one
//! typed state that readiness, the dispatcher and the replay all read, so
//! "healthy" and "accepting" cannot disagree.

#[cfg(feature = "kafka")]
use std::sync::atomic::{AtomicU8, Ordering};

/// A destination's reachability as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Not yet known (just started, no probe or delivery answered yet).
    /// Batches are sent, not spilled; `/readyz` waits.
    Unknown,
    /// The destination answered: batches are sent, replay runs.
    Up,
    /// The destination is known to be down: new batches go straight to the
    /// spill, replay pauses.
    Down,
}

impl Reachability {
    /// Ready to serve (`/readyz`) and to replay.
    pub fn is_up(self) -> bool {
        self == Reachability::Up
    }

    /// Worth sending new batches to (anything but known down).
    pub fn accepts(self) -> bool {
        self != Reachability::Down
    }

    #[cfg(feature = "kafka")]
    fn to_u8(self) -> u8 {
        match self {
            Reachability::Unknown => 0,
            Reachability::Up => 1,
            Reachability::Down => 2,
        }
    }

    #[cfg(feature = "kafka")]
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Reachability::Up,
            2 => Reachability::Down,
            _ => Reachability::Unknown,
        }
    }
}

/// A [`Reachability`] shared between threads (the producer's callbacks,
/// the probe, the pipeline).
#[cfg(feature = "kafka")]
#[derive(Debug)]
pub(crate) struct SharedReachability(AtomicU8);

#[cfg(feature = "kafka")]
impl SharedReachability {
    pub(crate) fn new(initial: Reachability) -> Self {
        Self(AtomicU8::new(initial.to_u8()))
    }

    pub(crate) fn get(&self) -> Reachability {
        Reachability::from_u8(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, r: Reachability) {
        self.0.store(r.to_u8(), Ordering::Relaxed);
    }

    /// Sets `r` and returns what it was.
    pub(crate) fn swap(&self, r: Reachability) -> Reachability {
        Reachability::from_u8(self.0.swap(r.to_u8(), Ordering::Relaxed))
    }
}

#[cfg(all(test, feature = "kafka"))]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_classifies() {
        let s = SharedReachability::new(Reachability::Unknown);
        for r in [Reachability::Up, Reachability::Down, Reachability::Unknown] {
            s.set(r);
            assert_eq!(s.get(), r);
        }
        assert_eq!(s.swap(Reachability::Down), Reachability::Unknown);
        assert!(Reachability::Unknown.accepts() && !Reachability::Unknown.is_up());
        assert!(!Reachability::Down.accepts() && Reachability::Up.is_up());
    }
}
