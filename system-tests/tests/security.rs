//! OPC UA security against real secure sessions (the simulator serving
//! Basic256Sha256 SignAndEncrypt with a user): strict trust rejects an
//! unknown server certificate with an actionable error and accepts it once
//! it is moved into the trust list; a pinned fingerprint is accepted without
//! the trust list, a wrong one refused; the client certificate survives a
//! restart; a wrong password fails that device alone, under the breaker and
//! the backoff; channels renewed under a live session lose no read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use collector_core::config::Settings;
use collector_core::{Collector, Device};
use collector_opcua::config::Fingerprint;
use collector_opcua::OpcUaProtocol;
use opc_loadgen::{SimConfig, SimDevice, SimSecurity, Simulator};
use sha2::{Digest, Sha256};

const USER: &str = "operator";
const PASSWORD: &str = "correct-horse-battery";

async fn secure_sim(devices: u32, pki: &Path) -> Simulator {
    Simulator::start(SimConfig {
        devices,
        tags: 10,
        security: Some(SimSecurity {
            policy: "basic256sha256".into(),
            mode: "sign_and_encrypt".into(),
            users: vec![(USER.into(), PASSWORD.into())],
            pki_dir: pki.to_path_buf(),
        }),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn fingerprint_of(der_file: &Path) -> Fingerprint {
    Fingerprint(Sha256::digest(std::fs::read(der_file).unwrap()).into())
}

fn secure_device(
    d: &SimDevice,
    interval: Duration,
    password_file: &Path,
    pin: Option<Fingerprint>,
) -> Device {
    // The device entry as it would be written in YAML.
    let mut security = serde_json::json!({
        "policy": "basic256sha256",
        "mode": "sign_and_encrypt",
        "user": { "username": USER, "password_file": password_file },
    });
    if let Some(pin) = pin {
        security["server_fingerprint"] = pin.to_string().into();
    }
    Device::new(d.id.as_str(), d.endpoint_url.as_str(), interval)
        .unwrap()
        .with_settings(Settings::from_json(serde_json::json!({
            "nodes": d.node_ids,
            "security": security,
        })))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

/// The distinct client certificates the simulated devices trusted (each
/// device keeps its own `trusted/`), by file name.
fn trusted_by_devices(server_pki: &Path) -> std::collections::BTreeSet<std::ffi::OsString> {
    files_in(&server_pki.join("devices"))
        .iter()
        .flat_map(|device| files_in(&device.join("trusted")))
        .filter_map(|f| f.file_name().map(|n| n.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_trust_pinning_and_a_stable_client_certificate() {
    let kafka = support::kafka().await;
    let tmp = tempfile::tempdir().unwrap();
    let server_pki = tmp.path().join("server-pki");
    let sim = secure_sim(3, &server_pki).await;
    let server_cert = sim.security().unwrap().certificate_path();
    let server_fp = fingerprint_of(&server_cert);
    let password_file = tmp.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let state = tmp.path().join("state");
    let pki = state.join("pki");
    let interval = Duration::from_millis(500);
    let wrong_pin: Fingerprint = "00".repeat(32).parse().unwrap();
    let devices = |sim: &Simulator| -> Vec<Device> {
        let d = sim.devices();
        vec![
            // Strict trust, nothing trusted yet.
            secure_device(&d[0], interval, &password_file, None),
            // Pinned to the server's certificate.
            secure_device(&d[1], interval, &password_file, Some(server_fp)),
            // Pinned to some other certificate.
            secure_device(&d[2], interval, &password_file, Some(wrong_pin)),
        ]
    };
    let config = |devices: Vec<Device>| {
        let mut cfg = support::config(kafka.bootstrap_servers(), devices);
        cfg.collector.state_dir = Some(state.clone());
        cfg
    };

    // Run 1: strict trust rejects, the pin accepts, the wrong pin refuses.
    let cfg = config(devices(&sim));
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).unwrap());
    let collector = Collector::builder(cfg)
        .protocol(protocol)
        .build()
        .await
        .unwrap();
    let board = collector.devices();
    let run1 = collector
        .run(tokio::time::sleep(Duration::from_secs(4)))
        .await
        .unwrap();
    let (_, status) = board.page(|_| true, 0, 10);
    let by_id = |id: &str| status.iter().find(|s| s.id.as_ref() == id).unwrap().clone();
    let d = sim.devices();
    let strict = by_id(&d[0].id);
    let pinned = by_id(&d[1].id);
    let wrong = by_id(&d[2].id);
    println!(
        "strict: {:?}\nwrong pin: {:?}",
        strict.last_error, wrong.last_error
    );
    assert_eq!(strict.reads_ok, 0, "{strict:?}");
    let err = strict.last_error.clone().unwrap_or_default();
    let rejected = files_in(&pki.join("rejected"));
    assert_eq!(
        rejected.len(),
        1,
        "the server certificate is saved once: {rejected:?}"
    );
    assert!(
        err.contains("not trusted")
            && err.contains(&server_fp.to_string())
            && err.contains(&rejected[0].display().to_string())
            && err.contains(&pki.join("trusted").display().to_string())
            && err.contains("server_fingerprint"),
        "the error says which file to move where, or what to pin: {err}"
    );
    assert_eq!(
        std::fs::read(&rejected[0]).unwrap(),
        std::fs::read(&server_cert).unwrap()
    );
    assert!(pinned.reads_ok >= 4, "{pinned:?}");
    assert_eq!(pinned.reads_failed, 0, "{pinned:?}");
    assert_eq!(wrong.reads_ok, 0, "{wrong:?}");
    let werr = wrong.last_error.clone().unwrap_or_default();
    assert!(
        werr.contains("not the pinned") && werr.contains(&server_fp.to_string()),
        "{werr}"
    );
    let own_cert = pki.join("own").join("cert.der");
    let client_fp = fingerprint_of(&own_cert);
    let server_trusted = trusted_by_devices(&server_pki);
    assert_eq!(server_trusted.len(), 1, "{server_trusted:?}");

    // The operator trusts the server: copies (rather than moves) the
    // rejected file, under a name of their own.
    std::fs::create_dir_all(pki.join("trusted")).unwrap();
    std::fs::copy(&rejected[0], pki.join("trusted").join("plc-line-1.der")).unwrap();

    // Run 2 (a restart): both good devices read; same client certificate.
    let cfg = config(devices(&sim)[..2].to_vec());
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).unwrap());
    let collector = Collector::builder(cfg)
        .protocol(protocol)
        .build()
        .await
        .unwrap();
    let board = collector.devices();
    let run2 = collector
        .run(tokio::time::sleep(Duration::from_secs(4)))
        .await
        .unwrap();
    let (_, status) = board.page(|_| true, 0, 10);
    for s in &status {
        assert!(s.reads_ok >= 4, "{s:?}");
        assert_eq!(s.reads_failed, 0, "{s:?}");
    }
    assert_eq!(
        fingerprint_of(&own_cert),
        client_fp,
        "client certificate changed on restart"
    );
    assert_eq!(
        trusted_by_devices(&server_pki).len(),
        1,
        "the server saw one client certificate across both runs"
    );

    // Every secure read reached Kafka, gap-free, with the model's values.
    let delivered = run1.records_delivered + run2.records_delivered;
    assert_eq!(delivered, run1.reads_ok + run2.reads_ok);
    let consumed = support::consume(kafka.bootstrap_servers(), delivered as usize).await;
    assert_eq!(consumed.messages as u64, delivered);
    for records in consumed.by_device.values() {
        for r in records {
            support::assert_model_values(r);
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_that_device_alone_under_backoff() {
    let kafka = support::kafka().await;
    let tmp = tempfile::tempdir().unwrap();
    let server_pki = tmp.path().join("server-pki");
    let sim = secure_sim(3, &server_pki).await;
    let server_fp = fingerprint_of(&sim.security().unwrap().certificate_path());
    let good = tmp.path().join("good");
    let bad = tmp.path().join("bad");
    std::fs::write(&good, PASSWORD).unwrap();
    std::fs::write(&bad, "not-the-password").unwrap();
    let interval = Duration::from_secs(1);
    let run_for = Duration::from_secs(15);
    let d = sim.devices();
    let devices = vec![
        secure_device(&d[0], interval, &good, Some(server_fp)),
        secure_device(&d[1], interval, &good, Some(server_fp)),
        secure_device(&d[2], interval, &bad, Some(server_fp)),
    ];
    let mut cfg = support::config(kafka.bootstrap_servers(), devices);
    cfg.collector.state_dir = Some(tmp.path().join("state"));
    let protocol = Arc::new(OpcUaProtocol::new(&cfg).unwrap());
    let collector = Collector::builder(cfg)
        .protocol(protocol)
        .build()
        .await
        .unwrap();
    let board = collector.devices();
    let totals = collector.run(tokio::time::sleep(run_for)).await.unwrap();
    let (_, status) = board.page(|_| true, 0, 10);
    let stats = sim.device_stats();
    let by_id = |id: &str| status.iter().find(|s| s.id.as_ref() == id).unwrap().clone();
    let wrong = by_id(&d[2].id);
    println!(
        "wrong password: {:?}; ticks skipped by its breaker {}; connection attempts {} in {run_for:?}",
        wrong.last_error, wrong.ticks_skipped_open, stats[2].connection_attempts
    );
    let err = wrong.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("authentication failed")
            && err.contains(USER)
            && (err.contains("BadUserAccessDenied") || err.contains("BadIdentityTokenRejected")),
        "{err}"
    );
    assert!(!err.contains("not-the-password"));
    assert_eq!(wrong.reads_ok, 0);
    assert!(
        wrong.ticks_skipped_open >= 5,
        "the breaker opens: {wrong:?}"
    );
    // 15 ticks at 1 s. One discovery connection, then the endpoint backoff
    // (1 s doubling) and the breaker (open after 3 failures, 10 s cool-down)
    // allow about four session attempts: never one per tick.
    assert!(
        (2..=7).contains(&stats[2].connection_attempts),
        "connection attempts: {}",
        stats[2].connection_attempts
    );
    assert!(stats[2].sessions_created <= 5, "{:?}", stats[2]);
    // The others are unaffected: every tick read, nothing failed.
    for i in 0..2 {
        let s = by_id(&d[i].id);
        assert!(s.reads_ok >= 14, "{s:?}");
        assert_eq!(s.reads_failed, 0, "{s:?}");
        assert_eq!(stats[i].connection_attempts, 2, "discovery + one session");
    }
    support::assert_all_delivered(kafka.bootstrap_servers(), &totals).await;
    sim.shutdown().await;
}

/// Secure channels renewed under a live session: with a 10 s lifetime the
/// client renews each channel at 7.5 s and 15 s (new token, keys derived
/// from the server's nonce), and the server drops a channel not renewed
/// within 4/3 of it. Across 20 s of reads every 500 ms: one session per
/// device, every read answered, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_channels_are_renewed_without_a_lost_read() {
    let kafka = support::kafka().await;
    let tmp = tempfile::tempdir().unwrap();
    let sim = secure_sim(2, &tmp.path().join("server-pki")).await;
    let server_fp = fingerprint_of(&sim.security().unwrap().certificate_path());
    let password = tmp.path().join("password");
    std::fs::write(&password, PASSWORD).unwrap();
    let interval = Duration::from_millis(500);
    let run_for = Duration::from_secs(20);
    let d = sim.devices();
    let devices = d
        .iter()
        .map(|d| secure_device(d, interval, &password, Some(server_fp)))
        .collect();
    let mut cfg = support::config(kafka.bootstrap_servers(), devices);
    cfg.collector.state_dir = Some(tmp.path().join("state"));
    cfg.protocol.insert(
        "security".into(),
        Settings::from_json(serde_json::json!({ "channel_lifetime": "10s" })),
    );
    let collector = support::build_collector(cfg).await;
    let board = collector.devices();
    let totals = collector.run(tokio::time::sleep(run_for)).await.unwrap();
    let (_, status) = board.page(|_| true, 0, 10);
    let stats = sim.device_stats();
    for (i, device) in d.iter().enumerate() {
        let s = status.iter().find(|s| s.id.as_ref() == device.id).unwrap();
        println!("{}: {s:?}; server side {:?}", device.id, stats[i]);
        // 40 ticks, less the first connect's.
        assert!(s.reads_ok >= 34, "{s:?}");
        assert_eq!(s.reads_failed, 0, "{s:?}");
        assert_eq!(
            stats[i].connection_attempts, 2,
            "discovery + one session: {:?}",
            stats[i]
        );
    }
    support::assert_all_delivered(kafka.bootstrap_servers(), &totals).await;
    sim.shutdown().await;
}

/// Damaged client certificate files (the state a bad copy or a disk can
/// leave in `<pki_dir>`): the secure device fails with an error naming the
/// file and the fix, the devices that need no certificate read on, and
/// once the files are restored the secure device reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_client_certificate_files_are_named_and_the_others_read_on() {
    let kafka = support::kafka().await;
    let tmp = tempfile::tempdir().unwrap();
    let sim = secure_sim(1, &tmp.path().join("server-pki")).await;
    let plain = Simulator::start(SimConfig {
        devices: 2,
        tags: 5,
        first_device: 10,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let pin = fingerprint_of(&sim.security().unwrap().certificate_path());
    let password_file = tmp.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let state = tmp.path().join("state");
    let interval = Duration::from_millis(500);
    let secure_id = sim.devices()[0].id.clone();
    let run = |label: &'static str| {
        let mut devices = vec![secure_device(
            &sim.devices()[0],
            interval,
            &password_file,
            Some(pin),
        )];
        devices.extend(plain.devices().iter().map(|d| support::device(d, interval)));
        let mut cfg = support::config(kafka.bootstrap_servers(), devices);
        cfg.collector.state_dir = Some(state.clone());
        let secure_id = secure_id.clone();
        async move {
            let collector = support::build_collector(cfg).await;
            let board = collector.devices();
            collector
                .run(tokio::time::sleep(Duration::from_secs(3)))
                .await
                .unwrap();
            let (_, status) = board.page(|_| true, 0, 10);
            for s in status.iter().filter(|s| *s.id != *secure_id) {
                assert!(s.reads_ok >= 4, "{label}: {s:?}");
                assert_eq!(s.reads_failed, 0, "{label}: {s:?}");
            }
            status.into_iter().find(|s| *s.id == *secure_id).unwrap()
        }
    };
    let secure = run("intact").await;
    assert!(secure.reads_ok >= 4, "{secure:?}");
    let cert = state.join("pki/own/cert.der");
    let key = state.join("pki/private/private.pem");
    let (cert_bytes, key_bytes) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());

    std::fs::write(&cert, &cert_bytes[..cert_bytes.len() / 2]).unwrap();
    let secure = run("certificate cut").await;
    let err = secure.last_error.clone().unwrap_or_default();
    println!("certificate cut: {err}");
    assert_eq!(secure.reads_ok, 0, "{secure:?}");
    assert!(
        err.contains(&cert.display().to_string()) && err.contains("damaged"),
        "{err}"
    );

    std::fs::write(&cert, &cert_bytes).unwrap();
    std::fs::write(&key, &key_bytes[..key_bytes.len() / 2]).unwrap();
    let secure = run("key cut").await;
    let err = secure.last_error.clone().unwrap_or_default();
    println!("key cut: {err}");
    assert_eq!(secure.reads_ok, 0, "{secure:?}");
    assert!(
        err.contains(&key.display().to_string()) && err.contains("unreadable"),
        "{err}"
    );

    std::fs::write(&key, &key_bytes).unwrap();
    let secure = run("restored").await;
    assert!(secure.reads_ok >= 4, "{secure:?}");
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        cert_bytes,
        "the certificate was never replaced"
    );
    sim.shutdown().await;
    plain.shutdown().await;
}
