//! What `k8s/` ships, checked as the cluster would read it:
//!
//! - each overlay renders with `kubectl kustomize`, and every object of a
//!   core kind parses strictly into its typed Kubernetes object (`k8s-openapi`;
//!   a field it does not know is lost in the round trip, and that fails);
//! - the StatefulSet holds the policy points of docs/operations.md: Parallel
//!   pod management, the state volume mounted at the configured state dir
//!   and sized above the spill cap, a grace period above the drain grace,
//!   the three probes on the daemon's paths and port, the security context,
//!   requests and limits, the pod index wired to the shard index, replicas
//!   equal to `shard.count`; the shipped configuration validates; no secret
//!   value anywhere;
//! - the alerts pass `promtool check rules` and `promtool test rules`, with a
//!   test that fires and one that does not for every alert;
//! - every metric the dashboard and the alerts query is one the daemon
//!   exports, seen in a scrape of the real daemon, or documented in
//!   docs/metrics.md as appearing at its first event.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ServiceAccount};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use support::{collector_bin, free_port, loadgen_bin, metric, poll_until, start_loadgen, Daemon};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize k8s/overlays/<overlay>`, as JSON values.
fn render(overlay: &str) -> Vec<Value> {
    let dir = repo().join("k8s/overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl: {e} (it renders k8s/; scripts/install-deps says how to get it)")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `doc` as a `T`, strictly: everything in the document must come back
/// from the typed object (a misspelled or unknown field would be lost; the
/// object may add what it always writes, as `apiVersion` in a PVC template).
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&t).unwrap();
    if let Some(path) = lost(doc, &back, String::new()) {
        panic!(
            "{} {}: `{path}` does not survive a typed round trip (not a field of the object?)",
            doc["kind"], doc["metadata"]["name"]
        );
    }
    t
}

/// The first path of `doc` that `back` does not hold as it is.
fn lost(doc: &Value, back: &Value, path: String) -> Option<String> {
    match (doc, back) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => lost(v, w, format!("{path}.{k}")),
            None => Some(format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| lost(v, w, format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(path),
    }
}

#[test]
fn the_strict_check_catches_a_misspelled_field() {
    let doc: Value = serde_json::from_str(
        r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"x"},"automountServiceAcountToken":false}"#,
    )
    .unwrap();
    let t: ServiceAccount = serde_json::from_value(doc.clone()).unwrap();
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        lost(&doc, &back, String::new()).as_deref(),
        Some(".automountServiceAcountToken")
    );
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Every object of a core kind parses strictly; returns the StatefulSet and
/// the configuration's files.
fn parse_all(docs: &[Value]) -> (StatefulSet, ConfigMap) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let mut sts = None;
    let mut config = None;
    for d in docs {
        match d["kind"].as_str().unwrap() {
            "StatefulSet" => sts = Some(typed::<StatefulSet>(d)),
            "ConfigMap" => {
                let cm = typed::<ConfigMap>(d);
                if cm.metadata.name.as_deref() == Some("opc-collector-config") {
                    config = Some(cm);
                }
            }
            "Service" => drop(typed::<Service>(d)),
            "ServiceAccount" => {
                let sa = typed::<ServiceAccount>(d);
                assert_eq!(sa.automount_service_account_token, Some(false));
            }
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(d)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(d)),
            "PodMonitor" | "PrometheusRule" => {
                assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1", "{d}");
            }
            "Secret" => panic!("a Secret in the manifests: credentials are created, not shipped"),
            other => panic!("unexpected kind {other} in the rendered manifests"),
        }
    }
    (
        sts.expect("a StatefulSet"),
        config.expect("the opc-collector-config ConfigMap"),
    )
}

fn duration(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("not a duration: {s}: {e}"))
}

/// `10GiB`, `1GiB`, `512MiB` -> bytes.
fn bytes(s: &str) -> u64 {
    let s = s.trim();
    for (suffix, mul) in [
        ("GiB", 1u64 << 30),
        ("Gi", 1 << 30),
        ("MiB", 1 << 20),
        ("Mi", 1 << 20),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * mul;
        }
    }
    s.parse().unwrap()
}

