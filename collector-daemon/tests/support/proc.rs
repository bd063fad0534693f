//! Child processes that die with the test, their log files (tailed on
//! failure), free ports and polling: what every end-to-end test needs
//! before it starts anything specific.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) when dropped, so a failing test leaves
/// nothing behind (a stopped process dies of SIGKILL too).
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child }
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends `sig` (`TERM`, `STOP`, `CONT`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{sig} {} ({}) failed",
            self.child.id(),
            self.name
        );
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) -> ExitStatus {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL {}: {e}", self.name));
        self.child.wait().expect("wait after SIGKILL")
    }

    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited unexpectedly: {status}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Prints the tail of every `*.log` and `*.stdout` file in a directory if
/// the test fails (is dropped without [`LogsOnFailure::passed`]); with
/// `E2E_KEEP_LOGS=<dir>` it also copies them there whole.
pub struct LogsOnFailure {
    dir: PathBuf,
    lines: usize,
    passed: bool,
}

impl LogsOnFailure {
    pub fn new(dir: &Path) -> LogsOnFailure {
        LogsOnFailure {
            dir: dir.to_path_buf(),
            lines: 40,
            passed: false,
        }
    }

    pub fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        matches!(
                            p.extension().and_then(|x| x.to_str()),
                            Some("log" | "stdout")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        // `E2E_KEEP_LOGS=<dir>`: keep the whole logs of a failed test there.
        if let Some(keep) = std::env::var_os("E2E_KEEP_LOGS").filter(|k| !k.is_empty()) {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for path in &files {
                if let Some(name) = path.file_name() {
                    let _ = std::fs::copy(path, keep.join(name));
                }
            }
            eprintln!("----- logs kept in {} -----", keep.display());
        }
        for path in files {
            let text = std::fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let lines = collapse_repeats(&text);
            let tail = &lines[lines.len().saturating_sub(self.lines)..];
            eprintln!(
                "----- {} (last {} of {} lines, repeats collapsed) -----",
                path.file_name().unwrap_or_default().to_string_lossy(),
                tail.len(),
                text.lines().count()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// The lines of a log with runs of lines that differ only in their
/// timestamp collapsed into the first and a count, so a warning repeated
/// every half second does not push everything else out of the tail.
fn collapse_repeats(text: &str) -> Vec<String> {
    fn without_timestamp(line: &str) -> &str {
        // JSON logs start `{"timestamp":"...",`; text logs with the timestamp.
        if let Some(rest) = line.strip_prefix("{\"timestamp\":\"") {
            return rest.split_once("\",").map_or(line, |(_, r)| r);
        }
        line.split_once(' ').map_or(line, |(_, r)| r)
    }
    let mut out: Vec<String> = Vec::new();
    let mut last: Option<&str> = None;
    let mut repeats = 0usize;
    for line in text.lines() {
        let key = without_timestamp(line);
        if last == Some(key) {
            repeats += 1;
            continue;
        }
        if repeats > 0 {
            out.push(format!("    ... and {repeats} more like the line above"));
        }
        repeats = 0;
        last = Some(key);
        out.push(line.to_string());
    }
    if repeats > 0 {
        out.push(format!("    ... and {repeats} more like the line above"));
    }
    out
}

pub fn log_file(dir: &Path, name: &str) -> File {
    File::create(dir.join(name)).unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// A free port below the ephemeral range, for the simulator's stats: it
/// binds its device servers on OS-chosen (ephemeral) ports before its
/// stats address, so a just-released ephemeral port can go to one of them.
pub fn port_below_ephemeral() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 32000")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `cond` every 200 ms until it returns `Some`, or panics with
/// `what` and the last `Err` after `within`.
pub fn poll_until<T>(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match cond() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > within => {
                panic!("{what}: not within {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
