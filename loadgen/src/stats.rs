//! Per-endpoint counters (sessions, connection attempts, reads, monitored items) that tests assert on,
//! their JSON rendering and the tiny HTTP server behind `opc-loadgen serve --stats-addr`.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{fault::Fault, sniff::SessionEvent, SimStats};

/// Live counters of one device endpoint, shared by its front, relays and node manager.
#[derive(Debug, Default)]
pub(crate) struct DeviceCounters {
    pub current_sessions: AtomicU64,
    pub peak_sessions: AtomicU64,
    pub sessions_created: AtomicU64,
    pub connection_attempts: AtomicU64,
    pub reads: AtomicU64,
    /// Read responses seen on the wire (also keep-alives and reads of server nodes).
    pub read_responses: AtomicU64,
    /// HistoryRead calls that reached the device's node manager.
    pub history_reads: AtomicU64,
    /// Values (DataValues) those HistoryRead calls returned.
    pub history_values: AtomicU64,
    pub listening: AtomicBool,
    /// Monitored items the device's server holds now.
    pub monitored_items: AtomicU64,
    /// Monitored items created since start.
    pub monitored_items_created: AtomicU64,
    /// Data changes handed to the server's subscriptions (one per monitored item).
    pub data_change_notifications: AtomicU64,
    /// Bytes the front relayed from clients to the device's server.
    pub bytes_from_clients: AtomicU64,
    /// Bytes the front relayed from the device's server to clients.
    pub bytes_to_clients: AtomicU64,
}

impl DeviceCounters {
    fn session_opened(&self) {
        let now = self.current_sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_sessions.fetch_max(now, Ordering::Relaxed);
    }

