//! Security settings: the OPC UA security policy and mode, user identity
//! and server trust (fleet-wide in `security:`, overridable per device in a
//! device's own `security:`), the collector's application certificate, and
//! Kafka TLS/SASL.
//!
//! The configuration never holds a secret itself, only where to read it (an
//! environment variable or a file, e.g. a mounted Kubernetes Secret); a
//! secret that has been read is a [`Secret`], whose `Debug` prints `***`, so
//! it cannot leak into a log line, an error or `/devices` by formatting.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// OPC UA security policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum SecurityPolicy {
    /// The strongest policy both sides support among the current ones
    /// (Aes256_Sha256_RsaPss, Basic256Sha256, Aes128_Sha256_RsaOaep), else
    /// None if that is all the server offers. Never a deprecated policy.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// No signing, no encryption.
    #[serde(rename = "none", alias = "None")]
    None,
    /// Basic256Sha256.
    #[serde(rename = "basic256sha256", alias = "Basic256Sha256")]
    Basic256Sha256,
    /// Aes128_Sha256_RsaOaep.
    #[serde(rename = "aes128_sha256_rsaoaep", alias = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    /// Aes256_Sha256_RsaPss.
    #[serde(rename = "aes256_sha256_rsapss", alias = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
    /// Basic256 (deprecated by the OPC Foundation; only when named).
    #[serde(rename = "basic256", alias = "Basic256")]
    Basic256,
    /// Basic128Rsa15 (deprecated by the OPC Foundation; only when named).
    #[serde(rename = "basic128rsa15", alias = "Basic128Rsa15")]
    Basic128Rsa15,
}

impl SecurityPolicy {
    /// The name OPC UA gives the policy (`auto` for [`SecurityPolicy::Auto`]).
    pub fn name(self) -> &'static str {
        match self {
            SecurityPolicy::Auto => "auto",
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
            SecurityPolicy::Basic256 => "Basic256",
            SecurityPolicy::Basic128Rsa15 => "Basic128Rsa15",
        }
    }
}

/// OPC UA message security mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum SecurityMode {
    /// The strongest mode the chosen endpoint offers (SignAndEncrypt, then Sign).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// No signing, no encryption (only with policy None).
    #[serde(rename = "none", alias = "None")]
    None,
    /// Messages signed.
    #[serde(rename = "sign", alias = "Sign")]
    Sign,
    /// Messages signed and encrypted.
    #[serde(rename = "sign_and_encrypt", alias = "SignAndEncrypt")]
    SignAndEncrypt,
}

impl SecurityMode {
    /// The name OPC UA gives the mode (`auto` for [`SecurityMode::Auto`]).
    pub fn name(self) -> &'static str {
        match self {
            SecurityMode::Auto => "auto",
            SecurityMode::None => "None",
            SecurityMode::Sign => "Sign",
            SecurityMode::SignAndEncrypt => "SignAndEncrypt",
        }
    }
}

/// What to do with a server certificate that is not in the trust list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum TrustMode {
    /// Reject it (it is saved to `<pki_dir>/rejected/` and the log says how
    /// to trust it). The default.
    #[default]
    #[serde(rename = "strict")]
    Strict,
    /// Accept any server certificate (kept in
    /// `<pki_dir>/auto-accepted/trusted/` for audit). Opt-in; warned about
    /// at start: it makes a man-in-the-middle possible.
    #[serde(rename = "auto_accept")]
    AutoAccept,
}

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
    pub(crate) fn from_pair(
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

/// A SHA-256 certificate fingerprint (of the DER encoding), written as 64
/// hex digits, optionally with `:` separators and a `sha256:` prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        let bad = || {
            format!("{s:?} is not a SHA-256 fingerprint (64 hex digits, `:` separators allowed)")
        };
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// `user:` — a username and where its password is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserPassword {
    /// The user name.
    pub username: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (e.g. a mounted Kubernetes Secret).
    pub password_file: Option<PathBuf>,
}

