//! Secrets in the configuration: the configuration never holds a secret
//! itself, only where to read it (an environment variable or a file, e.g. a
//! mounted Kubernetes Secret); a secret that has been read is a [`Secret`],
//! whose `Debug` prints `***`, so it cannot leak into a log line, an error
//! or `/devices` by formatting. Used by the Kafka sink's SASL/TLS settings
//! and by protocol adapters (OPC UA user passwords).

use std::fmt;
use std::path::PathBuf;

/// Where a secret is read from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// An environment variable (its name).
    Env(String),
    /// A file (e.g. a mounted Kubernetes Secret); one trailing newline is
    /// ignored.
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl SecretSource {
    /// From a `*_env` / `*_file` pair as written; `what` names the field in
    /// the error (e.g. `user.password`).
    pub fn from_pair(
        env: Option<&str>,
        file: Option<&PathBuf>,
        what: &str,
    ) -> Result<SecretSource, String> {
        match (env, file) {
            (Some(e), None) if !e.trim().is_empty() => Ok(SecretSource::Env(e.trim().to_string())),
            (None, Some(f)) => Ok(SecretSource::File(f.clone())),
            (Some(_), Some(_)) => Err(format!(
                "{what}: give either `{what}_env` or `{what}_file`, not both"
            )),
            _ => Err(format!(
                "{what}: missing; give `{what}_env: VARIABLE` or `{what}_file: /path` (secrets are never written inline)"
            )),
        }
    }

    /// Reads the secret now. The error names the variable or file, never
    /// the value.
    pub fn read(&self) -> Result<Secret, String> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable `{name}` is not set"))?,
            SecretSource::File(path) => {
                let mut s = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                if s.ends_with('\n') {
                    s.pop();
                    if s.ends_with('\r') {
                        s.pop();
                    }
                }
                s
            }
        };
        if value.is_empty() {
            return Err(format!("{self:?} is empty"));
        }
        Ok(Secret(value))
    }
}

/// A secret value (password, key passphrase). Its `Debug` prints `***`; it
/// has no `Display`. Call [`Secret::expose`] only to hand it to the library
/// that needs it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let src = SecretSource::Env("PW".into());
        assert!(!format!("{src:?}").contains("hunter2"));
    }

    #[test]
    fn secret_files_drop_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(
            SecretSource::File(f.clone()).read().unwrap().expose(),
            "s3cret"
        );
        std::fs::write(&f, "").unwrap();
        assert!(SecretSource::File(f).read().is_err());
        let e = SecretSource::Env("OPC_COLLECTOR_TEST_UNSET_VAR".into())
            .read()
            .unwrap_err();
        assert!(e.contains("OPC_COLLECTOR_TEST_UNSET_VAR"), "{e}");
    }
}
