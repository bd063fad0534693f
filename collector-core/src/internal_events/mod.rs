//! Internal events, in the style of Vector's `internal_events`: one small
//! type per thing that happens, whose `emit()` records the fact everywhere
//! it is recorded (its metric where it has one, the in-process
//! [`Stats`](crate::metrics::Stats), the device board) and logs it where it
//! should. (Records delivered and failed have no core metric: the Kafka
//! sink counts its own acknowledgements; a custom sink's are in `Stats`.) Code that makes a fact
//! happen emits its event and does nothing else about it, so a counter and
//! its log line cannot drift apart.
//!
//! - [`schedule`]: ticks, reads and breaker transitions of one device
//!   (hot path: metric handles are registered once per device);
//! - [`delivery`]: records delivered, failed, spilled, replayed and lost;
//! - [`lifecycle`]: the collector started, shutting down, stopped.

pub(crate) mod delivery;
pub(crate) mod lifecycle;
pub(crate) mod schedule;
