//! Sizing run: start many simulated devices in one process and report the
//! start time and resident memory. Run with
//! `cargo run -p opc-loadgen --release --example sizing`
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let devices = env_u32("LOADGEN_SCALE_DEVICES", 1000);
    let tags = env_u32("LOADGEN_SCALE_TAGS", 20);
    let before = vm_rss_kib();
    let t0 = Instant::now();
    let sim = Simulator::start(SimConfig {
        devices,
        tags,
        ..Default::default()
    })
    .await?;
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
    Ok(())
}
