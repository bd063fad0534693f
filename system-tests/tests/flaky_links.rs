//! Flaky links (the simulator's `flap` fault on half of the devices: 5 s
//! reachable and 5 s not, read every second for a minute; 30 s and 30 s,
//! read every 10 s for 150 s):
//!
//! - at every sample, no server holds more than one session of ours: a lost
//!   connection's session is reactivated on the next connection, not left
//!   behind (each device's server created exactly one session all run);
//! - a flapping device is read in at least 80 % (5 s windows) or 90 %
//!   (30 s windows) of the ticks that fall in its reachable windows (the
//!   figures are printed);
//! - the healthy devices miss nothing;
//! - after shutdown (within its grace the flapping devices come back, and
//!   their sessions are closed), no server holds a session of ours.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector_core::Device;
use opc_loadgen::{Fault, FaultSpec, Selection, SimConfig, Simulator};

const DEVICES: u32 = 10;
const INTERVAL: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_devices_keep_one_session_and_are_read_when_reachable() {
    // 5 s reachable, 5 s not, read every second for a minute: >= 80 % of
    // the reachable ticks.
    flaps(
        Duration::from_secs(5),
        INTERVAL,
        Duration::from_secs(60),
        0.8,
    )
    .await;
}

/// A remote device on a link that drops for half a minute at a time, read
/// every 10 s: >= 90 % of the ticks in its reachable windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_flaps_at_a_ten_second_interval_lose_under_a_tenth() {
    flaps(
        Duration::from_secs(30),
        Duration::from_secs(10),
        Duration::from_secs(150),
        0.9,
    )
    .await;
}

/// Half of [`DEVICES`] reachable for `window`, then not for `window`, read
/// every `interval` for `run_for`; each must be read in `min_share` of the
/// ticks that fall in its reachable windows.
async fn flaps(window: Duration, interval: Duration, run_for: Duration, min_share: f64) {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: DEVICES,
        tags: 5,
        faults: vec![FaultSpec {
            fault: Fault::Flap {
                up: window,
                down: window,
            },
            select: Selection::Fraction(0.5),
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let flapping: Vec<String> = sim
        .devices()
        .iter()
        .filter(|d| !d.faults.is_empty())
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(flapping.len(), 5);
    let devices: Vec<Device> = sim
        .devices()
        .iter()
        .map(|d| support::device(d, interval))
        .collect();
    let mut cfg = support::config(kafka.bootstrap_servers(), devices);
    // Long enough for every flapping device to come back once after the
    // stop, so the sessions of those down at that moment are closed too.
    cfg.collector.shutdown_grace = window + Duration::from_secs(10);
    let collector = support::build_collector(cfg).await;
    let board = collector.devices();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector.run(async {
        let _ = stop_rx.await;
    }));

    // Sample the servers every second: sessions held, and how long each
    // device was reachable (its reachable ticks: that time over the
    // interval; a window of whole intervals holds exactly that many).
    let sample = Duration::from_secs(1);
    let started = Instant::now();
    let mut too_many = Vec::new();
    let mut reachable_s: BTreeMap<String, u64> = BTreeMap::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(sample).await;
        for d in sim.device_stats() {
            if d.server_sessions > 1 {
                too_many.push(format!(
                    "{} held {} sessions at {:?}",
                    d.id,
                    d.server_sessions,
                    started.elapsed()
                ));
            }
            if d.listening {
                *reachable_s.entry(d.id.clone()).or_default() += 1;
            }
        }
    }
    stop_tx.send(()).unwrap();
    let totals = run.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sim.device_stats();
    let (_, all) = board.page(|_| true, 0, usize::MAX);
    sim.shutdown().await;

    assert!(too_many.is_empty(), "sessions left behind: {too_many:?}");
    let ticks = run_for.as_secs() / interval.as_secs();
    let mut figures = Vec::new();
    for d in &after {
        let status = all.iter().find(|s| *s.id == *d.id).unwrap();
        assert_eq!(
            d.sessions_created, 1,
            "{}: {} sessions created ({} connections): a lost connection's session was not reactivated",
            d.id, d.sessions_created, d.connection_attempts
        );
        if flapping.contains(&d.id) {
            let reachable = reachable_s.get(&d.id).copied().unwrap_or(0) / interval.as_secs();
            let share = status.reads_ok as f64 / reachable.max(1) as f64;
            figures.push(format!(
                "{}: {} reads in {reachable} reachable ticks ({:.0} %), {} connections",
                d.id,
                status.reads_ok,
                share * 100.0,
                d.connection_attempts
            ));
            assert!(
                d.connection_attempts > 1,
                "{}: never reconnected in {run_for:?} of flapping",
                d.id
            );
            assert!(
                share >= min_share,
                "{}: read in {:.0} % of its reachable ticks ({} of {reachable})",
                d.id,
                share * 100.0,
                status.reads_ok
            );
        } else {
            assert_eq!(
                status.reads_failed, 0,
                "healthy {} failed: {:?}",
                d.id, status.last_error
            );
            assert!(
                status.reads_ok + 5 >= ticks,
                "healthy {}: {} reads of {ticks} ticks",
                d.id,
                status.reads_ok
            );
        }
    }
    println!(
        "flaky links ({window:?} up, {window:?} down, read every {interval:?}): {}",
        figures.join("; ")
    );
    let left: u64 = after.iter().map(|d| d.server_sessions).sum();
    assert_eq!(
        left, 0,
        "sessions left on the servers after shutdown: {after:?}"
    );
    assert_eq!(totals.records_undelivered, 0);
}

