//! `session:` — how OPC UA sessions are opened and read.

use std::time::Duration;

use collector_core::config::{byte_size, duration};
use serde::Deserialize;

/// `session:` — how device sessions are opened and read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Time allowed to open a session (TCP, secure channel, session
    /// activation, namespace and limit discovery). Default `10s`.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one read request. Default `5s`.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// Session keep-alive period: a Read of the server's state when no
    /// other request proved the session alive for this long (a device read
    /// more often than this never sends one); a dead-but-open connection
    /// is detected after `max_failed_keep_alives` missed ones. Keep-alives
    /// fall due on a grid of a tenth of this (at most 1 s), so the sessions
    /// due together send theirs together. Default `30s`.
    #[serde(with = "duration")]
    pub keep_alive_interval: Duration,
    /// Failed keep-alives before a session is dropped. Default 2.
    pub max_failed_keep_alives: u32,
    /// Upper bound on nodes per Read request; the server's own
    /// MaxNodesPerRead (read at connect) is honoured when smaller. 0 = only
    /// the server's limit. Default 1000.
    pub max_nodes_per_read: u32,
    /// Fleet-wide cap on session attempts per second (all devices
    /// together), so a mass reconnect never storms the network. Default 50.
    pub max_connects_per_second: u32,
    /// Initial delay before reconnecting a failed endpoint; doubles per
    /// failure, with jitter. Default `1s`.
    #[serde(with = "duration")]
    pub reconnect_initial: Duration,
    /// Upper bound of the reconnect delay after slow failures (connect
    /// timeouts, security refusals). Fast failures (connection refused or
    /// reset) do not escalate: they retry after `reconnect_initial`, i.e. at
    /// most once per read interval. Default `60s`.
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// The session timeout requested from servers: how long a server keeps
    /// a session whose connection was lost. Within it the collector
    /// reactivates the same session on a new connection; after it, the
    /// server drops the session (so a session left behind on a PLC dies
    /// this fast). Must exceed `keep_alive_interval`. Default `45s`.
    #[serde(with = "duration")]
    pub session_timeout: Duration,
    /// OPC UA application name presented to servers. Default `opc-collector`.
    pub application_name: String,
    /// The largest response accepted from a server, told to it in the
    /// handshake (a server answers a larger one with an error). A broken or
    /// hostile server that sends more anyway is cut off as its chunks pass
    /// it, so one session can make the collector buffer at most this. Raise
    /// it for reads of very large arrays. Default `16MiB`.
    #[serde(deserialize_with = "byte_size")]
    pub max_message_size: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(30),
            max_failed_keep_alives: 2,
            max_nodes_per_read: 1000,
            max_connects_per_second: 50,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            session_timeout: Duration::from_secs(45),
            application_name: "opc-collector".to_string(),
            max_message_size: 16 * 1024 * 1024,
        }
    }
}
