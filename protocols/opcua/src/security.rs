//! Secure sessions: which endpoint a device's settings allow (`auto` = the
//! strongest on offer), whether the server's certificate is trusted (trust
//! list, pinned fingerprint, or an explicit auto-accept), the user identity
//! token, and the client's own application certificate (generated once into
//! the PKI directory and reused, or loaded from files).
//!
//! Trust is decided here, before a secure channel is opened, so that a
//! rejection says exactly what to do: which file to move where, or which
//! fingerprint to pin. The library's certificate store then checks the same
//! certificate again (validity dates, hostname, application URI) when the
//! session is created. Each trust mode has its own store, so a certificate
//! pinned for one device, or auto-accepted for another, is never trusted
//! by a device with strict trust.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{
    DeviceSecurity, Fingerprint, Identity, SecurityMode, SecurityPolicy, SecuritySection,
    SessionConfig, TrustMode,
};
use opcua::client::{Client, ClientBuilder, IdentityToken};
use opcua::crypto::{CertificateStore, SecurityPolicy as UaPolicy, X509};
use opcua::types::{EndpointDescription, MessageSecurityMode, UserTokenType};
use sha2::{Digest, Sha256};

use crate::{MAX_ARRAY_LENGTH, MAX_MESSAGE_SIZE, SEND_CHUNK_SIZE};

/// Why a secure session could not be prepared. `Trust` and `Auth` are
/// operator-actionable and logged at warn with the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecurityError {
    /// The server's certificate is not trusted (or not the pinned one).
    #[error("{0}")]
    Trust(String),
    /// No offered endpoint matches the device's policy/mode/identity.
    #[error("{0}")]
    NoEndpoint(String),
    /// The client side is not usable: own certificate, user identity files.
    #[error("{0}")]
    Setup(String),
}

/// The clients sessions are built from: one for security None (needs no
/// certificate), and, created on the first secure connect, one per trust
/// mode sharing the application certificate.
pub(crate) struct Clients {
    plain: Client,
    session: SessionConfig,
    settings: SecuritySection,
    pki_dir: PathBuf,
    default_application_uri: String,
    /// Created on the first secure connect; a failure is retried at the
    /// next one (e.g. once the PKI directory is writable).
    secure: Mutex<Option<Arc<SecureClients>>>,
}

struct SecureClients {
    strict: Client,
    pinned: Client,
    auto_accept: Client,
}

/// The client for a chosen endpoint.
pub(crate) struct Prepared {
    secure: Option<(Arc<SecureClients>, Trust)>,
    pub(crate) endpoint: EndpointDescription,
}

/// Which trust store a secure session uses.
#[derive(Clone, Copy)]
enum Trust {
    Strict,
    Pinned,
    AutoAccept,
}

impl Prepared {
    /// The client to build the session with (`plain` for security None).
    pub(crate) fn client<'a>(&'a self, plain: &'a Client) -> &'a Client {
        match &self.secure {
            None => plain,
            Some((c, Trust::Strict)) => &c.strict,
            Some((c, Trust::Pinned)) => &c.pinned,
            Some((c, Trust::AutoAccept)) => &c.auto_accept,
        }
    }
}

/// Options every client shares: limits, timeouts, our own reconnects.
fn base_builder(cfg: &SessionConfig, settings: &SecuritySection) -> ClientBuilder {
    ClientBuilder::new()
        .application_name(cfg.application_name.clone())
        .product_uri("urn:opc-collector")
        // We own reconnects (see `session`): the library tries once.
        .session_retry_limit(0)
        .keep_alive_interval(cfg.keep_alive_interval)
        .max_failed_keep_alive_count(u64::from(cfg.max_failed_keep_alives))
        .request_timeout(cfg.read_timeout)
        .max_array_length(MAX_ARRAY_LENGTH)
        .max_message_size(MAX_MESSAGE_SIZE)
        .max_chunk_count(0)
        .max_chunk_size(SEND_CHUNK_SIZE)
        .channel_lifetime(u32::try_from(settings.channel_lifetime.as_millis()).unwrap_or(u32::MAX))
}

