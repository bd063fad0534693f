//! The seam between the engine and a device protocol.
//!
//! The core owns *when* and *how many* (scheduler, worker pool, delivery);
//! an adapter owns *how*: sessions, reconnects, chunking, type mapping. The
//! OPC UA adapter lives in the `collector-opcua` crate; an embedder can
//! bring another protocol by implementing these two traits.

use async_trait::async_trait;

use crate::config::Device;
use crate::error::ReadError;
use crate::record::{Sample, Window};

use std::sync::Arc;
use tokio::sync::mpsc;

/// A protocol adapter: hands out one [`DeviceReader`] per device and owns
/// the sessions behind them.
#[async_trait]
pub trait Protocol: Send + Sync + 'static {
    /// Prepares reading `device`. Does no I/O: sessions open on the first
    /// read, so a device that is down at start does not delay the others.
    fn attach(&self, device: &Device) -> Result<Box<dyn DeviceReader>, ReadError>;

    /// Sessions currently connected (for the operator summary and metrics).
    fn connected_sessions(&self) -> usize;

    /// Closes every session cleanly. Called once, after every reader is
    /// closed, at shutdown.
    async fn shutdown(&self);
}

/// Reads one device. Owned by that device's schedule; never shared.
#[async_trait]
pub trait DeviceReader: Send {
    /// Called before a worker permit is taken for the next read: wait here
    /// for anything that should not hold a permit (e.g. a fleet-wide
    /// connect rate limit). Default: nothing.
    async fn prepare(&mut self) {}

    /// Reads every configured node once. `Ok` carries one sample per node
    /// in configuration order, Bad ones included; `Err` means no record.
    async fn read(&mut self) -> Result<Vec<Sample>, ReadError>;

    /// How this device's data arrives: read on the device's interval
    /// ([`Delivery::Poll`], the default) or pushed by the adapter
    /// ([`Delivery::Push`]: the core waits on [`DeviceReader::changes`]).
    fn delivery(&self) -> Delivery {
        Delivery::Poll
    }

    /// For [`Delivery::Push`]: waits for the next batch of changes (one
    /// record: the samples of one notification, in the order the server
    /// sent them), setting up what it needs (a session, a subscription)
    /// first. `Err` counts as a failed read against the device's breaker,
    /// and the next call starts over. Must be cancel-safe: a stop drops
    /// the future. The default refuses: a polled reader has no changes.
    async fn changes(&mut self) -> Result<Vec<Sample>, ReadError> {
        Err(ReadError::Config(
            "this device is polled; it pushes no changes".into(),
        ))
    }

    /// The device's history, when it is to be backfilled: the core then
    /// asks it for every gap in the device's reads (see [`History`]).
    /// Default: none (gaps are counted, not filled).
    fn history(&self) -> Option<Arc<dyn History>> {
        None
    }

    /// Releases this device's hold on its session.
    async fn close(&mut self);

    /// The session as seen for `/devices`; default [`SessionState::Unknown`].
    fn session_state(&self) -> SessionState {
        SessionState::Unknown
    }
}

/// A device's session (or connection) as its adapter sees it, for
/// `/devices` (serialized in snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The adapter does not say.
    Unknown,
    /// Being opened now.
    Connecting,
    /// Open and alive.
    Connected,
    /// Failed; the next attempt waits for its backoff.
    Backoff,
    /// Not open.
    Disconnected,
}

/// How a device's data reaches the core (serialized in snake case for
/// `/devices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The core reads every node on the device's interval.
    #[default]
    Poll,
    /// The adapter pushes changes (e.g. an OPC UA subscription); the core
    /// turns each batch into a record.
    Push,
}

/// A device's recent past as its server keeps it (OPC UA HistoryRead), for
/// filling a gap in its reads. Shared: the core reads it from a task of its
/// own, so live reads go on meanwhile.
#[async_trait]
pub trait History: Send + Sync {
    /// Sends the values every node had within `window` (source timestamps
    /// strictly inside it), in batches (one record each) to `out`, paced as
    /// the adapter sees fit; says what could not be filled.
    async fn backfill(&self, window: Window, out: mpsc::Sender<Vec<Sample>>) -> BackfillOutcome;
}

/// How a backfill ended.
#[derive(Debug, Default)]
pub struct BackfillOutcome {
    /// Values sent.
    pub values: u64,
    /// Parts of the window (or of single nodes' share of it) that will not
    /// be filled, and why.
    pub unrecoverable: Vec<Unrecoverable>,
}

/// A stretch of a gap that stays a gap.
#[derive(Debug, Clone)]
pub struct Unrecoverable {
    /// The part of the window not filled.
    pub window: Window,
    /// Why, a metric label: `beyond_max_window`, `no_history`, `failed`,
    /// `max_values`, `node_failed`, `stopped`.
    pub reason: &'static str,
    /// What to tell the operator (device-independent; the core adds the id).
    pub detail: String,
}