/// `user_certificate:` — an X.509 user identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserCertificate {
    /// The user certificate (DER or PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// How a device authenticates its session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Identity {
    /// No user.
    #[default]
    Anonymous,
    /// Username and password.
    UserName {
        /// The user name.
        username: String,
        /// Where the password is read from (at every connect, so a
        /// rotated Secret is picked up without a restart).
        password: SecretSource,
    },
    /// X.509 user certificate.
    Certificate {
        /// Certificate file.
        cert: PathBuf,
        /// Private key file.
        key: PathBuf,
    },
}

impl Identity {
    /// `anonymous`, `user <name>` or `certificate <file>`: safe to log.
    pub fn describe(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".to_string(),
            Identity::UserName { username, .. } => format!("user `{username}`"),
            Identity::Certificate { cert, .. } => format!("certificate {}", cert.display()),
        }
    }
}

/// A device's security, resolved from the fleet defaults and its own
/// `security:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DeviceSecurity {
    /// Security policy.
    pub policy: SecurityPolicy,
    /// Message security mode.
    pub mode: SecurityMode,
    /// Trust of certificates not in the trust list.
    pub trust: TrustMode,
    /// Pinned server certificate: only a certificate with this SHA-256
    /// fingerprint is accepted (and no trust-list entry is needed).
    pub server_fingerprint: Option<Fingerprint>,
    /// User identity.
    pub identity: Identity,
}

/// `security:` — fleet-wide OPC UA security defaults and the collector's
/// own application certificate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Default security policy. Default `auto`.
    pub policy: SecurityPolicy,
    /// Default message security mode. Default `auto`.
    pub mode: SecurityMode,
    /// Default trust of unknown server certificates: `strict` (default) or
    /// `auto_accept`.
    pub trust: TrustMode,
    /// Default user (none: anonymous).
    pub user: Option<UserPassword>,
    /// Default X.509 user identity (none: anonymous).
    pub user_certificate: Option<UserCertificate>,
    /// PKI directory: own certificate, `trusted/`, `rejected/`. Default
    /// `<collector.state_dir>/pki`, else `./pki`. Keep it on a persistent
    /// volume: the generated client certificate must survive restarts.
    pub pki_dir: Option<PathBuf>,
    /// Client application certificate (DER or PEM), e.g. from a Secret.
    /// Default: generated once into `<pki_dir>/own/cert.der` and reused.
    pub certificate: Option<PathBuf>,
    /// The certificate's private key (PEM). Required with `certificate`.
    pub private_key: Option<PathBuf>,
    /// Application URI presented to servers. Default: the one in the
    /// client certificate; for a generated certificate
    /// `urn:opc-collector:<collector id>`.
    pub application_uri: Option<String>,
    /// Requested secure channel lifetime; the channel is renewed (one RSA
    /// operation per side) at 75 % of it. Default `1h`: 2,000 secure
    /// sessions then renew ~0.7 channels/s instead of ~44/s with the
    /// library's 60 s.
    #[serde(with = "super::model::duration")]
    pub channel_lifetime: Duration,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            policy: SecurityPolicy::Auto,
            mode: SecurityMode::Auto,
            trust: TrustMode::Strict,
            user: None,
            user_certificate: None,
            pki_dir: None,
            certificate: None,
            private_key: None,
            application_uri: None,
            channel_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A device's `security:` as written: every field optional, falling back to
/// the `security:` section.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeviceSecurity {
    pub policy: Option<SecurityPolicy>,
    pub mode: Option<SecurityMode>,
    pub trust: Option<TrustMode>,
    pub server_fingerprint: Option<String>,
    pub user: Option<UserPassword>,
    pub user_certificate: Option<UserCertificate>,
}

