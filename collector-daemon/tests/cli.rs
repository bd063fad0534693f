//! The `opc-collector` binary as a user runs it: `validate` and `demo`.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opc-collector"));
    c.env_remove("RUST_LOG");
    c
}

#[test]
fn validate_reports_every_problem_with_lines_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "\
kafka:
  brokers: localhost:9092
devices:
  - id: press-1
    endpoint: opc.tcp://10.0.0.1:4840
    nodes: [\"ns=2;s=Temp\"]
    colour: blue
  - id: press-2
    endpoint: opc.tcp://10.0.0.2:4840
    nodes:
      - ns=2;s=Temp
      - ns=2;x=Pressure
  - id: press-1
    endpoint: opc.tcp://10.0.0.3:4840
    nodes: [\"ns=2;s=Temp\"]
  - id: press-4
    nodes: [\"ns=2;s=Temp\"]
",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let file = path.display().to_string();
    let expect = [
        (7, "unknown field `colour`"),
        (12, "ns=2;x=Pressure"),
        (13, "duplicate device id `press-1`"),
        (16, "missing `endpoint`"),
    ];
    for (line, needle) in expect {
        let prefix = format!("{file}:{line}: ");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&prefix) && l.contains(needle)),
            "expected `{prefix}...{needle}` in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
}

/// Security problems at the line of the offending key: inside a device's
/// `security:`, and a fleet-level contradiction once, at its own line.
#[test]
fn validate_places_security_problems_at_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("security.yaml");
    std::fs::write(
        &path,
        "\
kafka:
  brokers: localhost:9092
security:
  policy: basic256sha256
  mode: none
devices:
  - id: press-1
    endpoint: opc.tcp://10.0.0.1:4840
    nodes: [\"ns=2;s=Temp\"]
  - id: press-2
    endpoint: opc.tcp://10.0.0.2:4840
    nodes: [\"ns=2;s=Temp\"]
  - id: press-3
    endpoint: opc.tcp://10.0.0.3:4840
    nodes: [\"ns=2;s=Temp\"]
    security:
      policy: none
      trust: auto_accept
      mode: sign_and_encrypt
      user:
        username: op
        password_env: OPC_COLLECTOR_CLI_TEST_UNSET
",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("OPC_COLLECTOR_CLI_TEST_UNSET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let file = path.display().to_string();
    let at = |line: usize, needle: &str| {
        let prefix = format!("{file}:{line}: ");
        stderr
            .lines()
            .filter(|l| l.contains(&prefix) && l.contains(needle))
            .count()
    };
    // The fleet's contradiction: once, at `mode:` of the section.
    assert_eq!(at(5, "mode none with policy Basic256Sha256"), 1, "{stderr}");
    assert_eq!(
        stderr.matches("mode none with policy").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        at(19, "device `press-3`: security: policy None cannot sign"),
        1,
        "{stderr}"
    );
    assert_eq!(at(22, "OPC_COLLECTOR_CLI_TEST_UNSET"), 1, "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

/// The loading limits are the operator's: a file within the defaults is
/// refused under tighter ones (exit 2, with the limit), by flag or by
/// environment variable.
#[test]
fn loading_limits_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.yaml");
    let mut text = String::from("kafka:\n  brokers: localhost:9092\ndevices:\n");
    for i in 0..3 {
        text += &format!(
            "  - id: d{i}\n    endpoint: opc.tcp://10.0.0.{i}:4840\n    nodes: [\"ns=2;s=T\"]\n"
        );
    }
    std::fs::write(&path, &text).unwrap();
    let validate = |args: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = bin();
        cmd.args(args).args(["validate", "--config"]).arg(&path);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(validate(&[], None).0, Some(0));
    let (code, err) = validate(&["--max-devices-per-file", "2"], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("3 devices in one list; the limit is 2"),
        "{err}"
    );
    let (code, err) = validate(&[], Some(("OPC_COLLECTOR_MAX_FILE_BYTES", "100B")));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("config is {} bytes; the limit is 100", text.len())),
        "{err}"
    );
    let (code, err) = validate(&["--max-file-bytes", "lots"], None);
    assert_eq!(code, Some(2), "a bad limit is a usage error: {err}");
}

/// A configured shard index not below the fleet's count is a contradiction
/// in the file: exit 2 at the key's line. (An index from the environment
/// may be ahead of the count in a scale-up: that replica starts and reads
/// nothing until the count includes it: `tests/fleet.rs` starts one.)
#[test]
fn a_configured_shard_index_not_below_the_count_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(
        &path,
        "kafka:\n  brokers: localhost:9092\nshard:\n  count: 2\n  index: 5\ndevices:\n  - id: d0\n    endpoint: opc.tcp://10.0.0.1:4840\n    nodes: [\"ns=2;s=T\"]\n",
    )
    .unwrap();
    let out = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("fleet.yaml:5") && stderr.contains("must be below shard.count"),
        "{stderr}"
    );
}

#[test]
fn validate_accepts_the_shipped_configs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml")
            || path.to_string_lossy().contains("devices")
        {
            continue;
        }
        let out = bin()
            .env("KAFKA_BROKERS", "localhost:9092")
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected the five example configs, found {checked}"
    );
}

