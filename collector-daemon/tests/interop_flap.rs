//! Session reactivation against independent OPC UA stacks: the daemon reads
//! an open62541 and a node-opcua server over security None through a TCP
//! relay the test controls, and the relay drops every connection every
//! 3 s, four times. Both servers keep a session whose connection was lost
//! (until its timeout), so each reconnect must reactivate the lost session
//! on the new connection (OPC UA Part 4, 5.6.3): each device's session is
//! created once and reactivated after every drop, and reads resume after
//! each. (Python's asyncua closes a session without subscriptions when its
//! connection drops, by design; there a reconnect creates a new session,
//! and nothing is left behind: docs/sessions.md.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::stacks::{Stack, VARIABLES};
use support::{free_port, http_get, metric_labelled, poll_until, Daemon, LogsOnFailure};

/// A TCP relay to `upstream` whose connections the test can drop.
struct Relay {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let conns = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, open }
    }

    /// Drops every connection relayed so far (both sides see a reset link).
    fn drop_all(&self) -> usize {
        let mut open = self.open.lock().unwrap();
        let n = open.len() / 2;
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        n
    }
}

fn reads(addr: SocketAddr, id: &str) -> u64 {
    let body = http_get(addr, "/devices?limit=100")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["devices"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == id))
        .and_then(|d| d["reads_ok"].as_u64())
        .unwrap_or(0)
}

#[test]
fn lost_sessions_are_reactivated_on_open62541_and_node_opcua() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = LogsOnFailure::new(dir);
    let password = dir.join("password");
    std::fs::write(&password, "unused-Pa55\n").unwrap();
    let mut servers = Vec::new();
    let mut relays = Vec::new();
    let mut entries = String::new();
    for stack in [Stack::Open62541, Stack::NodeOpcua] {
        let (server, info) = stack.start(dir, &password);
        let endpoint = info["endpoint"].as_str().unwrap();
        let upstream: SocketAddr = endpoint
            .trim_start_matches("opc.tcp://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let relay = Relay::start(upstream);
        let nodes: Vec<String> = VARIABLES[..4]
            .iter()
            .map(|n| format!("\"{}\"", info["nodes"][n].as_str().unwrap()))
            .collect();
        entries += &format!(
            "  - id: {}\n    endpoint: opc.tcp://{}\n    nodes: [{}]\n    security: {{ policy: none }}\n",
            stack.name(),
            relay.addr,
            nodes.join(", ")
        );
        servers.push(server);
        relays.push(relay);
    }
    let kafka = collector_testkit::EmbeddedKafka::start(1, "opc-samples", 1).unwrap();
    let config = dir.join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: {}\nschedule:\n  interval: 500ms\nbatch:\n  interval: 200ms\ndevices:\n{entries}",
            kafka.bootstrap_servers()
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut daemon = Daemon::start(&config, addr, dir, "collector.log");
    daemon.wait_ready(Duration::from_secs(30));
    let ids = ["open62541", "node-opcua"];
    for round in 0..4 {
        let before: Vec<u64> = ids.iter().map(|id| reads(addr, id)).collect();
        poll_until("both devices read", Duration::from_secs(20), || {
            let now: Vec<u64> = ids.iter().map(|id| reads(addr, id)).collect();
            (now.iter().zip(&before).all(|(n, b)| *n >= b + 2))
                .then_some(())
                .ok_or(format!("round {round}: {now:?}"))
        });
        for r in &relays {
            assert!(r.drop_all() >= 1, "round {round}: nothing to drop");
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    poll_until(
        "reads resume after the last drop",
        Duration::from_secs(20),
        || {
            let m = daemon.metrics();
            let reactivated =
                metric_labelled(&m, "collector_sessions_opened_total", "how=\"reactivated\"");
            (reactivated >= 8.0)
                .then_some(())
                .ok_or(format!("{reactivated} reactivations"))
        },
    );
    let m = daemon.metrics();
    let created = metric_labelled(&m, "collector_sessions_opened_total", "how=\"created\"");
    let reactivated = metric_labelled(&m, "collector_sessions_opened_total", "how=\"reactivated\"");
    let refused =
        support::metric(&m, "collector_session_reactivations_refused_total").unwrap_or(0.0);
    println!(
        "sessions created {created}, reactivated {reactivated}, reactivations refused {refused}"
    );
    assert_eq!(created, 2.0, "one session per device all run");
    assert_eq!(refused, 0.0);
    daemon.stop(Duration::from_secs(30));
    for s in &servers {
        s.terminate();
    }
    logs.passed();
}