impl SecuritySection {
    /// Resolves a device's security from these defaults and its own
    /// settings; errors are messages without the device id.
    pub(crate) fn resolve(
        &self,
        raw: Option<&RawDeviceSecurity>,
    ) -> Result<DeviceSecurity, Vec<String>> {
        let empty = RawDeviceSecurity::default();
        let raw = raw.unwrap_or(&empty);
        let mut errors = Vec::new();
        let policy = raw.policy.unwrap_or(self.policy);
        let mode = raw.mode.unwrap_or(self.mode);
        let trust = raw.trust.unwrap_or(self.trust);
        check_policy_mode(policy, mode, &mut errors);
        let server_fingerprint = match &raw.server_fingerprint {
            None => None,
            Some(s) => match s.parse::<Fingerprint>() {
                Ok(f) => Some(f),
                Err(e) => {
                    errors.push(format!("security.server_fingerprint: {e}"));
                    None
                }
            },
        };
        if server_fingerprint.is_some() && raw.trust == Some(TrustMode::AutoAccept) {
            errors.push(
                "security: server_fingerprint pins one certificate, trust: auto_accept accepts any; choose one"
                    .to_string(),
            );
        }
        // A device naming either identity replaces the fleet's identity;
        // the fleet's own is checked once, by `check`.
        let own = raw.user.is_some() || raw.user_certificate.is_some();
        let identity = if own {
            identity(
                raw.user.as_ref(),
                raw.user_certificate.as_ref(),
                true,
                &mut errors,
            )
        } else {
            identity(
                self.user.as_ref(),
                self.user_certificate.as_ref(),
                false,
                &mut errors,
            )
        };
        if errors.is_empty() {
            Ok(DeviceSecurity {
                policy,
                mode,
                trust,
                server_fingerprint,
                identity,
            })
        } else {
            Err(errors)
        }
    }

    /// Problems with the section itself (checked once, not per device).
    pub(crate) fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        check_policy_mode(self.policy, self.mode, &mut errors);
        identity(
            self.user.as_ref(),
            self.user_certificate.as_ref(),
            true,
            &mut errors,
        );
        match (&self.certificate, &self.private_key) {
            (Some(c), Some(k)) => {
                for (what, p) in [("certificate", c), ("private_key", k)] {
                    if !p.is_file() {
                        errors.push(format!(
                            "security.{what}: {} is not a readable file",
                            p.display()
                        ));
                    }
                }
            }
            (Some(_), None) => errors.push(
                "security.certificate: needs `private_key` too (or neither, to generate one)"
                    .to_string(),
            ),
            (None, Some(_)) => errors.push(
                "security.private_key: needs `certificate` too (or neither, to generate one)"
                    .to_string(),
            ),
            (None, None) => {}
        }
        if let Some(uri) = &self.application_uri {
            if uri.trim().is_empty() || !uri.contains(':') {
                errors.push(format!(
                    "security.application_uri: {uri:?} is not a URI (e.g. urn:acme:opc-collector)"
                ));
            }
        }
        if self.channel_lifetime < Duration::from_secs(10)
            || self.channel_lifetime > Duration::from_millis(u64::from(u32::MAX))
        {
            errors.push("security.channel_lifetime: must be between 10s and 49 days".to_string());
        }
        errors
    }
}

fn check_policy_mode(policy: SecurityPolicy, mode: SecurityMode, errors: &mut Vec<String>) {
    match (policy, mode) {
        (SecurityPolicy::None, SecurityMode::Sign | SecurityMode::SignAndEncrypt) => {
            errors.push(format!(
                "security: policy None cannot {}; choose a policy such as basic256sha256",
                if mode == SecurityMode::Sign {
                    "sign"
                } else {
                    "sign and encrypt"
                }
            ))
        }
        (p, SecurityMode::None) if p != SecurityPolicy::None && p != SecurityPolicy::Auto => errors
            .push(format!(
                "security: mode none with policy {} makes no sense; use mode sign or sign_and_encrypt",
                p.name()
            )),
        _ => {}
    }
}