fn check_overlay(overlay: &str, replicas: i32) {
    let docs = render(overlay);
    let (sts, cm) = parse_all(&docs);
    assert_eq!(of_kind(&docs, "PodMonitor").len(), 1);
    assert_eq!(of_kind(&docs, "PrometheusRule").len(), 1);
    let data = cm.data.clone().unwrap();
    let cfg: serde_yaml::Value = serde_yaml::from_str(&data["collector.yaml"]).unwrap();

    // The shipped configuration validates (as the pod reads it).
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &data {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new(collector_bin())
        .args(["validate", "--config"])
        .arg(dir.path().join("collector.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{overlay}: the shipped configuration does not validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(replicas), "{overlay} replicas");
    assert_eq!(
        cfg["shard"]["count"].as_i64(),
        Some(i64::from(replicas)),
        "{overlay}: shard.count is the replica count"
    );
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let grace = duration(cfg["collector"]["shutdown_grace"].as_str().unwrap());
    let period = pod.termination_grace_period_seconds.unwrap();
    assert!(
        Duration::from_secs(period as u64) >= grace + Duration::from_secs(10),
        "{overlay}: terminationGracePeriodSeconds {period} is not above the drain grace {grace:?} (+10 s)"
    );
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u > 0));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(pod.containers.len(), 1);
    let c: &Container = &pod.containers[0];
    let csc = c.security_context.as_ref().unwrap();
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(
        csc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let res = c.resources.as_ref().unwrap();
    for part in [&res.requests, &res.limits] {
        let part = part.as_ref().expect("requests and limits");
        assert!(
            part.contains_key("cpu") && part.contains_key("memory"),
            "{part:?}"
        );
    }

    // Probes on the daemon's paths, on the port it listens on.
    let port: u16 = cfg["http"]["addr"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let ports = c.ports.as_ref().unwrap();
    let named = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .unwrap();
    assert_eq!(named.container_port, i32::from(port));
    for (probe, path) in [
        (&c.startup_probe, "/startupz"),
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        let p = serde_json::to_value(&get.port).unwrap();
        assert!(p == "metrics" || p == port, "{path} probe port {p}");
    }
    // The startup probe gives the spill check and a full replica's
    // schedule time: at least 2 minutes.
    let sp = c.startup_probe.as_ref().unwrap();
    let budget = sp.period_seconds.unwrap_or(10) * sp.failure_threshold.unwrap_or(3);
    assert!(budget >= 120, "startup probe budget {budget} s");

    // The pod index, from the downward API, is the shard index.
    let env = c.env.as_ref().unwrap();
    let index = env
        .iter()
        .find(|e| e.name == "OPC_COLLECTOR_SHARD_INDEX")
        .expect("OPC_COLLECTOR_SHARD_INDEX");
    assert_eq!(
        index
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.labels['apps.kubernetes.io/pod-index']")
    );
    // No secret value inline: credentials come from a Secret reference.
    for e in env {
        let secretish = ["PASSWORD", "SECRET", "TOKEN", "KEY"]
            .iter()
            .any(|w| e.name.to_uppercase().contains(w));
        assert!(
            !(secretish && e.value.is_some()),
            "inline secret {}",
            e.name
        );
    }
    assert!(c
        .env_from
        .as_ref()
        .unwrap()
        .iter()
        .any(|f| f.secret_ref.is_some()));
    for (name, text) in &data {
        let y: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        assert_no_inline_password(&y, name);
    }

    // The state volume: mounted at collector.state_dir, above the spill cap.
    let state_dir = cfg["collector"]["state_dir"].as_str().unwrap();
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == state_dir)
        .unwrap_or_else(|| panic!("{overlay}: nothing mounted at the state dir {state_dir}"));
    let vct = spec
        .volume_claim_templates
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(&mount.name))
        .unwrap_or_else(|| panic!("{overlay}: {} is not a volumeClaimTemplate", mount.name));
    let storage = &vct
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"];
    // It holds the spill and the dead letters at their caps, and a GiB of
    // slack (segments being written, the PKI).
    let cap = bytes(cfg["spill"]["max_bytes"].as_str().unwrap());
    let dead = cfg["dead_letters"]["max_bytes"]
        .as_str()
        .map_or(1 << 30, bytes);
    assert!(
        bytes(&storage.0) >= cap + dead + (1 << 30),
        "{overlay}: a {} volume for a {cap}-byte spill cap and {dead} bytes of dead letters",
        storage.0
    );
    let config_mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/etc/opc-collector")
        .unwrap();
    assert_eq!(config_mount.read_only, Some(true));
    assert!(c
        .args
        .as_ref()
        .unwrap()
        .windows(2)
        .any(|w| w[0] == "--config" && w[1] == "/etc/opc-collector/collector.yaml"));
}

/// A configuration names where a password is (`password_env`,
/// `password_file`), never the password.
fn assert_no_inline_password(v: &serde_yaml::Value, file: &str) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().unwrap_or_default();
                assert!(
                    !matches!(k, "password" | "secret" | "token" | "key_password"),
                    "{file}: inline `{k}`"
                );
                assert_no_inline_password(v, file);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| assert_no_inline_password(v, file)),
        _ => {}
    }
}

#[test]
fn the_dev_overlay_renders_and_holds_the_policy() {
    check_overlay("dev", 3);
}

#[test]
fn the_prod_overlay_renders_and_holds_the_policy() {
    check_overlay("prod", 600);
}

