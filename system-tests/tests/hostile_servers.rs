//! Hostile servers (the simulator's `hostile` fault): six devices pass the
//! OPC UA handshake, then answer every Read (also the collector's own read
//! of the namespace array at connect) with, one kind each: 4 KiB of garbage,
//! a value claiming a 2^31-element array, a Variant nested 100,000 deep, a
//! 100 MB string in 8 KiB chunks, one chunk announcing 100 MB, or the
//! genuine response at one byte per second. Read
//! every second for 20 s next to 20 healthy devices:
//!
//! - each hostile device fails alone, with an error that says what went
//!   wrong, and its breaker opens (no read of it succeeds);
//! - the healthy devices deliver every read, gap-free, and keep their
//!   lateness (p99 under 250 ms);
//! - the hostile devices cost less than 64 MiB of peak RSS beyond what the
//!   same collector reading only the healthy devices peaks at (measured
//!   first, 5 s): the client gives up on a message at
//!   `session.max_message_size` (16 MiB), whatever the server claims;
//! - nothing panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use collector_core::config::Settings;
use collector_core::device_status::BreakerState;
use collector_core::histogram::LatencyHistogram;
use opc_loadgen::{Fault, FaultSpec, Hostile, Selection, SimConfig, Simulator};

const HEALTHY: u32 = 20;
const INTERVAL: Duration = Duration::from_secs(1);
const RUN_FOR: Duration = Duration::from_secs(20);
/// Peak RSS the hostile devices may add: one message at the 16 MiB limit
/// being assembled, its copy, and their sessions.
const RSS_EXTRA_MAX_MIB: f64 = 64.0;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Peak resident set of this process (VmHWM), MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_servers_fail_alone_within_bounded_memory() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
    let kafka = support::kafka().await;
    let faults = Hostile::ALL
        .iter()
        .enumerate()
        .map(|(i, h)| FaultSpec {
            fault: Fault::Hostile(*h),
            select: Selection::Devices(vec![HEALTHY + i as u32]),
        })
        .collect();
    let sim = Simulator::start(SimConfig {
        devices: HEALTHY + Hostile::ALL.len() as u32,
        tags: 20,
        faults,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let hostile: Vec<(String, Fault)> = sim
        .devices()
        .iter()
        .filter_map(|d| d.faults.first().map(|f| (d.id.clone(), *f)))
        .collect();
    assert_eq!(hostile.len(), Hostile::ALL.len());
    let devices: Vec<collector_core::Device> = sim
        .devices()
        .iter()
        .map(|d| support::device(d, INTERVAL))
        .collect();
    let config = |devices: Vec<collector_core::Device>| {
        let mut cfg = support::config(kafka.bootstrap_servers(), devices);
        cfg.protocol.insert(
            "session".into(),
            Settings::from_json(serde_json::json!({
                "max_connects_per_second": 1000,
                "connect_timeout": "2s",
                "read_timeout": "2s",
            })),
        );
        cfg
    };
    // The same collector on the healthy devices alone sets the peak the
    // hostile run is compared with.
    let start = peak_rss_mib();
    let mut healthy_only = config(devices[..HEALTHY as usize].to_vec());
    healthy_only.kafka.topic = "baseline".into();
    let baseline = support::build_collector(healthy_only).await;
    baseline
        .run(tokio::time::sleep(Duration::from_secs(5)))
        .await
        .unwrap();
    let before = peak_rss_mib();
    let collector = support::build_collector(config(devices)).await;
    let board = collector.devices();
    let totals = collector.run(tokio::time::sleep(RUN_FOR)).await.unwrap();
    let extra = peak_rss_mib() - before;
    sim.shutdown().await;

    let (_, all) = board.page(|_| true, 0, usize::MAX);
    let mut lateness = LatencyHistogram::default();
    let mut healthy_reads = 0;
    for d in &all {
        match hostile.iter().find(|(id, _)| *id == *d.id) {
            Some((_, fault)) => {
                let err = d.last_error.clone().unwrap_or_default();
                println!(
                    "{fault}: {} failed reads, breaker {:?}, {} ticks skipped open: {err}",
                    d.reads_failed, d.breaker, d.ticks_skipped_open
                );
                assert_eq!(d.reads_ok, 0, "{fault}: {d:?}");
                assert!(d.reads_failed >= 1, "{fault}: {d:?}");
                assert!(!err.is_empty(), "{fault}: no error");
                assert!(
                    d.ticks_skipped_open > 0 || d.breaker != BreakerState::Closed,
                    "{fault}: the breaker never opened: {d:?}"
                );
            }
            None => {
                assert_eq!(d.reads_failed, 0, "{}: {:?}", d.id, d.last_error);
                assert!(d.reads_ok >= 18, "{}: {} reads in 20 s", d.id, d.reads_ok);
                healthy_reads += d.reads_ok;
                lateness.merge(&d.lateness);
            }
        }
    }
    let p99 = lateness.quantile(0.99).unwrap();
    println!(
        "healthy: {healthy_reads} reads, p99 lateness {:.1} ms; peak RSS: {:.1} MiB healthy-only run, {extra:.1} MiB more with the hostile devices",
        p99 * 1e3,
        before - start
    );
    assert!(p99 < 0.25, "healthy p99 lateness {p99} s");
    assert!(
        extra < RSS_EXTRA_MAX_MIB,
        "the hostile devices added {extra:.1} MiB of peak RSS (bound {RSS_EXTRA_MAX_MIB} MiB)"
    );
    assert_eq!(totals.reads_ok, healthy_reads);
    assert_eq!(totals.records_delivered, totals.reads_ok, "{totals:?}");
    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    assert_eq!(consumed.by_device.len(), HEALTHY as usize);
    for (device, recs) in &consumed.by_device {
        support::assert_gap_free(device, recs);
    }
    assert_eq!(PANICS.load(Ordering::Relaxed), 0, "something panicked");
}