impl Clients {
    /// `pki_dir`: resolved by the caller (`security.pki_dir`, else
    /// `<state_dir>/pki`, else `./pki`).
    pub(crate) fn new(
        session: &SessionConfig,
        settings: &SecuritySection,
        pki_dir: PathBuf,
        collector_id: &str,
    ) -> Result<Self, String> {
        // Security None needs no PKI: point it at a scratch dir it may
        // create or not, never at the real one.
        let plain = base_builder(session, settings)
            .application_uri("urn:opc-collector")
            .create_sample_keypair(false)
            .trust_server_certs(false)
            .pki_dir(std::env::temp_dir().join("opc-collector-pki-none"))
            .client()
            .map_err(|errs| errs.join("; "))?;
        Ok(Self {
            plain,
            session: session.clone(),
            settings: settings.clone(),
            pki_dir,
            default_application_uri: format!("urn:opc-collector:{collector_id}"),
            secure: Mutex::new(None),
        })
    }

    /// The client for security None (also used for discovery).
    pub(crate) fn plain(&self) -> &Client {
        &self.plain
    }

    /// The secure clients, creating the application certificate on first
    /// use (blocking: call from the blocking pool).
    fn secure(&self) -> Result<Arc<SecureClients>, SecurityError> {
        let mut slot = self
            .secure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let created = Arc::new(self.create_secure().map_err(SecurityError::Setup)?);
        *slot = Some(created.clone());
        Ok(created)
    }

    fn own_paths(&self) -> (PathBuf, PathBuf, bool) {
        match (&self.settings.certificate, &self.settings.private_key) {
            (Some(c), Some(k)) => (absolute(c), absolute(k), false),
            _ => (
                absolute(&self.pki_dir.join("own").join("cert.der")),
                absolute(&self.pki_dir.join("private").join("private.pem")),
                true,
            ),
        }
    }

    fn create_secure(&self) -> Result<SecureClients, String> {
        let (cert_path, key_path, generated) = self.own_paths();
        let existing = if cert_path.is_file() {
            let cert = CertificateStore::read_cert(&cert_path)?;
            let uri = application_uri_of(&cert).ok_or_else(|| {
                format!(
                    "client certificate {} has no application URI (a URI in its subjectAltName), which OPC UA requires",
                    cert_path.display()
                )
            })?;
            Some((cert, uri))
        } else if !generated {
            return Err(format!(
                "client certificate {} is not readable",
                cert_path.display()
            ));
        } else {
            None
        };
        let application_uri = match (&existing, &self.settings.application_uri) {
            (Some((_, in_cert)), Some(configured)) if in_cert != configured => {
                return Err(format!(
                    "client certificate {} was issued for application URI {in_cert}, but security.application_uri is {configured}; {}",
                    cert_path.display(),
                    if generated {
                        format!("remove the setting, or delete {} and {} to issue a new certificate (servers must then trust the new one)", cert_path.display(), key_path.display())
                    } else {
                        "they must match".to_string()
                    }
                ));
            }
            (Some((_, in_cert)), _) => in_cert.clone(),
            (None, Some(configured)) => configured.clone(),
            (None, None) => self.default_application_uri.clone(),
        };
        let build = |pki: PathBuf, trust_unknown: bool| {
            base_builder(&self.session, &self.settings)
                .application_uri(application_uri.clone())
                .pki_dir(pki)
                .certificate_path(cert_path.clone())
                .private_key_path(key_path.clone())
                .create_sample_keypair(generated)
                .trust_server_certs(trust_unknown)
                .client()
                .map_err(|errs| errs.join("; "))
        };
        // The strict client first: it generates the certificate if needed.
        let strict = build(self.pki_dir.clone(), false)?;
        let cert = CertificateStore::read_cert(&cert_path).map_err(|e| {
            format!(
                "client certificate {}: {e} (is {} writable?)",
                cert_path.display(),
                self.pki_dir.display()
            )
        })?;
        let fingerprint = fingerprint(&cert.as_byte_string().value.unwrap_or_default());
        if existing.is_none() {
            restrict_permissions(&key_path);
            tracing::info!(certificate = %cert_path.display(), %application_uri, %fingerprint, "generated the client application certificate; servers must trust it (it is reused from now on)");
        } else {
            tracing::info!(certificate = %cert_path.display(), %application_uri, %fingerprint, "client application certificate");
        }
        let pinned = build(self.pki_dir.join("pinned"), false)?;
        let auto_accept = build(self.pki_dir.join("auto-accepted"), true)?;
        Ok(SecureClients {
            strict,
            pinned,
            auto_accept,
        })
    }

