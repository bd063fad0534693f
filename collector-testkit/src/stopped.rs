//! The collector's final totals, as its last JSON log line states them
//! (`"message":"collector stopped"`). Tests and the bench read the totals
//! through this one type.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Totals from the collector's final `collector stopped` log line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoppedLine {
    /// Successful reads (one record each).
    pub reads_ok: u64,
    /// Failed reads.
    pub reads_failed: u64,
    /// Records acknowledged by Kafka.
    pub delivered: u64,
    /// Records whose delivery failed (then spilled, or undelivered).
    pub failed: u64,
    /// Records spilled to disk.
    pub spilled: u64,
    /// Records replayed from the spill.
    pub replayed: u64,
    /// Records with nowhere to go (counted losses).
    pub undelivered: u64,
    /// Records Kafka refused for good, kept in the dead letters.
    pub dead_lettered: u64,
}

const MESSAGE: &str = "collector stopped";

impl StoppedLine {
    /// The last `collector stopped` line of a JSON log file (fields at the
    /// top level or under `fields`, as tracing-subscriber writes them).
    pub fn from_log(log: &Path) -> Result<StoppedLine, String> {
        let text =
            std::fs::read_to_string(log).map_err(|e| format!("reading {}: {e}", log.display()))?;
        Self::from_log_text(&text).ok_or_else(|| {
            format!(
                "no `{MESSAGE}` line in {}; last lines:\n{}",
                log.display(),
                tail(&text, 15)
            )
        })
    }

    /// The last `collector stopped` line in `text`, if any.
    pub fn from_log_text(text: &str) -> Option<StoppedLine> {
        text.lines()
            .filter(|l| l.contains(MESSAGE))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                if v["message"] == MESSAGE {
                    Some(v)
                } else if v["fields"]["message"] == MESSAGE {
                    Some(v["fields"].clone())
                } else {
                    None
                }
            })
            .next_back()
            .and_then(|v| serde_json::from_value(v).ok())
    }
}

/// The last `n` lines of `text` (for error messages).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_stopped_line() {
        let text = "{\"level\":\"INFO\",\"message\":\"started\"}\n\
             {\"level\":\"INFO\",\"reads_ok\":1,\"message\":\"collector stopped\"}\n\
             {\"level\":\"INFO\",\"reads_ok\":10,\"reads_failed\":1,\"delivered\":10,\"failed\":0,\
             \"spilled\":0,\"replayed\":0,\"undelivered\":0,\"message\":\"collector stopped\"}\n";
        let s = StoppedLine::from_log_text(text).unwrap();
        assert_eq!((s.reads_ok, s.reads_failed, s.delivered), (10, 1, 10));
    }

    #[test]
    fn reads_nested_fields_and_reports_a_missing_line() {
        let text = "{\"fields\":{\"message\":\"collector stopped\",\"spilled\":4}}\n";
        assert_eq!(StoppedLine::from_log_text(text).unwrap().spilled, 4);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        std::fs::write(&log, "{\"message\":\"started\"}\n").unwrap();
        let err = StoppedLine::from_log(&log).unwrap_err();
        assert!(err.contains("no `collector stopped` line"), "{err}");
    }
}
