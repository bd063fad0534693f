//! A file mounted as Kubernetes mounts a ConfigMap, for the tests and the
//! fleet run that change a live configuration the way a cluster does:
//! `<name> -> ..data/<name>`, `..data -> ..v<n>`, and a new version
//! published by writing `..v<n+1>` and renaming a new `..data` link over
//! the old one (atomic: a reader sees the old file or the new one).

use std::io;
use std::path::Path;

/// Publishes `text` as version `version` of the file `name` mounted at `dir`.
pub fn publish(dir: &Path, name: &str, version: u32, text: &str) -> io::Result<()> {
    let versioned = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&versioned)?;
    std::fs::write(versioned.join(name), text)?;
    let tmp = dir.join("..data_tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    let link = dir.join(name);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
    }
    Ok(())
}