fn rules() -> Value {
    let text = std::fs::read_to_string(repo().join("k8s/monitoring/prometheusrule.yaml")).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(v).unwrap()
}

fn alert_names(rules: &Value) -> Vec<String> {
    rules["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_alerts_pass_promtool_with_a_firing_and_a_quiet_test_each() {
    let rules = rules();
    let dir = tempfile::tempdir().unwrap();
    // promtool reads plain rule groups: the PrometheusRule's spec.
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&rules["spec"]).unwrap(),
    )
    .unwrap();
    let tests_file = repo().join("k8s/monitoring/rules.test.yaml");
    std::fs::copy(&tests_file, dir.path().join("rules.test.yaml")).unwrap();
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool: {e} (Debian's `prometheus` package; scripts/install-deps)")
            });
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a case where it fires and one where it does not.
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&tests_file).unwrap()).unwrap();
    let tests = serde_json::to_value(tests).unwrap();
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    let names = alert_names(&rules);
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let mine = cases.iter().filter(|c| c["alertname"] == name.as_str());
        let (mut fires, mut quiet) = (false, false);
        for c in mine {
            match c["exp_alerts"].as_array() {
                Some(a) if !a.is_empty() => fires = true,
                _ => quiet = true,
            }
        }
        assert!(fires && quiet, "{name}: fires {fires}, quiet {quiet}");
    }
    // Each alert has its runbook entry.
    let ops = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    for name in &names {
        assert!(
            ops.contains(&format!("### {name}")),
            "no runbook for {name}"
        );
    }
}

/// `collector_*` names in a PromQL expression, as exported (histogram
/// series suffixes removed).
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("collector_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        if boundary {
            let name = &expr[start..end];
            // A histogram's series name its metric with a suffix.
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|base| {
                    collector_core::metrics::ALL.iter().any(|m| {
                        m.name == *base && m.kind == collector_core::metrics::Kind::Histogram
                    })
                })
                .unwrap_or(name);
            out.insert(name.to_string());
        }
        i = end;
    }
}

/// The dashboard's and the alerts' metric names.
fn queried() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let rules = rules();
    for g in rules["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            metric_names(r["expr"].as_str().unwrap(), &mut names);
        }
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("k8s/monitoring/dashboard.json")).unwrap(),
    )
    .unwrap();
    fn walk(v: &Value, names: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" || k == "query" {
                        if let Some(s) = v.as_str() {
                            metric_names(s, names);
                        }
                    }
                    walk(v, names);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    walk(&dash, &mut names);
    names
}

/// The names docs/metrics.md lists as appearing at their first event.
fn documented_as_on_event() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let section = doc
        .split("## Series that appear at their first event")
        .nth(1)
        .expect("docs/metrics.md: a section `## Series that appear at their first event`");
    let section = section.split("\n## ").next().unwrap();
    let mut names = BTreeSet::new();
    metric_names(section, &mut names);
    names
}

#[test]
fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let names = queried();
    assert!(names.len() >= 10, "{names:?}");
    let known: BTreeSet<&str> = collector_core::metrics::ALL
        .iter()
        .map(|m| m.name)
        .collect();
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "queried but not metrics of the daemon: {unknown:?}"
    );

    // A scrape of the real daemon reading three simulated devices.
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.yaml");
    let sim = start_loadgen(&loadgen_bin(), dir.path(), &devices, 3, 5);
    let kafka = collector_testkit::EmbeddedKafka::start(1, "opc-samples", 1).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  state_dir: {}\nschedule:\n  interval: 1s\nbatch:\n  interval: 200ms\n\
             kafka:\n  brokers: {}\ndevice_files: [devices.yaml]\n",
            dir.path().join("state").display(),
            kafka.bootstrap_servers()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&config, addr, dir.path(), "collector.log");
    daemon.wait_ready(Duration::from_secs(30));
    let scrape = poll_until("records delivered", Duration::from_secs(30), || {
        let m = daemon.metrics();
        let delivered = metric(&m, "collector_kafka_delivered_total").unwrap_or(0.0);
        (delivered >= 6.0)
            .then_some(m)
            .ok_or(format!("{delivered} delivered"))
    });
    let mut exported = BTreeSet::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        metric_names(line.split(['{', ' ']).next().unwrap_or(""), &mut exported);
    }
    let on_event = documented_as_on_event();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(*n) && !on_event.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "queried, not in a scrape of a running daemon, and not documented as appearing at \
         their first event: {missing:?}"
    );
    // The event-only list is honest: it names only metrics the scrape lacked.
    let listed_but_exported: Vec<&String> = on_event.intersection(&exported).collect();
    assert!(
        listed_but_exported.is_empty(),
        "docs/metrics.md lists as event-only, but a running daemon exports: {listed_but_exported:?}"
    );
    daemon.stop(Duration::from_secs(30));
    sim.terminate();
}
