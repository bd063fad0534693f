//! Which server a tool talks to, and how: an address with the same
//! security options a device entry has, or a configured device
//! (`--config FILE --device ID`). Either way the settings go through the
//! configuration's own loader and checks, so a tool accepts exactly what
//! the daemon would, and its errors name the option or the `file:line`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use collector_core::config::{Device, EnvExpansion, LoadLimits};
use collector_core::CollectorConfig;
use collector_opcua::config::OpcUaConfig;

use crate::Failure;

/// How a tool reaches a server.
#[derive(Debug, Clone, Args)]
pub(crate) struct TargetArgs {
    /// Use this configuration's device (with --device): its endpoint,
    /// security and session settings.
    #[arg(long, short, requires = "device")]
    pub config: Option<PathBuf>,
    /// The device of --config to use.
    #[arg(long, requires = "config")]
    pub device: Option<String>,
    /// Security policy: auto (default: the strongest offered), none,
    /// basic256sha256, aes128_sha256_rsaoaep, aes256_sha256_rsapss.
    #[arg(long, conflicts_with = "config")]
    pub security_policy: Option<String>,
    /// Message security mode: auto (default), none, sign, sign_and_encrypt.
    #[arg(long, conflicts_with = "config")]
    pub mode: Option<String>,
    /// User name (the password from --password-file or --password-env).
    #[arg(long, conflicts_with = "config")]
    pub user: Option<String>,
    /// File holding the user's password.
    #[arg(long, requires = "user")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the user's password.
    #[arg(long, requires = "user")]
    pub password_env: Option<String>,
    /// PKI directory: the client certificate (generated on first use),
    /// `trusted/` and `rejected/` server certificates. Default `./pki`.
    #[arg(long, conflicts_with = "config")]
    pub pki_dir: Option<PathBuf>,
    /// Server certificates not in `<pki-dir>/trusted/`: strict (default)
    /// or auto_accept.
    #[arg(long, conflicts_with = "config")]
    pub trust: Option<String>,
    /// Accept only the server certificate with this SHA-256 fingerprint
    /// (as `endpoints` prints it).
    #[arg(long, conflicts_with = "config")]
    pub server_fingerprint: Option<String>,
    /// Connecting, and each request, at most this long (default 10s; with
    /// --config the device's `session:` timeouts apply).
    #[arg(long, conflicts_with = "config", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

/// A YAML scalar: JSON's string syntax is YAML's double-quoted one; `$`
/// doubled, so that the loader's `${VAR}` expansion leaves it as given.
fn q(s: &str) -> String {
    serde_json::Value::String(s.replace('$', "$$")).to_string()
}

/// The configuration and device a tool runs with; every problem printed
/// (exit 2).
pub(crate) fn resolve(
    url: Option<&str>,
    nodes: &[String],
    t: &TargetArgs,
    limits: LoadLimits,
) -> Result<(CollectorConfig, Device), Failure> {
    let usage = |m: String| {
        eprintln!("error: {m}");
        Failure::Config
    };
    if let (Some(path), Some(id)) = (&t.config, &t.device) {
        let mut cfg = crate::run::load(path, limits)?;
        let Some(mut device) = cfg.devices.iter().find(|d| &*d.id == id.as_str()).cloned() else {
            return Err(usage(format!(
                "{}: no device `{id}` (with `source: postgres`, give the address and options instead)",
                path.display()
            )));
        };
        if !nodes.is_empty() {
            // The device's entry with these nodes, checked as an entry is.
            let mut entry = device.settings.to_json();
            if let Some(m) = entry.as_object_mut() {
                m.insert("nodes".into(), serde_json::json!(nodes));
                m.insert("id".into(), serde_json::json!(&*device.id));
                m.insert("endpoint".into(), serde_json::json!(device.endpoint));
                m.insert(
                    "interval".into(),
                    serde_json::json!(humantime::format_duration(device.interval).to_string()),
                );
            }
            let text = serde_json::json!({ "devices": [entry] }).to_string();
            let checked = cfg
                .devices_from_yaml(&text, None, EnvExpansion::Literal, &OpcUaConfig, limits)
                .map_err(|errors| {
                    for e in errors.iter() {
                        eprintln!("error: device `{id}` with these nodes: {}", e.message);
                    }
                    Failure::Config
                })?;
            if let Some((d, _)) = checked.into_iter().next() {
                device = d;
            }
        }
        cfg.devices = vec![device.clone()];
        return Ok((cfg, device));
    }
    let Some(url) = url else {
        return Err(usage(
            "give the server's address (opc.tcp://host:port), or --config FILE --device ID".into(),
        ));
    };
    let mut security = Vec::new();
    if let Some(p) = &t.security_policy {
        security.push(format!("policy: {}", q(p)));
    }
    if let Some(m) = &t.mode {
        security.push(format!("mode: {}", q(m)));
    }
    if let Some(f) = &t.server_fingerprint {
        security.push(format!("server_fingerprint: {}", q(f)));
    }
    if let Some(u) = &t.user {
        let secret = match (&t.password_file, &t.password_env) {
            (Some(f), None) => format!("password_file: {}", q(&f.display().to_string())),
            (None, Some(e)) => format!("password_env: {}", q(e)),
            _ => return Err(usage("--user needs one of --password-file and --password-env (a password is never given on the command line)".into())),
        };
        security.push(format!("user: {{username: {}, {secret}}}", q(u)));
    }
    let nodes: Vec<String> = if nodes.is_empty() {
        // Server_ServerStatus_State: every server has it.
        vec![q("i=2259")]
    } else {
        nodes.iter().map(|n| q(n)).collect()
    };
    let timeout =
        q(&humantime::format_duration(t.timeout.unwrap_or(Duration::from_secs(10))).to_string());
    let mut fleet = vec![format!(
        "pki_dir: {}",
        q(&t.pki_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("pki"))
            .display()
            .to_string())
    )];
    if let Some(trust) = &t.trust {
        fleet.push(format!("trust: {}", q(trust)));
    }
    let text = format!(
        "collector:\n  id: opc-collector-tool\nsession:\n  connect_timeout: {timeout}\n  read_timeout: {timeout}\n\
         security: {{{}}}\ndevices:\n  - id: tool\n    endpoint: {}\n    nodes: [{}]\n    security: {{{}}}\n",
        fleet.join(", "),
        q(url),
        nodes.join(", "),
        security.join(", ")
    );
    let cfg =
        CollectorConfig::from_yaml_within(&text, None, &OpcUaConfig, limits).map_err(|errors| {
            for e in errors.iter() {
                // The lines are of a document made from the options: the
                // message names the setting.
                eprintln!("error: {}", e.message);
                if let Some(h) = &e.hint {
                    eprintln!("  hint: {h}");
                }
            }
            Failure::Config
        })?;
    let device = cfg
        .devices
        .first()
        .cloned()
        .ok_or_else(|| usage("no device".into()))?;
    Ok((cfg, device))
}