/// The identity from a `user` / `user_certificate` pair; `check`: also
/// verify that the secret and files can be read now.
fn identity(
    user: Option<&UserPassword>,
    cert: Option<&UserCertificate>,
    check: bool,
    errors: &mut Vec<String>,
) -> Identity {
    match (user, cert) {
        (Some(_), Some(_)) => {
            errors.push("security: give either `user` or `user_certificate`, not both".to_string());
            Identity::Anonymous
        }
        (Some(u), None) => {
            if check && u.username.trim().is_empty() {
                errors.push("security.user.username: must not be empty".to_string());
            }
            match SecretSource::from_pair(
                u.password_env.as_deref(),
                u.password_file.as_ref(),
                "password",
            ) {
                Ok(src) => {
                    if check {
                        if let Err(e) = src.read() {
                            errors.push(format!("security.user.password: {e}"));
                        }
                    }
                    Identity::UserName {
                        username: u.username.clone(),
                        password: src,
                    }
                }
                Err(e) => {
                    if check {
                        errors.push(format!("security.user.{e}"));
                    }
                    Identity::Anonymous
                }
            }
        }
        (None, Some(c)) => {
            if check {
                for (what, p) in [("cert", &c.cert), ("key", &c.key)] {
                    if !p.is_file() {
                        errors.push(format!(
                            "security.user_certificate.{what}: {} is not a readable file",
                            p.display()
                        ));
                    }
                }
            }
            Identity::Certificate {
                cert: c.cert.clone(),
                key: c.key.clone(),
            }
        }
        (None, None) => Identity::Anonymous,
    }
}

/// `kafka.tls:` — TLS to the brokers (`security.protocol` SSL, or SASL_SSL
/// with `kafka.sasl`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// CA certificate(s) (PEM) to verify the brokers. Default: the
    /// system's trust store.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub certificate: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub key: Option<PathBuf>,
    /// Environment variable holding the key's passphrase, if encrypted.
    pub key_password_env: Option<String>,
    /// File holding the key's passphrase, if encrypted.
    pub key_password_file: Option<PathBuf>,
    /// Skip broker hostname verification (`ssl.endpoint.identification.algorithm=none`).
    /// Default false.
    pub insecure_skip_hostname_verification: bool,
}

/// `kafka.sasl:` — SASL authentication.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// The user name.
    pub username: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
}

/// The SASL mechanisms accepted in `kafka.sasl.mechanism`.
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// librdkafka properties that `kafka.tls` / `kafka.sasl` own: setting them
/// in `kafka.properties` as well is a contradiction, reported.
const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// Problems with `kafka.tls` / `kafka.sasl`: (field under `kafka`, message).
pub(crate) fn check_kafka(cfg: &super::KafkaConfig) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if let Some(tls) = &cfg.tls {
        for (what, p) in [
            ("ca", &tls.ca),
            ("certificate", &tls.certificate),
            ("key", &tls.key),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    errors.push((
                        "tls",
                        format!("kafka.tls.{what}: {} is not a readable file", p.display()),
                    ));
                }
            }
        }
        if tls.certificate.is_some() != tls.key.is_some() {
            errors.push((
                "tls",
                "kafka.tls: `certificate` and `key` go together (mutual TLS)".to_string(),
            ));
        }
        if tls.key_password_env.is_some() || tls.key_password_file.is_some() {
            match SecretSource::from_pair(
                tls.key_password_env.as_deref(),
                tls.key_password_file.as_ref(),
                "key_password",
            )
            .and_then(|s| s.read())
            {
                Ok(_) => {}
                Err(e) => errors.push(("tls", format!("kafka.tls.{e}"))),
            }
        }
    }
    if let Some(sasl) = &cfg.sasl {
        if !SASL_MECHANISMS.contains(&sasl.mechanism.as_str()) {
            errors.push((
                "sasl",
                format!(
                    "kafka.sasl.mechanism: {:?} is not one of {}",
                    sasl.mechanism,
                    SASL_MECHANISMS.join(", ")
                ),
            ));
        }
        if sasl.username.trim().is_empty() {
            errors.push(("sasl", "kafka.sasl.username: must not be empty".to_string()));
        }
        if let Err(e) = SecretSource::from_pair(
            sasl.password_env.as_deref(),
            sasl.password_file.as_ref(),
            "password",
        )
        .and_then(|s| s.read())
        {
            errors.push(("sasl", format!("kafka.sasl.{e}")));
        }
    }
    if cfg.tls.is_some() || cfg.sasl.is_some() {
        for key in cfg.properties.keys() {
            if SECURITY_PROPERTIES.contains(&key.as_str()) {
                errors.push((
                    "properties",
                    format!(
                        "kafka.properties.{key}: set by kafka.tls/kafka.sasl; remove one of the two"
                    ),
                ));
            }
        }
    }
    errors
}

