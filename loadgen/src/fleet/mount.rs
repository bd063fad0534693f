//! The fleet's one configuration file, mounted as Kubernetes mounts a
//! ConfigMap (`fleet.yaml -> ..data/fleet.yaml`, `..data -> ..v<n>`, a new
//! version published by an atomic rename of `..data`): what differs per
//! replica comes from its environment, as in a StatefulSet.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::replica;
use super::FleetArgs;

/// The device ids of the simulator's device files, in order.
pub(super) fn device_ids(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        ids.extend(
            text.lines()
                .filter_map(|l| l.trim_start().strip_prefix("- id: "))
                .map(|id| id.trim().trim_matches('"').to_string()),
        );
    }
    Ok(ids)
}

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

/// Publishes `text` as version `v` of a ConfigMap-style mount at `dir`:
/// `fleet.yaml -> ..data/fleet.yaml`, `..data -> ..v<v>`, replaced by an
/// atomic rename of `..data`, as the kubelet updates a ConfigMap volume.
pub(super) fn publish(dir: &Path, v: u32, text: &str) -> anyhow::Result<()> {
    let version = dir.join(format!("..v{v}"));
    std::fs::create_dir_all(&version).with_context(|| format!("creating {}", version.display()))?;
    std::fs::write(version.join("fleet.yaml"), text).context("writing the configuration")?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{v}"), &tmp).context("linking ..data_tmp")?;
    std::fs::rename(&tmp, dir.join("..data")).context("swapping ..data")?;
    let link = dir.join("fleet.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/fleet.yaml", &link).context("linking fleet.yaml")?;
    }
    Ok(())
}
