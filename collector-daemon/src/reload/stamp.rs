//! Whether a watched file changed: the identity of what its path resolves
//! to now (a ConfigMap update is an atomic symlink swap: a new inode).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Identity of what a path resolves to now: device, inode, size,
/// modification and change time (a `chmod` that makes a file readable
/// changes the last); `None`: missing or unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp(Option<(u64, u64, u64, SystemTime, i64, i64)>);

pub(super) fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(std::fs::metadata(path).ok().map(|m| {
        (
            m.dev(),
            m.ino(),
            m.len(),
            m.modified().unwrap_or(UNIX_EPOCH),
            m.ctime(),
            m.ctime_nsec(),
        )
    }))
}

/// Stamps of `paths`, off the runtime (a stalled network file system
/// stalls only a blocking thread).
pub(super) async fn stamps(paths: Vec<PathBuf>) -> Vec<(PathBuf, Stamp)> {
    tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}