/// The librdkafka properties for `kafka.tls` / `kafka.sasl`, with the
/// secrets read now (values must not be logged).
pub fn kafka_security_properties(
    cfg: &super::KafkaConfig,
) -> Result<Vec<(&'static str, String)>, String> {
    let mut out = Vec::new();
    let protocol = match (&cfg.tls, &cfg.sasl) {
        (None, None) => return Ok(out),
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    out.push(("security.protocol", protocol.to_string()));
    if let Some(tls) = &cfg.tls {
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(ca) = &tls.ca {
            out.push(("ssl.ca.location", path(ca)));
        }
        if let Some(c) = &tls.certificate {
            out.push(("ssl.certificate.location", path(c)));
        }
        if let Some(k) = &tls.key {
            out.push(("ssl.key.location", path(k)));
        }
        if tls.key_password_env.is_some() || tls.key_password_file.is_some() {
            let pw = SecretSource::from_pair(
                tls.key_password_env.as_deref(),
                tls.key_password_file.as_ref(),
                "key_password",
            )
            .and_then(|s| s.read())
            .map_err(|e| format!("kafka.tls.{e}"))?;
            out.push(("ssl.key.password", pw.expose().to_string()));
        }
        out.push((
            "ssl.endpoint.identification.algorithm",
            if tls.insecure_skip_hostname_verification {
                "none"
            } else {
                "https"
            }
            .to_string(),
        ));
    }
    if let Some(sasl) = &cfg.sasl {
        let pw = SecretSource::from_pair(
            sasl.password_env.as_deref(),
            sasl.password_file.as_ref(),
            "password",
        )
        .and_then(|s| s.read())
        .map_err(|e| format!("kafka.sasl.{e}"))?;
        out.push(("sasl.mechanisms", sasl.mechanism.clone()));
        out.push(("sasl.username", sasl.username.clone()));
        out.push(("sasl.password", pw.expose().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        let a: Fingerprint = hex.parse().unwrap();
        let b: Fingerprint = colons.parse().unwrap();
        let c: Fingerprint = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_string(), hex);
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let id = Identity::UserName {
            username: "op".into(),
            password: SecretSource::Env("PW".into()),
        };
        assert!(!format!("{id:?}").contains("hunter2"));
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

    #[test]
    fn device_overrides_and_contradictions() {
        let fleet = SecuritySection::default();
        let raw = RawDeviceSecurity {
            policy: Some(SecurityPolicy::None),
            mode: Some(SecurityMode::SignAndEncrypt),
            ..Default::default()
        };
        assert!(fleet.resolve(Some(&raw)).is_err());
        let raw = RawDeviceSecurity {
            policy: Some(SecurityPolicy::Basic256Sha256),
            mode: Some(SecurityMode::None),
            ..Default::default()
        };
        assert!(fleet.resolve(Some(&raw)).is_err());
        let raw = RawDeviceSecurity {
            trust: Some(TrustMode::AutoAccept),
            server_fingerprint: Some("00".repeat(32)),
            ..Default::default()
        };
        assert!(fleet.resolve(Some(&raw)).is_err());
        let raw = RawDeviceSecurity {
            user: Some(UserPassword {
                username: "op".into(),
                password_env: None,
                password_file: None,
            }),
            ..Default::default()
        };
        let errs = fleet.resolve(Some(&raw)).unwrap_err();
        assert!(errs[0].contains("password_env"), "{errs:?}");
        let d = fleet.resolve(None).unwrap();
        assert_eq!(d, DeviceSecurity::default());
    }
}
