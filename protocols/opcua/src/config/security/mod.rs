//! OPC UA security settings: the security policy and mode, user identity
//! and server trust (fleet-wide in `security:`, overridable per device in a
//! device's own `security:`), and the collector's application certificate.
//! Passwords are never held here, only where to read them
//! ([`SecretSource`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use collector_core::config::{duration, SecretSource};
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
    #[serde(with = "duration")]
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

mod resolve;
pub(crate) use resolve::RawDeviceSecurity;

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
    fn identities_do_not_print_their_passwords() {
        let id = Identity::UserName {
            username: "op".into(),
            password: SecretSource::Env("PW".into()),
        };
        assert!(!format!("{id:?}").contains("hunter2"));
    }
}
