//! The fleet's secure endpoint ([`SimSecurity`]): which OPC UA endpoint it serves
//! and the shared server certificate, generated once into the PKI directory.

use std::path::PathBuf;

use opcua::crypto::{CertificateStore, X509Data};
use opcua_server::ServerEndpoint;

use crate::{
    device_server::{MakeEndpoint, SecureServing, SECURE_APPLICATION_URI},
    SimError,
};

/// A secure endpoint for every device of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSecurity {
    /// `basic256sha256`, `aes128_sha256_rsaoaep` or `aes256_sha256_rsapss`.
    pub policy: String,
    /// `sign` or `sign_and_encrypt`.
    pub mode: String,
    /// Accepted users (name, password); empty: anonymous only.
    pub users: Vec<(String, String)>,
    /// PKI directory: the fleet's server certificate (`own/cert.der`,
    /// generated once if absent, shared by every device) and, per device,
    /// the client certificates it has seen
    /// (`devices/<device id>/trusted/`: every client is accepted).
    pub pki_dir: PathBuf,
}

impl SimSecurity {
    fn endpoint(&self) -> Result<MakeEndpoint, SimError> {
        let f: MakeEndpoint = match (self.policy.as_str(), self.mode.as_str()) {
            // Deprecated by async-opcua, still run in plants: serve it when asked.
            #[allow(deprecated)]
            ("basic256sha256", "sign") => |p, ids| ServerEndpoint::new_basic256sha256_sign(p, ids),
            ("basic256sha256", "sign_and_encrypt") => {
                |p, ids| ServerEndpoint::new_basic256sha256_sign_encrypt(p, ids)
            }
            ("aes128_sha256_rsaoaep", "sign") => {
                |p, ids| ServerEndpoint::new_aes128_sha256_rsaoaep_sign(p, ids)
            }
            ("aes128_sha256_rsaoaep", "sign_and_encrypt") => {
                |p, ids| ServerEndpoint::new_aes128_sha256_rsaoaep_sign_encrypt(p, ids)
            }
            ("aes256_sha256_rsapss", "sign") => {
                |p, ids| ServerEndpoint::new_aes256_sha256_rsapss_sign(p, ids)
            }
            ("aes256_sha256_rsapss", "sign_and_encrypt") => {
                |p, ids| ServerEndpoint::new_aes256_sha256_rsapss_sign_encrypt(p, ids)
            }
            (p, m) => {
                return Err(SimError::Config(format!(
                    "unsupported security {p}/{m}: policy basic256sha256, aes128_sha256_rsaoaep or aes256_sha256_rsapss; mode sign or sign_and_encrypt"
                )))
            }
        };
        Ok(f)
    }

    /// The fleet's server certificate (DER).
    pub fn certificate_path(&self) -> PathBuf {
        self.pki_dir.join("own").join("cert.der")
    }

    fn private_key_path(&self) -> PathBuf {
        self.pki_dir.join("private").join("private.pem")
    }

    /// Generates the shared server certificate unless it exists.
    pub(super) fn serving(&self, host: &str) -> Result<SecureServing, SimError> {
        let endpoint = self.endpoint()?;
        let (cert, key) = (self.certificate_path(), self.private_key_path());
        if !(cert.is_file() && key.is_file()) {
            for d in [cert.parent(), key.parent()].into_iter().flatten() {
                std::fs::create_dir_all(d).map_err(|source| SimError::Io {
                    context: format!("creating {}", d.display()),
                    source,
                })?;
            }
            let description = opcua::types::ApplicationDescription {
                application_uri: SECURE_APPLICATION_URI.into(),
                application_name: opcua::types::LocalizedText::new("", "opc-loadgen"),
                ..Default::default()
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let data = X509Data::from((description, Some(vec![host.to_string()])));
            CertificateStore::create_certificate_and_key(&data, true, &cert, &key)
                .map_err(SimError::Config)?;
        }
        Ok(SecureServing {
            endpoint,
            users: self.users.clone(),
            certificate: cert,
            private_key: key,
        })
    }
}