    fn sessions_gone(&self, n: u64) {
        if n > 0 {
            self.current_sessions.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// Sessions open on one relayed connection; gives them back when dropped (connection end).
pub(crate) struct ConnectionSessions<'a> {
    counters: &'a DeviceCounters,
    open: u64,
}

impl<'a> ConnectionSessions<'a> {
    pub fn new(counters: &'a DeviceCounters) -> Self {
        Self { counters, open: 0 }
    }

    /// Apply a session response seen on the connection.
    pub fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Created => {
                self.counters
                    .sessions_created
                    .fetch_add(1, Ordering::Relaxed);
                self.open += 1;
                self.counters.session_opened();
            }
            // A session created on an earlier connection, re-activated on this one after
            // a reconnect (a session's first activation follows its creation here).
            SessionEvent::Activated if self.open == 0 => {
                self.open = 1;
                self.counters.session_opened();
            }
            SessionEvent::Activated => {}
            SessionEvent::Closed if self.open > 0 => {
                self.open -= 1;
                self.counters.sessions_gone(1);
            }
            SessionEvent::Closed => {}
            SessionEvent::Read => {
                self.counters.read_responses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for ConnectionSessions<'_> {
    fn drop(&mut self) {
        self.counters.sessions_gone(self.open);
    }
}

/// Counters of one device endpoint; see [`crate::Simulator::device_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// Device index.
    pub index: u32,
    /// Device id (`dev-00042`).
    pub id: String,
    /// The faults injected into this device.
    pub faults: Vec<Fault>,
    /// Sessions open now on connections to the endpoint (see the README: counted on the
    /// wire, from CreateSession until CloseSession or the end of the connection).
    pub current_sessions: u64,
    /// Maximum of `current_sessions` since start.
    pub peak_sessions: u64,
    /// Successful CreateSession calls since start.
    pub sessions_created: u64,
    /// TCP connections accepted on the endpoint's port (for a dead device: accepted and
    /// reset; connections refused while a flapping device is down are not counted).
    pub connection_attempts: u64,
    /// Read service calls of the device's tags (reads of server nodes only, such as
    /// keep-alives, are in `read_responses`).
    pub reads: u64,
    /// Read responses the device sent, counted on the wire: `reads` plus the Reads
    /// of server nodes (a client's keep-alives, its reads at connect). Seen only
    /// on sessions with security mode None (signed or encrypted traffic is not
    /// decoded: 0 there).
    pub read_responses: u64,
    /// HistoryRead calls answered by the device (calls that only release continuation
    /// points are answered by async-opcua and not counted).
    pub history_reads: u64,
    /// Values (DataValues, Bad entries of bad tags included) returned by those calls.
    pub history_values: u64,
    /// Sessions held by async-opcua's session manager (also those whose connection
    /// dropped, until they time out); 0 for a dead device.
    pub server_sessions: u64,
    /// Whether the port accepts connections now (false for a flapping device while down).
    pub listening: bool,
    /// Current namespace index of the device tags (2, or 3 after a shifting restart).
    pub namespace_index: u16,
    /// Monitored items the device's server holds now (all sessions and subscriptions).
    pub monitored_items: u64,
    /// Monitored items successfully created since start.
    pub monitored_items_created: u64,
    /// Data changes the device handed to its subscriptions since start, one per
    /// monitored item and change (initial values not included); see the README.
    pub data_change_notifications: u64,
    /// Bytes relayed from clients to the device (OPC UA over TCP, as on the wire,
    /// without TCP/IP headers) since start, over all its connections.
    pub bytes_from_clients: u64,
    /// Bytes relayed from the device to clients since start (as
    /// `bytes_from_clients`; after a `hostile` or `mute` rewrite, what was sent).
    pub bytes_to_clients: u64,
}

impl DeviceStats {
    pub(crate) fn from_counters(
        index: u32,
        faults: &[Fault],
        c: &DeviceCounters,
        server_sessions: u64,
        namespace_index: u16,
    ) -> Self {
        DeviceStats {
            index,
            id: crate::model::device_id(index),
            faults: faults.to_vec(),
            current_sessions: c.current_sessions.load(Ordering::Relaxed),
            peak_sessions: c.peak_sessions.load(Ordering::Relaxed),
            sessions_created: c.sessions_created.load(Ordering::Relaxed),
            connection_attempts: c.connection_attempts.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            read_responses: c.read_responses.load(Ordering::Relaxed),
            history_reads: c.history_reads.load(Ordering::Relaxed),
            history_values: c.history_values.load(Ordering::Relaxed),
            server_sessions,
            listening: c.listening.load(Ordering::Relaxed),
            namespace_index,
            monitored_items: c.monitored_items.load(Ordering::Relaxed),
            monitored_items_created: c.monitored_items_created.load(Ordering::Relaxed),
            data_change_notifications: c.data_change_notifications.load(Ordering::Relaxed),
            bytes_from_clients: c.bytes_from_clients.load(Ordering::Relaxed),
            bytes_to_clients: c.bytes_to_clients.load(Ordering::Relaxed),
        }
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The JSON document served at `GET /stats`.
pub(crate) fn render_json(total: &SimStats, devices: &[DeviceStats]) -> String {
    let mut out = String::with_capacity(256 + devices.len() * 256);
    let _ = write!(
        out,
        "{{\"devices\":{},\"open_sessions\":{},\"total_sessions\":{},\"reads\":{},\
         \"nodes_read\":{},\"peak_sessions_per_endpoint\":{},\"connection_attempts\":{},\
         \"monitored_items\":{},\"data_change_notifications\":{},\"bytes_from_clients\":{},\
         \"bytes_to_clients\":{},\"per_device\":[",
        total.devices,
        total.open_sessions,
        total.total_sessions,
        total.reads,
        total.nodes_read,
        total.peak_sessions_per_endpoint,
        total.connection_attempts,
        total.monitored_items,
        total.data_change_notifications,
        total.bytes_from_clients,
        total.bytes_to_clients
    );
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"index\":{},\"id\":", d.index);
        json_string(&mut out, &d.id);
        out.push_str(",\"faults\":[");
        for (j, f) in d.faults.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            json_string(&mut out, &f.to_string());
        }
        let _ = write!(
            out,
            "],\"current_sessions\":{},\"peak_sessions\":{},\"sessions_created\":{},\
             \"connection_attempts\":{},\"reads\":{},\"read_responses\":{},\"history_reads\":{},\
             \"history_values\":{},\"server_sessions\":{},\"listening\":{},\
             \"namespace_index\":{},\"monitored_items\":{},\"monitored_items_created\":{},\
             \"data_change_notifications\":{},\"bytes_from_clients\":{},\"bytes_to_clients\":{}}}",
            d.current_sessions,
            d.peak_sessions,
            d.sessions_created,
            d.connection_attempts,
            d.reads,
            d.read_responses,
            d.history_reads,
            d.history_values,
            d.server_sessions,
            d.listening,
            d.namespace_index,
            d.monitored_items,
            d.monitored_items_created,
            d.data_change_notifications,
            d.bytes_from_clients,
            d.bytes_to_clients
        );
    }
    out.push_str("]}\n");
    out
}

/// Serve `GET /stats` (the JSON of `render`) on `listener` until `token` is cancelled.
pub(crate) async fn serve_http(
    listener: TcpListener,
    token: CancellationToken,
    render: impl Fn() -> String + Send + Sync + 'static,
) {
    let render = std::sync::Arc::new(render);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = token.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let render = render.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        r = answer(stream, &*render) => {
                            if let Err(e) = r {
                                debug!("stats request failed: {e}");
                            }
                        }
                        _ = token.cancelled() => {}
                    }
                });
            }
            Err(e) => {
                debug!("stats accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Answer one HTTP/1.1 request and close the connection.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read_head = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .is_err()
    {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/stats") => ("200 OK", "application/json", render()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try GET /stats\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /stats\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
