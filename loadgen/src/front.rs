//! The public TCP port of a device: accepts connections and relays them to the device's
//! async-opcua server, which listens on an internal loopback port.
//!
//! Owning the accept loop is what lets the simulator count connection attempts and
//! open sessions per endpoint (async-opcua has no hooks for either), play dead devices
//! (accept and reset), flap (close the port and drop connections, then listen again on
//! the same port), rewrite responses (`hostile`, `mute`) and restart a device's server
//! behind an unchanged port.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    hostile::{self, Hostile},
    mute::{self, MuteWindow},
    sniff::ChunkScanner,
    stats::{ConnectionSessions, DeviceCounters},
};

/// How the port behaves.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FrontMode {
    /// Accept and reset every connection.
    pub dead: bool,
    /// `(up, down, first_up_extra)`: listen for `up` (the first time `up +
    /// first_up_extra`), then close the port and drop all connections for `down`.
    pub flap: Option<(Duration, Duration, Duration)>,
    /// Replace every Read response (the handshake passes).
    pub hostile: Option<Hostile>,
    /// Replace every Publish response during this window (ignored with `hostile`).
    pub mute: Option<MuteWindow>,
}

struct Shared {
    addr: SocketAddr,
    counters: Arc<DeviceCounters>,
    /// Internal address of the device's server; `None` while it is restarting.
    target: Mutex<Option<SocketAddr>>,
    /// Cancelled to drop every relayed connection, then replaced.
    epoch: Mutex<CancellationToken>,
    stop: CancellationToken,
}

impl Shared {
    fn epoch(&self) -> CancellationToken {
        self.epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The public side of one device.
pub(crate) struct Front {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Front {
    /// Start serving `listener` (the device's public port), relaying to `target`.
    pub fn spawn(
        listener: TcpListener,
        addr: SocketAddr,
        target: Option<SocketAddr>,
        mode: FrontMode,
        counters: Arc<DeviceCounters>,
        stop: CancellationToken,
    ) -> Front {
        let shared = Arc::new(Shared {
            addr,
            counters,
            target: Mutex::new(target),
            epoch: Mutex::new(stop.child_token()),
            stop,
        });
        shared.counters.listening.store(true, Ordering::Relaxed);
        let task = tokio::spawn(run(shared.clone(), listener, mode));
        Front {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Relay new connections to `target` (`None`: close them at once).
    pub fn set_target(&self, target: Option<SocketAddr>) {
        *self
            .shared
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = target;
    }

    /// Drop every connection relayed so far.
    pub fn drop_connections(&self) {
        drop_connections(&self.shared);
    }

    /// The accept loop's task, once (for shutdown).
    pub fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

fn drop_connections(shared: &Shared) {
    let mut epoch = shared.epoch.lock().unwrap_or_else(PoisonError::into_inner);
    epoch.cancel();
    *epoch = shared.stop.child_token();
}

async fn run(shared: Arc<Shared>, listener: TcpListener, mode: FrontMode) {
    let Some((up, down, first_extra)) = mode.flap else {
        tokio::select! {
            _ = accept_loop(&shared, &listener, mode) => {}
            _ = shared.stop.cancelled() => {}
        }
        shared.counters.listening.store(false, Ordering::Relaxed);
        return;
    };
    let mut listener = Some(listener);
    let mut up_for = up + first_extra;
    loop {
        let current = match listener.take() {
            Some(l) => l,
            None => match rebind(&shared).await {
                Some(l) => l,
                None => return,
            },
        };
        shared.counters.listening.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = accept_loop(&shared, &current, mode) => {}
            _ = tokio::time::sleep(up_for) => {}
            _ = shared.stop.cancelled() => {}
        }
        drop(current);
        shared.counters.listening.store(false, Ordering::Relaxed);
        drop_connections(&shared);
        debug!(addr = %shared.addr, "flapping device down");
        tokio::select! {
            _ = tokio::time::sleep(down) => {}
            _ = shared.stop.cancelled() => return,
        }
        up_for = up;
    }
}

/// Listen again on the device's port; retries while the port is taken. `None` on stop.
async fn rebind(shared: &Shared) -> Option<TcpListener> {
    let mut warned = false;
    loop {
        match TcpListener::bind(shared.addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                if !warned {
                    warn!(addr = %shared.addr, "cannot listen again (retrying): {e}");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shared.stop.cancelled() => return None,
        }
    }
}

async fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, mode: FrontMode) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                shared
                    .counters
                    .connection_attempts
                    .fetch_add(1, Ordering::Relaxed);
                if mode.dead {
                    // Zero linger: closing sends a reset instead of a FIN.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    continue;
                }
                let shared = shared.clone();
                let token = shared.epoch();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = relay(stream, &shared, mode) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                debug!(addr = %shared.addr, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Relay one connection to the device's server, counting the sessions on it.
async fn relay(client: TcpStream, shared: &Shared, mode: FrontMode) {
    let target = *shared.target.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(target) = target else {
        return;
    };
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            debug!(addr = %shared.addr, "device server unreachable: {e}");
            return;
        }
    };
    // Both sides carry small request/response messages: no Nagle delays.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, client_write) = client.into_split();
    let (mut server_read, server_write) = server.into_split();
    // Bytes relayed each way, counted as the writes complete.
    let mut client_write = Counted::new(client_write, &shared.counters.bytes_to_clients);
    let mut server_write = Counted::new(server_write, &shared.counters.bytes_from_clients);
    let mut sessions = ConnectionSessions::new(&shared.counters);
    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
    let downstream = async {
        if let Some(kind) = mode.hostile {
            return hostile::relay(kind, &mut server_read, &mut client_write, |e| {
                sessions.on_event(e)
            })
            .await;
        }
        if let Some(window) = mode.mute {
            return mute::relay(window, &mut server_read, &mut client_write, |e| {
                sessions.on_event(e)
            })
            .await;
        }
        let mut scanner = ChunkScanner::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            scanner.feed(&buf[..n], |e| sessions.on_event(e));
            client_write.write_all(&buf[..n]).await?;
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// A writer that adds the bytes each write accepted to a counter: one relaxed
/// atomic add per write call, so the relay's hot path stays cheap.
struct Counted<'a, W> {
    inner: W,
    bytes: &'a AtomicU64,
}

impl<'a, W> Counted<'a, W> {
    /// Counts what is written to `inner` into `bytes`.
    fn new(inner: W, bytes: &'a AtomicU64) -> Self {
        Self { inner, bytes }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counted_adds_every_write() {
        let bytes = AtomicU64::new(0);
        let mut out = Counted::new(Vec::new(), &bytes);
        out.write_all(b"HEL").await.unwrap();
        out.write_all(b"F\x1c\x00\x00\x00").await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(bytes.load(Ordering::Relaxed), 8);
        assert_eq!(out.inner.len(), 8);
    }
}
