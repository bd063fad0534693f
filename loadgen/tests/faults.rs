//! Fault injection, restarts and per-endpoint counters, observed with the async-opcua
//! client: every fault shows on its device and leaves the healthy devices alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use opc_loadgen::{
    model::{self, ModelValue},
    nodes::model_to_variant,
    Fault, FaultSpec, SimConfig, SimError, Simulator,
};
use opcua::{
    client::{ClientBuilder, IdentityToken, Session},
    crypto::SecurityPolicy,
    types::{
        DataValue, EndpointDescription, MessageSecurityMode, NodeId, ReadValueId, StatusCode,
        TimestampsToReturn, UserTokenPolicy, Variant,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

struct Conn {
    session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<StatusCode>,
    _pki: tempfile::TempDir,
}

/// Connect with `retries` session retries; `Err` is the event loop's final status.
async fn try_connect(url: &str, retries: i32) -> Result<Conn, StatusCode> {
    let pki = tempfile::tempdir().unwrap();
    let mut client = ClientBuilder::new()
        .application_name("opc-loadgen fault test")
        .application_uri("urn:opc-loadgen:fault-test")
        .create_sample_keypair(false)
        .trust_server_certs(true)
        .pki_dir(pki.path())
        .session_retry_limit(retries)
        .session_retry_initial(Duration::from_millis(100))
        // No background keep-alive reads: tests count the device's reads.
        .keep_alive_interval(Duration::from_secs(3600))
        .client()
        .unwrap();
    let endpoint: EndpointDescription = (
        url,
        SecurityPolicy::None.to_uri(),
        MessageSecurityMode::None,
        UserTokenPolicy::anonymous(),
    )
        .into();
    let (session, event_loop) = client
        .connect_to_endpoint_directly(endpoint, IdentityToken::Anonymous)
        .unwrap();
    let mut event_loop = event_loop.spawn();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            ok = session.wait_for_connection() => Ok(ok),
            status = &mut event_loop => Err(status.unwrap()),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no outcome connecting to {url}"));
    match outcome {
        Ok(true) => Ok(Conn {
            session,
            event_loop,
            _pki: pki,
        }),
        Ok(false) => Err(StatusCode::BadNotConnected),
        Err(status) => Err(status),
    }
}

async fn connect(url: &str) -> Conn {
    try_connect(url, 2)
        .await
        .unwrap_or_else(|s| panic!("no connection to {url}: {s}"))
}

impl Conn {
    async fn read(&self, ids: &[ReadValueId]) -> Result<Vec<DataValue>, StatusCode> {
        self.session
            .read(ids, TimestampsToReturn::Both, 0.0)
            .await
            .map_err(|e| e.status())
    }

    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.session.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.event_loop).await;
    }

    /// For a connection the simulator dropped: stop the client without a goodbye.
    fn abandon(self) {
        self.session.disable_reconnects();
        self.event_loop.abort();
    }
}

fn ids(strs: &[&str]) -> Vec<ReadValueId> {
    strs.iter()
        .map(|s| ReadValueId::from(NodeId::from_str(s).unwrap()))
        .collect()
}

fn faults(specs: &[&str]) -> Vec<FaultSpec> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("opc.tcp://").to_string()
}

