//! The session pool: at most one OPC UA session per endpoint, opened on
//! first use, shared by every device on that endpoint, re-opened by us (not
//! by the library's hidden retry loop) with exponential backoff and jitter,
//! under a fleet-wide connect rate limit.
//!
//! The library's event loop is driven here with reconnects disabled: when
//! the transport drops, or keep-alives fail, the loop ends, the session is
//! marked dead and the next read opens a new one after its backoff. So
//! every connection attempt passes through one place that counts it.
//!
//! Split by concept: `endpoint` (one endpoint's session slot and the live
//! session in it), `pool` (the pool, its gauges and the connect/backoff
//! state machine), `connect` (opening one session), `namespaces` (the
//! server's namespace array and configured `ns=` indexes), `backoff`, and
//! `false_alarms` (the library's ERROR lines that security None is not),
//! `wire` (the TCP connection, every incoming chunk header checked),
//! `transport` (requests out and responses in over it, holding a send
//! buffer only while a request is being sent) and `responses` (the
//! requests in flight, their responses decoded; Read responses without the
//! library's timestamp arithmetic).

mod backoff;
mod connect;
mod endpoint;
mod false_alarms;
mod keep_alive;
mod namespaces;
mod pool;
mod responses;
mod transport;
mod wire;

pub(crate) use endpoint::{Endpoint, Live};
pub(crate) use false_alarms::without_false_alarms;
pub(crate) use pool::Pool;
pub(crate) use wire::RECEIVE_CHUNK_SIZE;

/// Upper bound on monitored items per CreateMonitoredItems request, also
/// when the server states no limit: a 10,000-node device's subscription
/// is created in requests of a size every server takes.
pub(crate) const MONITORED_ITEMS_PER_CALL_CAP: usize = 1000;