/// Without the `demo` feature (the shipped build) the subcommand says how
/// to get it instead of failing obscurely.
#[cfg(not(feature = "demo"))]
#[test]
fn demo_without_the_feature_says_how_to_build_it() {
    let out = bin().arg("demo").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features demo"), "{stderr}");
}

#[cfg(feature = "demo")]
#[test]
fn demo_delivers_and_prints_a_schema_valid_record() {
    let out = bin()
        .args([
            "--log-format",
            "json",
            "demo",
            "--devices",
            "20",
            "--tags",
            "10",
            "--interval",
            "1s",
            "--duration",
            "5s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let record = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sample record: "))
        .unwrap_or_else(|| panic!("no sample record in:\n{stdout}"));
    let record: serde_json::Value = serde_json::from_str(record).unwrap();
    let schema_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/record.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&record)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("demo totals:"), "{stdout}");
    // A healthy run's screen is the demo's own lines: no warning or error
    // from the libraries (a security-None simulator and client have no
    // certificates on purpose) or about a state dir.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let noisy: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        noisy.is_empty(),
        "warnings or errors on a healthy demo run:\n{}",
        noisy.join("\n")
    );
    let pct: f64 = last
        .split('(')
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no percentage in {last}"));
    assert!(pct >= 99.9, "{last}");
    assert!(last.contains("failed deliveries 0"), "{last}");
}

