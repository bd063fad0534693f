//! The client's own application certificate: generated once into the PKI
//! directory and reused, or loaded from configured files, and checked
//! against the configured application URI.

use std::path::{Path, PathBuf};

use crate::config::Fingerprint;
use opcua::crypto::{CertificateStore, X509};
use sha2::{Digest, Sha256};

use super::clients::{base_builder, Clients, SecureClients};
use super::server_checks::alt_names;

impl Clients {
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

    pub(super) fn create_secure(&self) -> Result<SecureClients, String> {
        let (cert_path, key_path, generated) = self.own_paths();
        let existing = if cert_path.is_file() {
            let cert = CertificateStore::read_cert(&cert_path).map_err(|e| {
                format!(
                    "{e}: the client certificate is damaged; restore it and its key from a backup{}",
                    if generated {
                        format!(", or delete {} and {} to issue a new one (servers must then trust the new one)", cert_path.display(), key_path.display())
                    } else {
                        String::new()
                    }
                )
            })?;
            check_key_matches(&cert, &cert_path, &key_path, generated)?;
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
                // Dates, host name and application URI: `server_checks`
                // (the library wants the URI first in the alt names). Its
                // trust list, key length and signature checks stay on.
                .verify_server_certs(false)
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
}

/// The private key must read and belong to the certificate: a damaged or
/// swapped key file would otherwise only show as every server refusing the
/// channel.
fn check_key_matches(
    cert: &X509,
    cert_path: &Path,
    key_path: &Path,
    generated: bool,
) -> Result<(), String> {
    use x509_cert::der::Decode;
    let fix = if generated {
        format!(
            "restore both files from a backup, or delete {} and {} to issue a new certificate (servers must then trust the new one)",
            cert_path.display(),
            key_path.display()
        )
    } else {
        "configure the key that belongs to the certificate".to_string()
    };
    let key = CertificateStore::read_pkey(key_path).map_err(|e| {
        format!(
            "client private key {} is unreadable ({e}); {fix}",
            key_path.display()
        )
    })?;
    let key_info = key
        .public_key_to_info()
        .map_err(|e| format!("client private key {}: {e}", key_path.display()))?;
    // The key itself (not the algorithm parameters, which encoders spell
    // differently).
    let cert_key = cert
        .to_der()
        .ok()
        .and_then(|der| x509_cert::Certificate::from_der(&der).ok())
        .map(|c| c.tbs_certificate.subject_public_key_info.subject_public_key);
    if cert_key.as_ref() != Some(&key_info.subject_public_key) {
        return Err(format!(
            "client private key {} does not belong to certificate {}; {fix}",
            key_path.display(),
            cert_path.display()
        ));
    }
    Ok(())
}

/// SHA-256 of a certificate's DER encoding.
pub(crate) fn fingerprint(der: &[u8]) -> Fingerprint {
    Fingerprint(Sha256::digest(der).into())
}

/// The application URI in a certificate's subjectAltName.
fn application_uri_of(cert: &X509) -> Option<String> {
    let der = cert.to_der().ok()?;
    alt_names(&der).uris.into_iter().next()
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