/// Whether a TCP connection to `addr` is accepted and stays open for a moment.
async fn tcp_open(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let mut buf = [0u8; 1];
    // A live OPC UA server waits for a Hello; a dead device resets at once.
    tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf))
        .await
        .is_err()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_device_resets_and_others_serve() {
    let sim = Simulator::start(SimConfig {
        devices: 3,
        tags: 4,
        faults: faults(&["dead=dev-00001"]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let devs = sim.devices();
    assert_eq!(devs[1].faults, vec![Fault::Dead]);
    assert!(devs[0].faults.is_empty() && devs[2].faults.is_empty());

    // TCP connects, then the connection is reset before any byte (on loopback the reset
    // may already fail the connect).
    if let Ok(mut raw) = TcpStream::connect(addr_of(&devs[1].endpoint_url)).await {
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    let status = try_connect(&devs[1].endpoint_url, 0)
        .await
        .err()
        .expect("dead device accepted a session");
    assert!(status.is_bad(), "{status}");

    let healthy = connect(&devs[2].endpoint_url).await;
    let r = healthy.read(&ids(&["ns=2;s=Tag000"])).await.unwrap();
    assert_eq!(r[0].status, Some(StatusCode::Good));
    healthy.close().await;

    let stats = sim.device_stats();
    assert!(stats[1].connection_attempts >= 2, "{:?}", stats[1]);
    assert_eq!(stats[1].sessions_created, 0);
    assert_eq!(stats[1].faults, vec![Fault::Dead]);
    assert_eq!(stats[2].sessions_created, 1);
    assert_eq!(stats[0].connection_attempts, 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_device_delays_reads_without_blocking_others() {
    let delay = Duration::from_millis(300);
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 4,
        faults: faults(&["slow=0:300ms"]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(sim.devices()[0].faults, vec![Fault::Slow(delay)]);
    let slow = connect(&sim.devices()[0].endpoint_url).await;
    let fast = connect(&sim.devices()[1].endpoint_url).await;
    let tags = ids(&["ns=2;s=Tag000", "ns=2;s=Tag001"]);

    let t = Instant::now();
    let (s, f) = tokio::join!(slow.read(&tags), async {
        // Starts while the slow read is pending.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let r = fast.read(&tags).await;
        (r, t.elapsed())
    });
    let slow_took = t.elapsed();
    assert!(s
        .unwrap()
        .iter()
        .all(|d| d.status == Some(StatusCode::Good)));
    assert!(slow_took >= delay, "slow read took {slow_took:?}");
    assert!(slow_took < delay * 4, "slow read took {slow_took:?}");
    let (f, fast_took) = f;
    assert!(f
        .unwrap()
        .iter()
        .all(|d| d.status == Some(StatusCode::Good)));
    assert!(fast_took < delay / 2, "healthy read took {fast_took:?}");
    slow.close().await;
    fast.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_device_goes_down_and_up() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 4,
        faults: faults(&["flap=0:400ms/400ms"]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let flap = sim.devices()[0].clone();
    assert_eq!(
        flap.faults,
        vec![Fault::Flap {
            up: Duration::from_millis(400),
            down: Duration::from_millis(400)
        }]
    );
    let addr = addr_of(&flap.endpoint_url);
    let healthy = addr_of(&sim.devices()[1].endpoint_url);

    // Up: a session works.
    let conn = connect(&flap.endpoint_url).await;
    conn.read(&ids(&["ns=2;s=Tag000"])).await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(400), "test too slow");

    // Down: connections refused, the open connection dropped.
    wait_until("refused", Duration::from_secs(2), || async {
        TcpStream::connect(&addr).await.is_err()
    })
    .await;
    let down_at = t0.elapsed();
    assert!(down_at >= Duration::from_millis(350), "down at {down_at:?}");
    assert!(!sim.device_stats()[0].listening);
    assert_eq!(
        sim.device_stats()[0].current_sessions,
        0,
        "connection dropped"
    );
    assert!(tcp_open(&healthy).await, "healthy device unaffected");

    // Up again on the same port.
    wait_until("listening again", Duration::from_secs(2), || {
        tcp_open(&addr)
    })
    .await;
    let up_at = t0.elapsed();
    assert!(up_at >= Duration::from_millis(750), "up at {up_at:?}");
    assert!(sim.device_stats()[0].listening);
    let again = connect(&flap.endpoint_url).await;
    let r = again.read(&ids(&["ns=2;s=Tag001"])).await.unwrap();
    assert_eq!(r[0].status, Some(StatusCode::Good));
    conn.abandon();
    again.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_status_every_third_read() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 4,
        faults: faults(&["bad-status=0"]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(sim.devices()[0].faults, vec![Fault::BadStatus]);
    let tags = ids(&["ns=2;s=Tag000", "ns=2;s=Tag001", "ns=2;s=Tag002"]);
    let conn = connect(&sim.devices()[0].endpoint_url).await;
    // The client reads the namespace array in the background once connected.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bad = 0;
    for _ in 0..6 {
        let before = sim.device_stats()[0].reads;
        let r = conn.read(&tags).await.unwrap();
        assert_eq!(sim.device_stats()[0].reads, before + 1);
        if before % 3 == 2 {
            bad += 1;
            assert!(
                r.iter()
                    .all(|d| d.status == Some(StatusCode::BadCommunicationError)),
                "{r:?}"
            );
        } else {
            assert!(
                r.iter().all(|d| d.status == Some(StatusCode::Good)),
                "{r:?}"
            );
        }
    }
    assert_eq!(bad, 2);
    conn.close().await;

    let healthy = connect(&sim.devices()[1].endpoint_url).await;
    for _ in 0..4 {
        let r = healthy.read(&tags).await.unwrap();
        assert!(r.iter().all(|d| d.status == Some(StatusCode::Good)));
    }
    healthy.close().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_rejects_the_second_session() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 4,
        faults: faults(&["max-sessions=0:1"]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(sim.devices()[0].faults, vec![Fault::MaxSessions(1)]);
    let url = sim.devices()[0].endpoint_url.clone();
    let first = connect(&url).await;
    let status = try_connect(&url, 0)
        .await
        .err()
        .expect("second session accepted");
    assert_eq!(status, StatusCode::BadTooManySessions);
    first.read(&ids(&["ns=2;s=Tag000"])).await.unwrap();
    let stats = &sim.device_stats()[0];
    assert_eq!(stats.sessions_created, 1);
    assert_eq!(stats.peak_sessions, 1);
    assert_eq!(stats.current_sessions, 1);
    assert_eq!(stats.connection_attempts, 2);

    // The other device takes several sessions.
    let a = connect(&sim.devices()[1].endpoint_url).await;
    let b = connect(&sim.devices()[1].endpoint_url).await;
    a.close().await;
    b.close().await;
    first.close().await;
    sim.shutdown().await;
}

fn namespace_array(r: &DataValue) -> Vec<String> {
    match &r.value {
        Some(Variant::Array(a)) => a.values.iter().map(|v| format!("{v}")).collect(),
        other => panic!("namespace array: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_namespace_shift_moves_the_tags() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 4,
        first_device: 10,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dev = sim.devices()[1].clone();
    assert_eq!(sim.namespace_index(11), Some(2));
    let conn = connect(&dev.endpoint_url).await;
    let r = conn.read(&ids(&["ns=2;s=Tag000"])).await.unwrap();
    assert_eq!(r[0].status, Some(StatusCode::Good));

    let t = Instant::now();
    sim.restart_device(11, true).await.unwrap();
    let restart_took = t.elapsed();
    assert_eq!(sim.namespace_index(11), Some(3));
    assert_eq!(sim.namespace_index(10), Some(2));
    assert_eq!(sim.device_stats()[1].namespace_index, 3);
    // The old connection was dropped.
    assert_eq!(sim.device_stats()[1].current_sessions, 0);
    conn.abandon();

    let conn = connect(&dev.endpoint_url).await;
    let r = conn
        .read(&ids(&[
            "i=2255",
            "ns=2;s=Tag000",
            "ns=3;s=Tag000",
            "ns=3;s=Tag003",
        ]))
        .await
        .unwrap();
    let nss = namespace_array(&r[0]);
    assert_eq!(nss.len(), 4, "{nss:?}");
    assert_eq!(nss[3], model::NAMESPACE_URI);
    assert_eq!(r[1].status, Some(StatusCode::BadNodeIdUnknown));
    assert_eq!(r[2].status, Some(StatusCode::Good));
    let at_ms = r[2]
        .source_timestamp
        .unwrap()
        .as_chrono()
        .timestamp_millis();
    let expected: ModelValue = model::value_at(11, 0, at_ms);
    assert_eq!(r[2].value, Some(model_to_variant(expected)));
    assert_eq!(r[3].status, Some(StatusCode::Good));
    conn.close().await;

    // And back.
    sim.restart_device(11, false).await.unwrap();
    assert_eq!(sim.namespace_index(11), Some(2));
    let conn = connect(&dev.endpoint_url).await;
    let r = conn
        .read(&ids(&["ns=2;s=Tag000", "ns=3;s=Tag000"]))
        .await
        .unwrap();
    assert_eq!(r[0].status, Some(StatusCode::Good));
    assert_eq!(r[1].status, Some(StatusCode::BadNodeIdUnknown));
    conn.close().await;

    assert!(matches!(
        sim.restart_device(12, true).await,
        Err(SimError::UnknownDevice(12))
    ));
    assert_eq!(sim.namespace_index(9), None);
    assert!(sim.device_stats()[1].sessions_created >= 3);
    eprintln!("restart took {restart_took:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_sessions_and_stats_endpoint() {
    let sim = Simulator::start(SimConfig {
        devices: 2,
        tags: 4,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let url = sim.devices()[0].endpoint_url.clone();
    let (a, b, c) = tokio::join!(connect(&url), connect(&url), connect(&url));
    let s = &sim.device_stats()[0];
    assert_eq!((s.current_sessions, s.peak_sessions), (3, 3), "{s:?}");
    assert_eq!(s.server_sessions, 3);
    a.close().await;
    b.close().await;
    let d = connect(&url).await;
    let s = &sim.device_stats()[0];
    assert_eq!((s.current_sessions, s.peak_sessions), (2, 3), "{s:?}");
    c.close().await;
    d.close().await;
    let s = &sim.device_stats()[0];
    assert_eq!(s.current_sessions, 0, "{s:?}");
    assert_eq!(s.peak_sessions, 3);
    assert_eq!(s.sessions_created, 4);
    assert_eq!(s.connection_attempts, 4);
    let total = sim.stats();
    assert_eq!(total.peak_sessions_per_endpoint, 3);
    assert_eq!(total.connection_attempts, 4);
    assert_eq!(sim.device_stats()[1].peak_sessions, 0);

    let addr = sim
        .serve_stats("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("application/json"));
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(body, sim.stats_json());
    assert!(
        body.contains("\"peak_sessions_per_endpoint\":3,\"connection_attempts\":4"),
        "{body}"
    );
    assert!(
        body.contains(
            "{\"index\":0,\"id\":\"dev-00000\",\"faults\":[],\"current_sessions\":0,\
             \"peak_sessions\":3,\"sessions_created\":4,\"connection_attempts\":4,"
        ),
        "{body}"
    );
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET /nope HTTP/1.1\r\n\r\n").await.unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fractions_pick_distinct_devices() {
    let sim = Simulator::start(SimConfig {
        devices: 20,
        tags: 2,
        faults: faults(&[
            "dead=0.1",
            "slow=0.1:300ms",
            "flap=0.1:5s/5s",
            "bad-status=0.1",
        ]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let faulty: Vec<_> = sim
        .devices()
        .iter()
        .filter(|d| !d.faults.is_empty())
        .collect();
    assert_eq!(faulty.len(), 8);
    assert!(faulty.iter().all(|d| d.faults.len() == 1));
    // A healthy device among them serves normally.
    let healthy = sim.devices().iter().find(|d| d.faults.is_empty()).unwrap();
    let conn = connect(&healthy.endpoint_url).await;
    conn.read(&ids(&["ns=2;s=Tag000"])).await.unwrap();
    conn.close().await;
    sim.shutdown().await;
}