/// `deadletter stats|requeue` and `spill stats` on a state dir: counts and
/// causes, requeue into the spill, and a refusal while the directory is
/// held (by a running collector; here, by this test).
#[test]
fn deadletter_tools_count_requeue_and_refuse_a_held_directory() {
    use collector_core::deadletter;
    use collector_core::sink::{Message, RejectCause};
    use collector_core::spill::{self, SpillConfig, StoreRole};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  state_dir: {}\ndevices:\n  - id: plc-1\n    endpoint: opc.tcp://127.0.0.1:4840\n    nodes: [\"ns=2;s=A\"]\n",
            state.display()
        ),
    )
    .unwrap();
    let dead_cfg = SpillConfig {
        role: StoreRole::DeadLetters,
        ..SpillConfig::new(state.join("dead-letters"))
    };
    let message = |key: &str| Message {
        key: key.into(),
        payload: br#"{"seq":1}"#.to_vec(),
        read_time_us: 0,
    };
    {
        let dead = spill::open(&dead_cfg).unwrap();
        let detail = "Broker: Message size too large";
        dead.append(
            &deadletter::encode(
                RejectCause::TooLarge,
                detail,
                &[message("gw-1"), message("gw-1")],
            ),
            2,
        )
        .unwrap();
        dead.append(
            &deadletter::encode(
                RejectCause::NotAuthorized,
                "Broker: Topic authorization failed",
                &[message("plc-9")],
            ),
            1,
        )
        .unwrap();
    }
    let run = |args: &[&str]| {
        let out = bin()
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("error")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run(&["deadletter", "stats"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("records   3"), "{stdout}");
    assert!(
        stdout.contains("too_large") && stdout.contains("not_authorized"),
        "{stdout}"
    );
    assert!(
        stdout.contains("gw-1") && stdout.contains("Message size too large"),
        "{stdout}"
    );

    // Held by someone else: refused, nothing moved.
    let held = spill::open(&dead_cfg).unwrap();
    let (code, _, stderr) = run(&["deadletter", "requeue"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("held by a running collector"), "{stderr}");
    assert_eq!(held.stats().records, 3);
    drop(held);

    let (code, stdout, stderr) = run(&["deadletter", "requeue"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("requeued 3 records in 2 batches"),
        "{stdout}"
    );
    let (_, stdout, _) = run(&["spill", "stats"]);
    assert!(stdout.contains("records   3"), "{stdout}");
    let (_, stdout, _) = run(&["deadletter", "inspect"]);
    assert!(
        !stdout.contains("batch "),
        "dead letters left after requeue: {stdout}"
    );
    let (_, stdout, _) = run(&["spill", "inspect"]);
    assert_eq!(stdout.matches("batch ").count(), 2, "{stdout}");
}

/// A file of `n` devices, each on its own endpoint (none is contacted).
#[allow(clippy::unwrap_used)] // test code: a panic is a failed test
fn devices_on_their_own_endpoints(dir: &std::path::Path, n: usize) -> PathBuf {
    let mut yaml = format!(
        "collector:\n  state_dir: {}\nkafka:\n  brokers: 127.0.0.1:1\ndevices:\n",
        dir.join("state").display()
    );
    for i in 0..n {
        // Two devices per endpoint from the 10th on: they share a session.
        let port = if i < 10 { 20_000 + i } else { 30_000 + i / 2 };
        yaml.push_str(&format!(
            "  - id: d{i}\n    endpoint: opc.tcp://127.0.0.1:{port}\n    nodes: [\"ns=2;s=T\"]\n"
        ));
    }
    let path = dir.join("fleet.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `validate` counts sessions (one per endpoint, shared by the devices on
/// it) against what the hard open-files limit leaves, and warns past it.
#[test]
fn validate_says_how_many_sessions_the_open_files_limit_allows() {
    let dir = tempfile::tempdir().unwrap();
    // 10 endpoints of their own, then 50 devices two per endpoint: 35.
    let path = devices_on_their_own_endpoints(dir.path(), 60);
    let run = |hard: u32| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {hard} && ulimit -Hn {hard} && exec \"$0\" validate --config \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_opc-collector"))
            .arg(&path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    // 256 descriptors are kept for everything else: 290 leaves 34 < 35.
    let out = run(290);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("hard limit 290"), "{stdout}");
    assert!(
        stdout.contains("allows 34 sessions (one per endpoint); this file needs 35"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: 35 sessions per replica exceed the 34"),
        "{stderr}"
    );
    let out = run(291);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("allows 35 sessions"), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// `run` raises its soft open-files limit to the hard one at start and
/// logs what that allows against what the device list needs; it runs
/// without transparent huge pages.
#[test]
fn run_raises_the_open_files_soft_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = devices_on_their_own_endpoints(dir.path(), 12);
    let log = dir.path().join("run.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 400 && exec \"$0\" --log-format json run --config \"$1\" --http-addr 127.0.0.1:0 2>\"$2\"")
        .arg(env!("CARGO_BIN_EXE_opc-collector"))
        .arg(&path)
        .arg(&log)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let hard = {
        let out = Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("\"raised_from\"")) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no open-files line within 30 s:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Transparent huge pages off for the daemon (Linux 5.0+ reports it).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    if let Some(thp) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert!(thp.ends_with('0'), "{thp}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &v; // flattened JSON log lines
    assert_eq!(fields["raised_from"], 400, "{line}");
    assert_eq!(fields["needed"], 11, "{line}");
    if hard != "unlimited" {
        let hard: u64 = hard.parse().unwrap();
        assert_eq!(fields["soft"], hard, "{line}");
        assert_eq!(fields["allows"], hard.saturating_sub(256), "{line}");
    }
}
