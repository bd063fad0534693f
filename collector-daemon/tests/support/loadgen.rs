//! The `opc-loadgen` simulator the end-to-end tests read from: building
//! its binary and starting it with a number of simulated devices.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::daemon::collector_bin;
use super::proc::{log_file, Proc};

/// `opc-loadgen` from the same target directory and profile as
/// `opc-collector`. It belongs to another package, so `cargo test -p
/// collector-daemon` does not build it: build it here (a no-op when it is up
/// to date, and it keeps a stale binary from being tested).
pub fn loadgen_bin() -> PathBuf {
    let collector = collector_bin();
    let profile_dir = collector.parent().expect("binary directory");
    let exe = profile_dir.join(format!("opc-loadgen{}", std::env::consts::EXE_SUFFIX));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "-p",
        "opc-loadgen",
        "--bin",
        "opc-loadgen",
    ]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let t = Instant::now();
    let status = cmd.status().expect("run cargo build -p opc-loadgen");
    assert!(
        status.success(),
        "cargo build -p opc-loadgen failed: {status}"
    );
    assert!(
        exe.is_file(),
        "cargo built opc-loadgen but {} does not exist",
        exe.display()
    );
    eprintln!("[e2e] opc-loadgen build check took {:?}", t.elapsed());
    exe
}

/// Device ids as `opc-loadgen serve --devices n` names them.
pub fn device_ids(n: usize) -> Vec<String> {
    (0..n).map(|d| format!("dev-{d:05}")).collect()
}

/// Starts the simulator (`devices` x `tags`, logging to `loadgen.log` in
/// `dir`) and waits for its `ready:` line; checks the device file it wrote
/// lists every device.
pub fn start_loadgen(
    bin: &Path,
    dir: &Path,
    device_file: &Path,
    devices: usize,
    tags: usize,
) -> Proc {
    start_loadgen_from(bin, dir, device_file, 0, devices, tags, "loadgen.log")
}

/// [`start_loadgen`] for devices `first..first + devices` (ids
/// `dev-{first:05}`...), logging to `log_name`: a second simulator next to
/// the first.
pub fn start_loadgen_from(
    bin: &Path,
    dir: &Path,
    device_file: &Path,
    first: usize,
    devices: usize,
    tags: usize,
    log_name: &str,
) -> Proc {
    start_loadgen_with(bin, dir, device_file, first, devices, tags, log_name, &[])
}

/// [`start_loadgen_from`] with more `serve` arguments (`--stats-addr`, ...).
#[allow(clippy::too_many_arguments)]
pub fn start_loadgen_with(
    bin: &Path,
    dir: &Path,
    device_file: &Path,
    first: usize,
    devices: usize,
    tags: usize,
    log_name: &str,
    extra: &[&str],
) -> Proc {
    let mut sim = Proc::spawn(
        "opc-loadgen",
        Command::new(bin)
            .args([
                "serve",
                "--devices",
                &devices.to_string(),
                "--tags",
                &tags.to_string(),
                "--first-device",
                &first.to_string(),
            ])
            .args([
                "--listen",
                "127.0.0.1",
                "--port-base",
                "0",
                "--write-devices",
            ])
            .arg(device_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(dir, log_name)),
    );
    let stdout = sim.child.stdout.take().expect("loadgen stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ready:") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "opc-loadgen printed no `ready:` line within 20 s (exit status: {:?})",
                sim.exited()
            )
        });
    assert!(
        line.starts_with(&format!("ready: {devices} devices")),
        "unexpected ready line: {line}"
    );
    let yaml = std::fs::read_to_string(device_file).expect("read the device file");
    for id in device_ids(first + devices).into_iter().skip(first) {
        assert!(
            yaml.contains(&format!("id: {id}")),
            "device file lacks {id}:\n{yaml}"
        );
    }
    sim
}
