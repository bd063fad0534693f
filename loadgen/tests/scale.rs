//! Sizing run (ignored by default): start many devices in one process and report the
//! start time and resident memory. Run with
//! `cargo test -p opc-loadgen --release --test scale -- --ignored --nocapture`
//! (`LOADGEN_SCALE_DEVICES`, `LOADGEN_SCALE_TAGS` override the 1,000 x 20 default).

use std::time::Instant;

use opc_loadgen::{SimConfig, Simulator};

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "sizing run, slow"]
async fn many_devices_memory_and_start_time() {
    let devices = env_u32("LOADGEN_SCALE_DEVICES", 1000);
    let tags = env_u32("LOADGEN_SCALE_TAGS", 20);
    let before = vm_rss_kib();
    let t0 = Instant::now();
    let sim = Simulator::start(SimConfig {
        devices,
        tags,
        ..Default::default()
    })
    .await
    .unwrap();
    let started = t0.elapsed();
    let after = vm_rss_kib();
    let yaml = sim.device_file_yaml();
    println!(
        "scale: {devices} devices x {tags} tags started in {:.0} ms; VmRSS {} KiB -> {} KiB \
         (+{} KiB, {:.1} KiB/device); device file {} bytes",
        started.as_secs_f64() * 1000.0,
        before,
        after,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / f64::from(devices.max(1)),
        yaml.len()
    );
    let t1 = Instant::now();
    sim.shutdown().await;
    println!(
        "scale: shutdown in {:.0} ms",
        t1.elapsed().as_secs_f64() * 1000.0
    );
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Server-side memory per open session: runs `opc-loadgen serve` as a child process,
/// opens one session per device from this process and reads every tag once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "sizing run, slow"]
async fn memory_per_session() {
    use std::io::{BufRead, BufReader};
    use std::str::FromStr;

    use opcua::{
        client::{ClientBuilder, IdentityToken},
        crypto::SecurityPolicy,
        types::{
            EndpointDescription, MessageSecurityMode, NodeId, ReadValueId, TimestampsToReturn,
            UserTokenPolicy,
        },
    };

    let devices = env_u32("LOADGEN_SCALE_SESSIONS", 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("devices.yaml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_opc-loadgen"))
        .args(["serve", "--port-base", "0", "--tags", "20", "--devices"])
        .arg(devices.to_string())
        .arg("--write-devices")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let before = rss_of(child.id());

    let mut client = ClientBuilder::new()
        .application_name("opc-loadgen scale")
        .application_uri("urn:opc-loadgen:scale")
        .create_sample_keypair(false)
        .pki_dir(dir.path().join("pki"))
        .session_retry_limit(1)
        .client()
        .unwrap();
    let mut sessions = Vec::new();
    let t0 = Instant::now();
    for dev in yaml["devices"].as_sequence().unwrap() {
        let url = dev["endpoint"].as_str().unwrap();
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
        let handle = event_loop.spawn();
        assert!(session.wait_for_connection().await);
        let ids: Vec<ReadValueId> = dev["nodes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|n| ReadValueId::from(NodeId::from_str(n.as_str().unwrap()).unwrap()))
            .collect();
        session
            .read(&ids, TimestampsToReturn::Both, 0.0)
            .await
            .unwrap();
        sessions.push((session, handle));
    }
    let connected = t0.elapsed();
    let after = rss_of(child.id());
    println!(
        "scale: {devices} sessions opened+read in {:.0} ms; server VmRSS {before} KiB -> {after} KiB \
         ({:.1} KiB/session)",
        connected.as_secs_f64() * 1000.0,
        after.saturating_sub(before) as f64 / f64::from(devices.max(1))
    );
    for (s, _) in &sessions {
        let _ = s.disconnect().await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}
