//! `source:` and `registry:` — where the device list comes from. The
//! configuration's own `devices`/`device_files` (the default), or a
//! PostgreSQL device registry that each replica asks for its shard only
//! (docs/registry.md). The core only holds and checks these settings; the
//! daemon talks to the database.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::model::duration;
use super::secret::SecretSource;

/// `source:` — `file` (default) or `postgres`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The configuration's `devices` and `device_files`, re-read when they
    /// change.
    #[default]
    File,
    /// The device registry of the `registry:` section.
    Postgres,
}

/// The most shards a registry serves: its shard index covers the jump
/// hash's spans up to this count (`shard::spans`).
pub const REGISTRY_MAX_SHARDS: u32 = 4096;

/// `registry:` — the PostgreSQL device registry, for `source: postgres`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Connection string without a password: a `postgres://user@host:port/db`
    /// URL or libpq `key=value` pairs (e.g. `sslmode=require`). Give this,
    /// or the whole string in `url_env`/`url_file`.
    pub url: Option<String>,
    /// Environment variable holding the whole connection string.
    pub url_env: Option<String>,
    /// File holding the whole connection string (a mounted Secret).
    pub url_file: Option<PathBuf>,
    /// Environment variable holding the password (with `url`).
    pub password_env: Option<String>,
    /// File holding the password (with `url`).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CAs that verify the server's certificate when the
    /// connection string asks for TLS (`sslmode=require`). Default: the
    /// system's CAs.
    pub ca_file: Option<PathBuf>,
    /// How often the registry is asked for changes of this shard. Default
    /// `30s`.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// Connecting, and each query, at most this long. Default `10s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            url: None,
            url_env: None,
            url_file: None,
            password_env: None,
            password_file: None,
            ca_file: None,
            poll_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where the connection string comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryUrl {
    /// Written in the configuration (no password), with the password's
    /// source if any.
    Inline(String, Option<SecretSource>),
    /// The whole string, read from a variable or a file.
    Secret(SecretSource),
}

impl RegistrySection {
    /// Where the connection string comes from, or why it is ambiguous.
    pub fn connection(&self) -> Result<RegistryUrl, (&'static str, String)> {
        let password = match (&self.password_env, &self.password_file) {
            (None, None) => None,
            (e, f) => Some(
                SecretSource::from_pair(e.as_deref(), f.as_ref(), "password")
                    .map_err(|m| ("password_env", format!("registry.{m}")))?,
            ),
        };
        match (&self.url, &self.url_env, &self.url_file) {
            (Some(url), None, None) => {
                check_connection_string(url).map_err(|m| ("url", m))?;
                Ok(RegistryUrl::Inline(url.clone(), password))
            }
            (None, e, f) if e.is_some() || f.is_some() => {
                if password.is_some() {
                    return Err((
                        "password_env",
                        "registry: a password goes with `url`; `url_env`/`url_file` hold the whole connection string".into(),
                    ));
                }
                SecretSource::from_pair(e.as_deref(), f.as_ref(), "url")
                    .map(RegistryUrl::Secret)
                    .map_err(|m| ("url_env", format!("registry.{m}")))
            }
            (None, None, None) => Err((
                "url",
                "registry: give the connection string as `url` (no password; add `password_env` or `password_file`), `url_env` or `url_file`".into(),
            )),
            _ => Err((
                "url",
                "registry: give one of `url`, `url_env` and `url_file`".into(),
            )),
        }
    }
}

/// Why `s` is not a connection string (checked without connecting): a
/// `postgres://` or `postgresql://` URL, or `key=value` pairs; a password
/// written into the configuration is refused.
pub fn check_connection_string(s: &str) -> Result<(), String> {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let url = url::Url::parse(s)
            .map_err(|e| format!("registry.url is not a valid postgres:// URL: {e}"))?;
        if url.password().is_some() || url.query_pairs().any(|(k, _)| k == "password") {
            return Err(
                "registry.url holds a password: give it in `password_env` or `password_file`, or the whole string in `url_env`/`url_file`".into(),
            );
        }
        return Ok(());
    }
    if s.contains("://") {
        return Err("registry.url: the scheme must be postgres:// or postgresql://".into());
    }
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            return Err(format!(
                "registry.url: `{}` is not `key=value` (or use a postgres:// URL)",
                rest.split_whitespace().next().unwrap_or(rest)
            ));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "registry.url: `{key}` is not a connection setting name"
            ));
        }
        if key == "password" {
            return Err(
                "registry.url holds a password: give it in `password_env` or `password_file`"
                    .into(),
            );
        }
        let after = after.trim_start();
        rest = if let Some(quoted) = after.strip_prefix('\'') {
            let mut escaped = false;
            let end = quoted.char_indices().find(|&(_, c)| {
                let end = c == '\'' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            });
            match end {
                Some((i, _)) => quoted[i + 1..].trim_start(),
                None => {
                    return Err(format!(
                        "registry.url: the value of `{key}` has no closing quote"
                    ))
                }
            }
        } else {
            after
                .find(char::is_whitespace)
                .map_or("", |i| after[i..].trim_start())
        };
        any = true;
    }
    if any {
        Ok(())
    } else {
        Err("registry.url is empty".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_are_checked_without_connecting() {
        assert!(check_connection_string("postgres://collector@db:5432/registry").is_ok());
        assert!(
            check_connection_string("host=db port=5432 user=c dbname='my db' sslmode=require")
                .is_ok()
        );
        for bad in [
            "postgres://c:hunter2@db/registry",
            "postgres://c@db/registry?password=hunter2",
            "host=db password=hunter2",
            "mysql://db/x",
            "host=db dbname='open",
            "just words",
            "",
        ] {
            let e = check_connection_string(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn exactly_one_url_source() {
        let mut r = RegistrySection::default();
        assert_eq!(r.connection().unwrap_err().0, "url");
        r.url = Some("host=db".into());
        r.password_file = Some("/run/pw".into());
        assert!(matches!(
            r.connection(),
            Ok(RegistryUrl::Inline(_, Some(_)))
        ));
        r.url_env = Some("URL".into());
        assert!(r.connection().is_err());
        r.url = None;
        assert_eq!(r.connection().unwrap_err().0, "password_env");
        r.password_file = None;
        assert!(matches!(r.connection(), Ok(RegistryUrl::Secret(_))));
    }
}