    /// Picks the endpoint and the client (by trust) for a device; blocking
    /// (certificate files).
    pub(crate) fn prepare(
        &self,
        url: &str,
        sec: &DeviceSecurity,
        offered: &[EndpointDescription],
    ) -> Result<Prepared, SecurityError> {
        let mut endpoint = select_endpoint(url, sec, offered)?;
        // Connect to the address we were given, not the one the server
        // advertises (NAT, relays, containers).
        endpoint.endpoint_url = url.into();
        if endpoint.security_mode == MessageSecurityMode::None {
            return Ok(Prepared {
                secure: None,
                endpoint,
            });
        }
        let clients = self.secure()?;
        let der = endpoint
            .server_certificate
            .value
            .clone()
            .unwrap_or_default();
        if der.is_empty() {
            return Err(SecurityError::Trust(format!(
                "{url} offers a secure endpoint without a server certificate"
            )));
        }
        let cert = X509::from_der(&der).map_err(|e| {
            SecurityError::Trust(format!("{url}: server certificate does not parse: {e}"))
        })?;
        let fp = fingerprint(&der);
        let file_name = CertificateStore::cert_file_name(&cert);
        let trust = if let Some(pin) = &sec.server_fingerprint {
            if *pin != fp {
                return Err(SecurityError::Trust(format!(
                    "server certificate of {url} has SHA-256 fingerprint {fp}, not the pinned {pin}: refusing to connect"
                )));
            }
            let dir = self.pki_dir.join("pinned").join("trusted");
            write_if_absent(&dir, &file_name, &der).map_err(SecurityError::Setup)?;
            Trust::Pinned
        } else {
            match sec.trust {
                TrustMode::AutoAccept => Trust::AutoAccept,
                TrustMode::Strict => {
                    let trusted = self.pki_dir.join("trusted");
                    let rejected = self.pki_dir.join("rejected");
                    if !trusted.join(&file_name).is_file()
                        && find_same_certificate(&trusted, &der).is_some()
                    {
                        // Trusted under another file name: give the store
                        // the name it looks for.
                        write_if_absent(&trusted, &file_name, &der)
                            .map_err(SecurityError::Setup)?;
                    }
                    if trusted.join(&file_name).is_file() {
                        // Copied rather than moved: the store would check
                        // `rejected/` first and refuse it.
                        let stale = rejected.join(&file_name);
                        if stale.is_file() {
                            let _ = std::fs::remove_file(&stale);
                        }
                    } else {
                        write_if_absent(&rejected, &file_name, &der)
                            .map_err(SecurityError::Setup)?;
                        return Err(SecurityError::Trust(format!(
                            "server certificate of {url} is not trusted (SHA-256 {fp}); it was saved as {}: to trust it, move that file into {}/, or pin it for this device with `security: {{ server_fingerprint: \"{fp}\" }}`",
                            rejected.join(&file_name).display(),
                            trusted.display()
                        )));
                    }
                    Trust::Strict
                }
            }
        };
        Ok(Prepared {
            secure: Some((clients, trust)),
            endpoint,
        })
    }
}

/// The user identity token; reads the password now (so a rotated Secret
/// applies at the next connect).
pub(crate) fn identity_token(identity: &Identity) -> Result<IdentityToken, SecurityError> {
    match identity {
        Identity::Anonymous => Ok(IdentityToken::Anonymous),
        Identity::UserName { username, password } => {
            let pw = password
                .read()
                .map_err(|e| SecurityError::Setup(format!("password of user `{username}`: {e}")))?;
            Ok(IdentityToken::new_user_name(
                username.clone(),
                pw.expose().to_string(),
            ))
        }
        Identity::Certificate { cert, key } => IdentityToken::new_x509_path(cert, key)
            .map_err(|e| SecurityError::Setup(format!("user certificate: {e}"))),
    }
}

fn token_type(identity: &Identity) -> UserTokenType {
    match identity {
        Identity::Anonymous => UserTokenType::Anonymous,
        Identity::UserName { .. } => UserTokenType::UserName,
        Identity::Certificate { .. } => UserTokenType::Certificate,
    }
}

/// Policies `auto` may choose, strongest first (never a deprecated one).
const AUTO_POLICIES: &[UaPolicy] = &[
    UaPolicy::Aes256Sha256RsaPss,
    UaPolicy::Basic256Sha256,
    UaPolicy::Aes128Sha256RsaOaep,
    UaPolicy::None,
];