/// A black hole (a port that accepts connections and never answers) next
/// to a healthy device, with a single worker permit: the black hole's
/// connects wait out their timeout without the permit, so the healthy
/// device keeps every tick, on time; and the black hole's costly failures
/// open its breaker, so it is not retried every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_never_holds_a_worker_permit() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 1,
        tags: 5,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("opc.tcp://{}", hole.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hole.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(stream); // accepted, never answered
        }
    });
    let d = sim.devices()[0].clone();
    let devices = vec![
        support::device(&d, INTERVAL),
        collector_opcua::config::device("black-hole", &hole_url, &["ns=2;s=Tag000"], INTERVAL)
            .unwrap(),
    ];
    let mut cfg = support::config(kafka.bootstrap_servers(), devices);
    cfg.workers.permits = 1;
    cfg.protocol.insert(
        "session".into(),
        collector_core::config::Settings::from_json(serde_json::json!({
            "connect_timeout": "3s",
            "max_connects_per_second": 1000,
        })),
    );
    let collector = support::build_collector(cfg).await;
    let board = collector.devices();
    let run_for = Duration::from_secs(20);
    let totals = collector.run(tokio::time::sleep(run_for)).await.unwrap();
    sim.shutdown().await;
    let (_, all) = board.page(|_| true, 0, usize::MAX);
    let healthy = all.iter().find(|s| *s.id == *d.id).unwrap();
    let hole = all.iter().find(|s| &*s.id == "black-hole").unwrap();
    let p99 = healthy.lateness.quantile(0.99).unwrap();
    let attempts = accepted.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "black hole: healthy device {} reads, p99 lateness {:.1} ms; black hole {} connects, {} failed reads, breaker {:?}",
        healthy.reads_ok,
        p99 * 1e3,
        attempts,
        hole.reads_failed,
        hole.breaker
    );
    assert_eq!(healthy.reads_failed, 0, "{:?}", healthy.last_error);
    assert!(
        healthy.reads_ok >= 18,
        "healthy device: {} reads in {run_for:?}",
        healthy.reads_ok
    );
    assert!(p99 < 0.5, "healthy p99 lateness {p99} s with one permit");
    assert!(hole.reads_ok == 0 && hole.reads_failed >= 1);
    // 3 timeouts of 3 s open the breaker (10 s cool-down): far fewer
    // attempts than the 20 ticks.
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} connects to the black hole in {run_for:?}"
    );
    assert_eq!(totals.records_undelivered, 0);
}
