//! The fleet's one configuration file, mounted as Kubernetes mounts a
//! ConfigMap (`fleet.yaml -> ..data/fleet.yaml`, `..data -> ..v<n>`, a new
//! version published by an atomic rename of `..data`): what differs per
//! replica comes from its environment, as in a StatefulSet.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::replica;
use super::FleetArgs;

/// The fleet's one configuration file: what differs per replica comes
/// from its environment, as in a StatefulSet.
pub(super) fn fleet_config(
    args: &FleetArgs,
    count: u32,
    device_files: &[PathBuf],
    bootstrap: &str,
    topic: &str,
) -> String {
    let mut y = String::from("# written by opc-loadgen fleet: one file for every replica\n");
    y += &format!(
        "collector:\n  id: \"${{{}}}\"\n  state_dir: \"${{{}}}\"\n  shutdown_grace: 20s\n",
        replica::ID_VAR,
        replica::STATE_VAR
    );
    y += &format!("schedule:\n  interval: {}ms\n", args.interval.as_millis());
    y += "session:\n  max_connects_per_second: 500\n";
    y += "batch:\n  interval: 200ms\n";
    y += &format!("kafka:\n  brokers: \"{bootstrap}\"\n  topic: \"{topic}\"\n");
    y += &format!("shard:\n  count: {count}\n");
    if let Some(g) = args.handover_grace {
        y += &format!("  handover_grace: {}ms\n", g.as_millis());
    }
    y += "device_files:\n";
    for f in device_files {
        y += &format!("  - \"{}\"\n", f.display());
    }
    y
}

/// Publishes `text` as version `v` of the fleet's `fleet.yaml` at `dir`
/// (`fleet.yaml -> ..data/fleet.yaml`, replaced by an atomic rename of
/// `..data`, as the kubelet updates a ConfigMap volume).
pub(super) fn publish(dir: &Path, v: u32, text: &str) -> anyhow::Result<()> {
    collector_testkit::configmap::publish(dir, "fleet.yaml", v, text)
        .with_context(|| format!("publishing version {v} of {}", dir.display()))
}