fn ua_policy(p: SecurityPolicy) -> Option<UaPolicy> {
    match p {
        SecurityPolicy::Auto => None,
        SecurityPolicy::None => Some(UaPolicy::None),
        SecurityPolicy::Basic256Sha256 => Some(UaPolicy::Basic256Sha256),
        SecurityPolicy::Aes128Sha256RsaOaep => Some(UaPolicy::Aes128Sha256RsaOaep),
        SecurityPolicy::Aes256Sha256RsaPss => Some(UaPolicy::Aes256Sha256RsaPss),
        SecurityPolicy::Basic256 => Some(UaPolicy::Basic256),
        SecurityPolicy::Basic128Rsa15 => Some(UaPolicy::Basic128Rsa15),
    }
}

fn mode_rank(m: MessageSecurityMode) -> u8 {
    match m {
        MessageSecurityMode::SignAndEncrypt => 2,
        MessageSecurityMode::Sign => 1,
        _ => 0,
    }
}

/// The endpoint to use among those offered: allowed by the device's policy
/// and mode, accepting its identity; the strongest if several.
pub(crate) fn select_endpoint(
    url: &str,
    sec: &DeviceSecurity,
    offered: &[EndpointDescription],
) -> Result<EndpointDescription, SecurityError> {
    let wanted_token = token_type(&sec.identity);
    let wanted_policy = ua_policy(sec.policy);
    // A password or a pin is only meaningful on a secure channel: then
    // `auto` never falls back to None (naming `policy: none` still can).
    let secure_only = wanted_policy.is_none()
        && (sec.identity != Identity::Anonymous || sec.server_fingerprint.is_some());
    let policy_rank = |p: UaPolicy| {
        AUTO_POLICIES
            .iter()
            .position(|a| *a == p)
            .map(|i| AUTO_POLICIES.len() - i)
    };
    let best = offered
        .iter()
        .filter_map(|e| {
            let policy = UaPolicy::from_uri(e.security_policy_uri.as_ref());
            let allowed = match wanted_policy {
                Some(w) => policy == w,
                None => {
                    policy_rank(policy).is_some()
                        && !(secure_only && e.security_mode == MessageSecurityMode::None)
                }
            };
            let mode_ok = match sec.mode {
                SecurityMode::Auto => matches!(
                    e.security_mode,
                    MessageSecurityMode::None
                        | MessageSecurityMode::Sign
                        | MessageSecurityMode::SignAndEncrypt
                ),
                SecurityMode::None => e.security_mode == MessageSecurityMode::None,
                SecurityMode::Sign => e.security_mode == MessageSecurityMode::Sign,
                SecurityMode::SignAndEncrypt => {
                    e.security_mode == MessageSecurityMode::SignAndEncrypt
                }
            };
            let token_ok = e
                .user_identity_tokens
                .as_ref()
                .is_some_and(|t| t.iter().any(|p| p.token_type == wanted_token))
                || (wanted_token == UserTokenType::Anonymous && e.user_identity_tokens.is_none());
            (allowed && mode_ok && token_ok)
                .then(|| ((mode_rank(e.security_mode), policy_rank(policy)), e))
        })
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, e)| e.clone());
    best.ok_or_else(|| {
        let offers: Vec<String> = offered
            .iter()
            .map(|e| {
                let tokens: Vec<String> = e
                    .user_identity_tokens
                    .iter()
                    .flatten()
                    .map(|t| format!("{:?}", t.token_type))
                    .collect();
                format!(
                    "{}/{:?} [{}]",
                    UaPolicy::from_uri(e.security_policy_uri.as_ref()),
                    e.security_mode,
                    tokens.join(", ")
                )
            })
            .collect();
        SecurityError::NoEndpoint(format!(
            "no endpoint of {url} matches policy {}, mode {} and identity {}; it offers: {}",
            sec.policy.name(),
            sec.mode.name(),
            sec.identity.describe(),
            if offers.is_empty() {
                "nothing".to_string()
            } else {
                offers.join("; ")
            }
        ))
    })
}

/// SHA-256 of a certificate's DER encoding.
pub(crate) fn fingerprint(der: &[u8]) -> Fingerprint {
    Fingerprint(Sha256::digest(der).into())
}

/// The application URI in a certificate's subjectAltName.
fn application_uri_of(cert: &X509) -> Option<String> {
    use x509_cert::der::oid::AssociatedOid;
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let der = cert.to_der().ok()?;
    let parsed = x509_cert::Certificate::from_der(&der).ok()?;
    let exts = parsed.tbs_certificate.extensions?;
    exts.iter()
        .filter(|e| e.extn_id == SubjectAltName::OID)
        .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
        .flat_map(|san| san.0)
        .find_map(|n| match n {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        })
}

