//! What the tools print: text for people, JSON for scripts, and the device
//! entry `browse --emit-device` writes.

use std::io::Write as _;

use collector_core::config::{Device, EnvExpansion};
use collector_core::record::{Record, Sample};
use collector_core::CollectorConfig;
use collector_opcua::inspect::{Browsed, BrowsedNode, ServerInfo};

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
    match (&info.chosen, &info.not_chosen) {
        (Some(c), _) => println!("chosen: {c}"),
        (None, e) => println!("chosen: none: {}", e.as_deref().unwrap_or("?")),
    }
    println!("  because {}", info.why);
    match &info.session {
        Some(s) => {
            println!("operation limits (0: none given):");
            for (name, n) in &s.operation_limits {
                println!("  {name:<42} {n}");
            }
            println!("namespaces:");
            for (i, uri) in s.namespaces.iter().enumerate() {
                println!("  {i:>3}  {uri}");
            }
        }
        None => println!(
            "session with these settings: not opened: {}",
            info.session_error.as_deref().unwrap_or("?")
        ),
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
    let keep = |n: &BrowsedNode| {
        (!args.variables_only || n.node_class == "Variable")
            && matches(args.filter.as_deref(), &n.name, &n.browse_name)
    };
    let shown: Vec<&BrowsedNode> = browsed.nodes.iter().filter(|n| keep(n)).collect();
    if browsed.truncated {
        eprintln!(
            "warning: stopped at {} nodes (--max-nodes): the tree is incomplete",
            browsed.nodes.len()
        );
    }
    for i in &browsed.incomplete {
        eprintln!("warning: children not listed: {i}");
    }
    if browsed.skipped_remote > 0 {
        eprintln!(
            "note: {} references to nodes of other servers not followed",
            browsed.skipped_remote
        );
    }
    if let Some(id) = &args.emit_device {
        return emit_device(id, &shown, args, device, cfg);
    }
    if args.json {
        return json(&serde_json::json!({
            "nodes": shown,
            "truncated": browsed.truncated,
            "incomplete": browsed.incomplete,
            "namespaces": browsed.namespaces,
        }));
    }
    if args.filter.is_some() || args.variables_only {
        // A selection: one line each, with its path.
        for n in shown {
            println!("{}  {}{}", n.path.join("/"), n.node_id, detail(n));
        }
        return Ok(());
    }
    // The tree: each node under its parent (depth first).
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); browsed.nodes.len()];
    let mut roots = Vec::new();
    for (i, n) in browsed.nodes.iter().enumerate() {
        match n.parent {
            Some(p) if p < children.len() => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let mut stack: Vec<usize> = roots.into_iter().rev().collect();
    while let Some(i) = stack.pop() {
        let n = &browsed.nodes[i];
        let indent = "  ".repeat(n.depth.saturating_sub(1) as usize);
        println!("{indent}{}  {}{}", n.name, n.node_id, detail(n));
        stack.extend(children[i].iter().rev());
    }
    Ok(())
}

/// A node's type and access (a variable), or its class.
fn detail(n: &BrowsedNode) -> String {
    if n.node_class != "Variable" {
        return format!("  ({})", n.node_class);
    }
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
}

/// A device entry for the readable variables shown, checked by the same
/// loader as a device file before it is written.
fn emit_device(
    id: &str,
    shown: &[&BrowsedNode],
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
    // A device file's scalars have `${VAR}` expanded and `$$` read as `$`:
    // `$` doubled, so the values read back as found.
    let q = |s: &str| serde_json::Value::String(s.replace('$', "$$")).to_string();
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
        text.push_str(&format!(
            "    security: {}\n",
            sec.to_string().replace('$', "$$")
        ));
    }
    // Checked as the daemon reads a device file.
    cfg.devices_from_yaml(
        &text,
        None,
        EnvExpansion::Expand,
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
        Some(path) if path.exists() && !args.force => {
            eprintln!(
                "error: {} exists: give --force to replace it (a device file may hold other devices)",
                path.display()
            );
            return Err(Failure::Config);
        }
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
