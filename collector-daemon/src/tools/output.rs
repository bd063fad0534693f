//! What the tools print: text for people, JSON for scripts, and the device
//! entry `browse --emit-device` writes.

use std::io::Write as _;

use collector_core::config::Device;
use collector_core::record::{Record, Sample};
use collector_core::CollectorConfig;
use collector_opcua::inspect::{Browsed, ServerInfo};

use super::BrowseArgs;
use crate::Failure;

fn json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?;
    println!("{text}");
    Ok(())
}

pub(super) fn endpoints(info: &ServerInfo, as_json: bool) -> Result<(), Failure> {
    if as_json {
        return json(info);
    }
    println!("server {}", info.url);
    println!("  application uri:  {}", info.application_uri);
    println!("  application name: {}", info.application_name);
    println!("  product uri:      {}", info.product_uri);
    for c in &info.certificates {
        println!("  certificate: {}", c.subject);
        println!("    valid {} .. {}", c.not_before, c.not_after);
        println!("    sha256 {}   (server_fingerprint to pin it)", c.sha256);
    }
    println!("endpoints:");
    for e in &info.endpoints {
        println!(
            "  {:<22} {:<17} level {:>3}  {}",
            e.policy, e.mode, e.security_level, e.url
        );
        for t in &e.user_tokens {
            let over = t
                .security_policy
                .as_ref()
                .map(|p| format!(" (token secured by {p})"))
                .unwrap_or_default();
            println!("      {:<12} policy id `{}`{over}", t.kind, t.policy_id);
        }
    }
    match &info.chosen {
        Ok(c) => println!("chosen: {c}"),
        Err(e) => println!("chosen: none: {e}"),
    }
    println!("  because {}", info.why);
    match &info.session {
        Ok(s) => {
            println!("operation limits (0: none given):");
            for (name, n) in &s.operation_limits {
                println!("  {name:<42} {n}");
            }
            println!("namespaces:");
            for (i, uri) in s.namespaces.iter().enumerate() {
                println!("  {i:>3}  {uri}");
            }
        }
        Err(e) => println!("session with these settings: not opened: {e}"),
    }
    Ok(())
}

fn matches(filter: Option<&str>, name: &str, browse_name: &str) -> bool {
    filter.is_none_or(|f| {
        let f = f.to_lowercase();
        name.to_lowercase().contains(&f) || browse_name.to_lowercase().contains(&f)
    })
}

pub(super) fn browse(
    browsed: &Browsed,
    args: &BrowseArgs,
    device: &Device,
    cfg: &CollectorConfig,
) -> Result<(), Failure> {
    let shown: Vec<_> = browsed
        .nodes
        .iter()
        .filter(|n| !args.variables_only || n.node_class == "Variable")
        .filter(|n| matches(args.filter.as_deref(), &n.name, &n.browse_name))
        .collect();
    if browsed.truncated {
        eprintln!(
            "warning: stopped at {} nodes (--max-nodes): the tree is incomplete",
            browsed.nodes.len()
        );
    }
    if let Some(id) = &args.emit_device {
        return emit_device(id, &shown, args, device, cfg);
    }
    if args.json {
        return json(&serde_json::json!({
            "nodes": shown,
            "truncated": browsed.truncated,
            "namespaces": browsed.namespaces,
        }));
    }
    let flat = args.filter.is_some() || args.variables_only;
    for n in shown {
        let detail = if n.node_class == "Variable" {
            let mut access = Vec::new();
            if n.readable {
                access.push("read");
            }
            if n.history_readable {
                access.push("history");
            }
            if n.historizing {
                access.push("historizing");
            }
            format!(
                "  {} [{}]",
                n.data_type.as_deref().unwrap_or("?"),
                access.join(", ")
            )
        } else {
            format!("  ({})", n.node_class)
        };
        if flat {
            println!("{}  {}{detail}", n.path.join("/"), n.node_id);
        } else {
            let indent = "  ".repeat(n.depth.saturating_sub(1) as usize);
            println!("{indent}{}  {}{detail}", n.name, n.node_id);
        }
    }
    Ok(())
}

/// A device entry for the readable variables shown, checked by the same
/// loader as a device file before it is written.
fn emit_device(
    id: &str,
    shown: &[&collector_opcua::inspect::BrowsedNode],
    args: &BrowseArgs,
    device: &Device,
    cfg: &CollectorConfig,
) -> Result<(), Failure> {
    let nodes: Vec<&str> = shown
        .iter()
        .filter(|n| n.node_class == "Variable" && n.readable)
        .map(|n| n.node_id.as_str())
        .collect();
    if nodes.is_empty() {
        eprintln!("error: no readable variable found (widen --depth or --filter)");
        return Err(Failure::Runtime(anyhow::anyhow!("nothing to emit")));
    }
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut text = format!(
        "# written by opc-collector browse {}\ndevices:\n  - id: {}\n    endpoint: {}\n    nodes:\n",
        device.endpoint,
        q(id),
        q(&device.endpoint)
    );
    for n in &nodes {
        text.push_str(&format!("      - {}\n", q(n)));
    }
    // The device's security as the tool used it (never a password: only
    // where it is read from).
    if let Some(sec) = device
        .settings
        .to_json()
        .get("security")
        .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
    {
        text.push_str(&format!("    security: {sec}\n"));
    }
    cfg.devices_from_yaml(
        &text,
        None,
        &collector_opcua::config::OpcUaConfig,
        Default::default(),
    )
    .map_err(|errors| {
        for e in errors.iter() {
            eprintln!("error: the entry does not check: {}", e.message);
        }
        Failure::Runtime(anyhow::anyhow!("the emitted entry is not valid"))
    })?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text).map_err(|e| {
                Failure::Runtime(anyhow::anyhow!("writing {}: {e}", path.display()))
            })?;
            eprintln!(
                "wrote device `{id}` ({} nodes) to {}",
                nodes.len(),
                path.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .map_err(anyhow::Error::from)?;
        }
    }
    Ok(())
}

/// The samples as a record carries them, one JSON object a line; exit 1
/// when a node's status is Bad.
pub(super) fn samples(device: &Device, samples: Vec<Sample>) -> Result<(), Failure> {
    let bad: Vec<String> = samples
        .iter()
        .filter(|s| s.status.code & 0x8000_0000 != 0)
        .map(|s| format!("{}: {}", s.node_id, s.status.name))
        .collect();
    let total = samples.len();
    let now = chrono::Utc::now();
    for sample in samples {
        // Each sample as the record encodes it (the record's own encoder,
        // so keys, types, status and timestamps read exactly the same).
        let record = Record::new(device.id.clone(), 0, now, vec![sample]);
        let mut buf = Vec::new();
        record
            .encode_json("opc-collector-tool", &mut buf)
            .map_err(anyhow::Error::from)?;
        let text = String::from_utf8_lossy(&buf);
        let one = text
            .split_once("\"samples\":[")
            .and_then(|(_, rest)| rest.strip_suffix("]}"))
            .unwrap_or(&text);
        println!("{one}");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "{} of {total} node(s) Bad: {}",
            bad.len(),
            bad.join("; ")
        )))
    }
}
