//! Server trust: whether the chosen endpoint's certificate is trusted (trust
//! list, pinned fingerprint, or an explicit auto-accept), decided before a
//! secure channel opens so that a rejection says what to do, and the client
//! (trust store) the session is then built with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{DeviceSecurity, Identity, TrustMode};
use opcua::client::Client;
use opcua::crypto::{CertificateStore, X509};
use opcua::types::{EndpointDescription, MessageSecurityMode, UserTokenPolicy};

use super::certificate::fingerprint;
use super::clients::{Clients, SecureClients};
use super::endpoint::select_endpoint;
use super::server_checks::check_server_certificate;
use super::SecurityError;

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
    /// Whether the session is secured (a secure client, with a certificate).
    pub(crate) fn is_secure(&self) -> bool {
        self.secure.is_some()
    }

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

impl Clients {
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
        // A server that lists no token policies takes the standard
        // anonymous one (the identity token needs a policy id).
        if endpoint.user_identity_tokens.is_none() && sec.identity == Identity::Anonymous {
            endpoint.user_identity_tokens = Some(vec![UserTokenPolicy::anonymous()]);
        }
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
        check_server_certificate(url, &cert, &der, endpoint.server.application_uri.as_ref())
            .map_err(SecurityError::Trust)?;
        Ok(Prepared {
            secure: Some((clients, trust)),
            endpoint,
        })
    }
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

/// Writes `der` as `dir/name` unless that file exists, atomically: a
/// session being validated meanwhile (the library compares its server's
/// certificate with this file) sees no file or the whole file, never one
/// being written. Devices sharing a certificate (one vendor image, one
/// server with several endpoints) prepare concurrently: a plain write
/// truncated the file under a validation in flight, which then failed
/// with `BadUnexpectedError`.
fn write_if_absent(dir: &Path, name: &str, der: &[u8]) -> Result<(), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(name);
    if path.is_file() {
        return Ok(());
    }
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, der))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers racing to create the same certificate file while a reader
    /// compares it (as the library's validation does): the reader sees no
    /// file or the whole file. A plain `std::fs::write` fails this within a
    /// few rounds (a second writer truncates the first one's file).
    #[test]
    fn concurrent_writes_never_show_a_partial_certificate() {
        let der: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        for round in 0..20 {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("trusted");
            let path = dir.join("server.der");
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        if let Ok(bytes) = std::fs::read(&path) {
                            assert!(
                                bytes == der,
                                "round {round}: a reader saw {} of {} bytes",
                                bytes.len(),
                                der.len()
                            );
                        }
                    }
                });
                let writers: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| write_if_absent(&dir, "server.der", &der)))
                    .collect();
                for w in writers {
                    w.join().unwrap().unwrap();
                }
                // Give the reader time to read the finished file too.
                std::thread::sleep(std::time::Duration::from_millis(2));
                done.store(true, Ordering::Relaxed);
                reader.join().unwrap();
            });
            assert_eq!(std::fs::read(&path).unwrap(), der);
            let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
            assert_eq!(left.len(), 1, "no temporary file left behind: {left:?}");
        }
    }
}
