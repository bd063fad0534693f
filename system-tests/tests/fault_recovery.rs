//! Reconnect discipline against a real server: a device whose server has
//! no session to spare is not stormed, and a server that restarts with its
//! namespaces renumbered (refusing to reactivate the old session) gets one
//! new session and is read correctly again, without wrong values.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use collector_core::Collector;
use collector_opcua::OpcUaProtocol;
use opc_loadgen::{Fault, FaultSpec, Selection, SimConfig, Simulator};
use opcua::client::{ClientBuilder, IdentityToken};
use opcua::types::{MessageSecurityMode, UserTokenPolicy};

use support::device;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_not_stormed() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 1,
        tags: 5,
        faults: vec![FaultSpec {
            fault: Fault::MaxSessions(1),
            select: Selection::All,
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let d = &sim.devices()[0];

    // Someone else holds the server's only session.
    let mut client = ClientBuilder::new()
        .application_name("session-hog")
        .application_uri("urn:session-hog")
        .create_sample_keypair(false)
        .pki_dir(std::env::temp_dir().join("session-hog-pki"))
        .session_retry_limit(0)
        .client()
        .unwrap();
    let (hog, event_loop) = client
        .connect_to_endpoint_directly(
            (
                d.endpoint_url.as_str(),
                opcua::types::constants::SECURITY_POLICY_NONE_URI,
                MessageSecurityMode::None,
                UserTokenPolicy::anonymous(),
            ),
            IdentityToken::Anonymous,
        )
        .unwrap();
    let hog_loop = event_loop.spawn();
    assert!(hog.wait_for_connection().await);
    let before = sim.device_stats()[0].connection_attempts;

    let interval = Duration::from_secs(1);
    let run_for = Duration::from_secs(20);
    let cfg = support::config(kafka.bootstrap_servers(), vec![device(d, interval)]);
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).unwrap());
    let collector = Collector::builder(cfg)
        .protocol(protocol)
        .build()
        .await
        .unwrap();
    let board = collector.devices();
    let totals = collector.run(tokio::time::sleep(run_for)).await.unwrap();

    let ours = sim.device_stats()[0].connection_attempts - before;
    let (_, devices) = board.page(|_| true, 0, 10);
    println!(
        "session limit: {} ticks, {} reads failed, {} ticks skipped by the breaker, {} connection attempts in {:?}",
        totals.ticks + totals.ticks_breaker_open,
        totals.reads_failed,
        totals.ticks_breaker_open,
        ours,
        run_for
    );
    // 20 ticks at 1 s. Endpoint backoff (1 s doubling, jittered) plus the
    // breaker (opens after 3 failures, then 10 s doubling cool-downs) allow
    // a first attempt, at most two more before the breaker opens, and one
    // probe after ~10 s: never one attempt per tick.
    assert!(
        (2..=5).contains(&ours),
        "{ours} connection attempts in {run_for:?}"
    );
    assert!(
        totals.ticks_breaker_open >= 8,
        "breaker should skip most ticks: {totals:?}"
    );
    assert_eq!(totals.reads_ok, 0);
    assert!(
        devices[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("BadTooManySessions"),
        "{:?}",
        devices[0]
    );
    assert!(sim.device_stats()[0].peak_sessions <= 1);

    let _ = hog.disconnect().await;
    hog_loop.abort();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_renumbers_namespaces_is_read_correctly() {
    let kafka = support::kafka().await;
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 20,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let interval = Duration::from_secs(1);
    // Configured with numeric namespace indexes (ns=2), the fragile kind.
    let devices = sim.devices().iter().map(|d| device(d, interval)).collect();
    let cfg = support::config(kafka.bootstrap_servers(), devices);
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).unwrap());
    let collector = Collector::builder(cfg)
        .protocol(protocol)
        .build()
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector.run(async {
        let _ = stop_rx.await;
    }));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted_at = chrono::Utc::now();
    let t0 = Instant::now();
    sim.restart_device(0, true).await.unwrap();
    assert_eq!(sim.namespace_index(0), Some(3), "tags moved to ns=3");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(t0.elapsed())).await;
    let _ = stop_tx.send(());
    let totals = run.await.unwrap().unwrap();
    let stats = sim.device_stats();
    sim.shutdown().await;
    // The restarted server no longer knew the session: reactivating it was
    // refused and one new session was created (the other device kept its
    // only one); never two at once.
    assert_eq!(stats[0].sessions_created, 2, "{:?}", stats[0]);
    assert_eq!(stats[1].sessions_created, 1, "{:?}", stats[1]);
    assert!(stats.iter().all(|d| d.peak_sessions <= 1), "{stats:?}");

    let consumed =
        support::consume(kafka.bootstrap_servers(), totals.records_delivered as usize).await;
    let restarted = consumed
        .by_device
        .get("dev-00000")
        .expect("device 0 delivered");
    // No wrong values: every sample equals the model, Good where it should be.
    for r in consumed.by_device.values().flatten() {
        support::assert_model_values(r);
    }
    // Read again within two intervals of the restart.
    let first_after = restarted
        .iter()
        .filter_map(|r| chrono::DateTime::parse_from_rfc3339(r["read_time"].as_str()?).ok())
        .map(|t| t.to_utc())
        .filter(|t| *t > restarted_at)
        .min()
        .expect("records after the restart");
    let gap = (first_after - restarted_at).to_std().unwrap();
    assert!(
        gap <= 2 * interval,
        "first good read {gap:?} after the restart"
    );
}