/// A file in `dir` holding this certificate (DER, or PEM of it), whatever
/// its name.
fn find_same_certificate(dir: &Path, der: &[u8]) -> Option<PathBuf> {
    let want = fingerprint(der);
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let path = e.path();
        let cert = CertificateStore::read_cert(&path).ok()?;
        let bytes = cert.as_byte_string().value?;
        (fingerprint(&bytes) == want).then_some(path)
    })
}

fn write_if_absent(dir: &Path, name: &str, der: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, der))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Owner-only access to a generated private key (the library writes it
/// with the process umask).
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(key = %path.display(), error = %e, "cannot restrict the private key to its owner");
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{UAString, UserTokenPolicy};

    fn ep(
        policy: UaPolicy,
        mode: MessageSecurityMode,
        tokens: &[UserTokenType],
    ) -> EndpointDescription {
        EndpointDescription {
            endpoint_url: UAString::from("opc.tcp://advertised:4840/"),
            security_policy_uri: UAString::from(policy.to_uri()),
            security_mode: mode,
            user_identity_tokens: Some(
                tokens
                    .iter()
                    .map(|t| UserTokenPolicy {
                        token_type: *t,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn auto_picks_the_strongest_offered_and_never_a_deprecated_policy() {
        use MessageSecurityMode as M;
        let offered = [
            ep(UaPolicy::None, M::None, &[UserTokenType::Anonymous]),
            ep(
                UaPolicy::Basic256,
                M::SignAndEncrypt,
                &[UserTokenType::Anonymous],
            ),
            ep(
                UaPolicy::Basic256Sha256,
                M::Sign,
                &[UserTokenType::Anonymous],
            ),
            ep(
                UaPolicy::Basic256Sha256,
                M::SignAndEncrypt,
                &[UserTokenType::Anonymous],
            ),
            ep(
                UaPolicy::Aes128Sha256RsaOaep,
                M::SignAndEncrypt,
                &[UserTokenType::Anonymous],
            ),
        ];
        let sec = DeviceSecurity::default();
        let e = select_endpoint("opc.tcp://h:1", &sec, &offered).unwrap();
        assert_eq!(
            UaPolicy::from_uri(e.security_policy_uri.as_ref()),
            UaPolicy::Basic256Sha256
        );
        assert_eq!(e.security_mode, M::SignAndEncrypt);
        // Only None and a deprecated policy: auto takes None.
        let e = select_endpoint("opc.tcp://h:1", &sec, &offered[..2]).unwrap();
        assert_eq!(e.security_mode, M::None);
        // Named explicitly, the deprecated one is allowed.
        let sec = DeviceSecurity {
            policy: SecurityPolicy::Basic256,
            ..Default::default()
        };
        let e = select_endpoint("opc.tcp://h:1", &sec, &offered).unwrap();
        assert_eq!(
            UaPolicy::from_uri(e.security_policy_uri.as_ref()),
            UaPolicy::Basic256
        );
    }

    #[test]
    fn identity_and_mode_filter_and_the_error_lists_the_offers() {
        use MessageSecurityMode as M;
        let offered = [
            ep(UaPolicy::None, M::None, &[UserTokenType::Anonymous]),
            ep(
                UaPolicy::Basic256Sha256,
                M::Sign,
                &[UserTokenType::UserName],
            ),
        ];
        let sec = DeviceSecurity {
            identity: Identity::UserName {
                username: "op".into(),
                password: collector_core::config::SecretSource::Env("X".into()),
            },
            ..Default::default()
        };
        let e = select_endpoint("opc.tcp://h:1", &sec, &offered).unwrap();
        assert_eq!(e.security_mode, M::Sign);
        // A password never goes over a None channel chosen by `auto`.
        let plain_only = [ep(UaPolicy::None, M::None, &[UserTokenType::UserName])];
        assert!(select_endpoint("opc.tcp://h:1", &sec, &plain_only).is_err());
        let explicit = DeviceSecurity {
            policy: SecurityPolicy::None,
            ..sec.clone()
        };
        assert!(select_endpoint("opc.tcp://h:1", &explicit, &plain_only).is_ok());
        let sec = DeviceSecurity {
            mode: SecurityMode::SignAndEncrypt,
            ..sec
        };
        let err = select_endpoint("opc.tcp://h:1", &sec, &offered)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SignAndEncrypt") && err.contains("Basic256Sha256/Sign [UserName]"),
            "{err}"
        );
    }
}
