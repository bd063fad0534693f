//! Keep-alives: a session is kept alive by its own reads, and only a
//! session nothing proved for `session.keep_alive_interval` sends one (a
//! Read of the server's state, counted on the simulator's wire as a Read
//! response that is not a read of the device's tags). A dead-but-open
//! connection (a server that stops answering, the TCP connection up) is
//! still found by the keep-alives and the session resumed on a new one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use collector_core::config::Settings;
use opc_loadgen::{DeviceStats, SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn session(extra: serde_json::Value) -> Settings {
    let mut s = serde_json::json!({
        "max_connects_per_second": 1000,
        "keep_alive_interval": "500ms",
        "max_failed_keep_alives": 2,
        "read_timeout": "500ms",
    });
    if let (Some(s), Some(e)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    Settings::from_json(s)
}

/// Polls the simulator until device `i` was read `n` times.
async fn wait_reads(sim: &Simulator, i: usize, n: u64, within: Duration) -> DeviceStats {
    let start = tokio::time::Instant::now();
    loop {
        let d = sim.device_stats().swap_remove(i);
        if d.reads >= n {
            return d;
        }
        assert!(
            start.elapsed() < within,
            "device {i} not read {n} times: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads of server nodes: what a session reads at connect, and keep-alives.
/// (A read of tags in flight is counted in `reads` before its response is
/// on the wire: off by one at most, either way in a difference of two.)
fn others(d: &DeviceStats) -> i64 {
    d.read_responses as i64 - d.reads as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stand_in_for_keep_alives_and_idle_sessions_send_them() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 5,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let busy = support::device(&sim.devices()[0], Duration::from_millis(200));
    // Read every 10 s, at a phase of its own within the first 10 s.
    let idle = support::device(&sim.devices()[1], Duration::from_secs(10));
    let mut cfg = support::config(kafka.bootstrap_servers(), vec![busy, idle]);
    cfg.protocol
        .insert("session".into(), session(serde_json::json!({})));
    let collector = support::build_collector(cfg).await;
    let window = async {
        // From just after the idle device's first read, 4 s without one.
        wait_reads(&sim, 1, 1, Duration::from_secs(15)).await;
        wait_reads(&sim, 0, 3, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = sim.device_stats();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let after = sim.device_stats();
        (before, after)
    };
    let mut seen = None;
    collector
        .run(async {
            seen = Some(window.await);
        })
        .await
        .unwrap();
    let (before, after) = seen.unwrap();
    sim.shutdown().await;
    let sent = |i: usize| others(&after[i]) - others(&before[i]);
    let read = |i: usize| after[i].reads - before[i].reads;
    println!(
        "over 4 s: busy {} reads, {} other Reads; idle {} reads, {} other Reads",
        read(0),
        sent(0),
        read(1),
        sent(1)
    );
    assert!(
        read(0) >= 12,
        "the busy device is read every 200 ms: {after:?}"
    );
    assert_eq!(read(1), 0, "the idle device is not read in the window");
    // The idle session sends a keep-alive every 500 ms (7 or 8 in 4 s),
    // the busy one none: its reads prove it alive (the library's timer sent
    // 8 on both). Allowed: the in-flight read's one either way, and one
    // keep-alive if a loaded machine delays a read past 500 ms.
    assert!(
        sent(1) >= 5,
        "the idle session should send keep-alives: {after:?}"
    );
    assert!(sent(0) <= 2, "the busy session should send none: {after:?}");
    assert_eq!(after[0].sessions_created, 1, "{after:?}");
    assert_eq!(after[1].sessions_created, 1, "{after:?}");
}

/// A TCP relay to a device: [`Relay::freeze`] stops passing the server's
/// bytes on the connections open at that moment (they stay open, as to a
/// frozen server); later connections pass.
struct Relay {
    port: u16,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    /// Connections the client closed.
    closed_by_client: Arc<AtomicU64>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let closed_by_client = Arc::new(AtomicU64::new(0));
        let (f, a, c) = (
            frozen_below.clone(),
            accepted.clone(),
            closed_by_client.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let frozen_below = f.clone();
                let closed = c.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                        closed.fetch_add(1, Ordering::SeqCst);
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let k = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => k,
                        };
                        if n < frozen_below.load(Ordering::SeqCst) {
                            // Frozen: swallow the server's bytes, keep the
                            // connection open until the client gives up.
                            continue;
                        }
                        if cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Relay {
            port,
            frozen_below,
            accepted,
            closed_by_client,
        }
    }

    /// Freezes the open connections; returns how many were accepted so far.
    fn freeze(&self) -> u64 {
        let n = self.accepted.load(Ordering::SeqCst);
        self.frozen_below.store(n, Ordering::SeqCst);
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_behind_an_open_connection_is_found_by_keep_alives() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 1,
        tags: 5,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut relayed = sim.devices()[0].clone();
    let upstream: u16 = relayed
        .endpoint_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let relay = Relay::start(upstream).await;
    relayed.endpoint_url = format!("opc.tcp://127.0.0.1:{}", relay.port);
    // Read every 10 s: after its first read, only keep-alives can notice
    // a freeze for the next 10 s.
    let device = support::device(&relayed, Duration::from_secs(10));
    let mut cfg = support::config(kafka.bootstrap_servers(), vec![device]);
    cfg.protocol
        .insert("session".into(), session(serde_json::json!({})));
    let collector = support::build_collector(cfg).await;
    let watch = async {
        wait_reads(&sim, 0, 1, Duration::from_secs(15)).await;
        // Let the read's response pass the relay before it freezes (the
        // simulator counts a read when it answers, not when we receive it).
        tokio::time::sleep(Duration::from_millis(150)).await;
        let closed_before = relay.closed_by_client.load(Ordering::SeqCst);
        let frozen = relay.freeze();
        let frozen_at = tokio::time::Instant::now();
        // Keep-alives 500 ms apart, each failing after its 500 ms
        // timeout: the second failure drops the connection (~1.5-2 s).
        while relay.closed_by_client.load(Ordering::SeqCst) == closed_before {
            if frozen_at.elapsed() > Duration::from_secs(8) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dropped_after = frozen_at.elapsed();
        // The next scheduled read (10 s after the first) opens a new
        // connection, resumes the session on it and succeeds.
        wait_reads(&sim, 0, 2, Duration::from_secs(15)).await;
        assert!(relay.accepted.load(Ordering::SeqCst) > frozen);
        Some(dropped_after)
    };
    let mut found = None;
    let totals = collector
        .run(async {
            found = watch.await;
        })
        .await
        .unwrap();
    let stats = sim.device_stats();
    sim.shutdown().await;
    println!("frozen connection dropped after {found:?}: {:?}", stats[0]);
    let after = found.expect("the frozen connection was not dropped within 8 s");
    assert!(after < Duration::from_secs(5), "dropped after {after:?}");
    // Found before a read ran into it: no read failed.
    assert_eq!(totals.reads_failed, 0, "{totals:?}");
    assert!(totals.reads_ok >= 2, "{totals:?}");
    // Resumed (ActivateSession on the new connection), not created anew.
    assert_eq!(stats[0].sessions_created, 1, "{:?}", stats[0]);
}
