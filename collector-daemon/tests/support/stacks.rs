//! The independent OPC UA stacks of the interop tests, each a child process
//! from `tests/interop/`: Python's `asyncua`, open62541 (through `o6`) and
//! `node-opcua`, started with one user and the same typed variables.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::proc::{free_port, log_file, Proc};

/// The user every fixture accepts.
pub const USER: &str = "collector";

/// The variables every fixture serves, in the order the devices read them.
pub const VARIABLES: [&str; 7] = [
    "Temperature",
    "Counter",
    "Running",
    "Name",
    "Stamp",
    "Levels",
    "Broken",
];

/// An independent OPC UA implementation and its fixture script.
#[derive(Clone, Copy, Debug)]
pub enum Stack {
    Asyncua,
    Open62541,
    NodeOpcua,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Asyncua => "asyncua",
            Stack::Open62541 => "open62541",
            Stack::NodeOpcua => "node-opcua",
        }
    }

    /// The command that starts the fixture, or why it cannot run here.
    pub fn command(self) -> Command {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let (program, script, probe, install) = match self {
            Stack::Asyncua => (
                "python3",
                "asyncua_server.py",
                "import asyncua",
                "Python's asyncua",
            ),
            Stack::Open62541 => ("python3", "o6_server.py", "import o6", "Python's o6"),
            Stack::NodeOpcua => (
                "node",
                "node_opcua_server.js",
                "require('node-opcua')",
                "node-opcua",
            ),
        };
        let mut cmd = Command::new(program);
        if let Stack::NodeOpcua = self {
            // `.ci/test` installs it under target/test-deps/node.
            let modules = std::env::var_os("NODE_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../target/test-deps/node/node_modules")
                });
            cmd.env("NODE_PATH", modules);
        }
        let flag = if program == "node" { "-e" } else { "-c" };
        let ok = Command::new(program)
            .args([flag, probe])
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            matches!(ok, Ok(s) if s.success()),
            "the {} interop test needs {install} (`{program}` on PATH): run it through .ci/test, which installs it under target/test-deps",
            self.name()
        );
        cmd.arg(dir.join(script));
        cmd
    }

    /// Starts the fixture with one user (`USER`, password in
    /// `password_file`); returns it and its JSON description.
    pub fn start(self, dir: &Path, password_file: &Path) -> (Proc, Json) {
        let port = free_port();
        let mut cmd = self.command();
        cmd.args(["--port", &port.to_string(), "--pki"])
            .arg(dir.join(format!("{}-pki", self.name())))
            .args(["--user", USER, "--password-file"])
            .arg(password_file)
            .stdout(Stdio::piped())
            .stderr(log_file(dir, &format!("{}.log", self.name())));
        if let Stack::Asyncua = self {
            cmd.arg("--anonymous-none");
        }
        let mut proc = Proc::spawn("OPC UA server", &mut cmd);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| {
                panic!(
                    "the {} server did not start within 90 s (see {}.log)",
                    self.name(),
                    self.name()
                )
            });
        let info: Json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        println!(
            "{}: {} {} at {}, anonymous token policies {}",
            self.name(),
            info["stack"],
            info["version"],
            info["endpoint"],
            info["anonymous_policy_ids"]
        );
        (proc, info)
    }
}

pub fn fingerprint(der_file: &str) -> String {
    Sha256::digest(std::fs::read(der_file).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
