//! A device's `security:` resolved against the fleet-wide section: each
//! field falls back to the section's; contradictions (a policy and a mode
//! that do not go together, a pinned fingerprint with auto-accept, a user
//! without one password source) are reported at the key that made them.
//! The section's own settings (certificate files, channel lifetime) are
//! checked once, by [`SecuritySection::check`].

use std::time::Duration;

use collector_core::config::SecretSource;
use serde::Deserialize;

use super::{
    DeviceSecurity, Fingerprint, Identity, SecurityMode, SecurityPolicy, SecuritySection,
    TrustMode, UserCertificate, UserPassword,
};

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

/// A problem with security settings, and the key it is about: a path
/// below the `security:` mapping (`["user", "password_env"]`; empty: the
/// mapping itself), so that it is reported at that key's line.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) key: Vec<&'static str>,
    pub(crate) message: String,
}

impl Problem {
    fn new(key: &[&'static str], message: impl Into<String>) -> Self {
        Self {
            key: key.to_vec(),
            message: message.into(),
        }
    }
}

impl SecuritySection {
    /// Resolves a device's security from these defaults and its own
    /// settings; problems are the device's own (the section's are
    /// reported once, by `check`), without the device id.
    pub(crate) fn resolve(
        &self,
        raw: Option<&RawDeviceSecurity>,
    ) -> Result<DeviceSecurity, Vec<Problem>> {
        let empty = RawDeviceSecurity::default();
        let raw = raw.unwrap_or(&empty);
        let mut errors = Vec::new();
        let policy = raw.policy.unwrap_or(self.policy);
        let mode = raw.mode.unwrap_or(self.mode);
        let trust = raw.trust.unwrap_or(self.trust);
        // A contradiction the device did not write is the section's.
        if raw.policy.is_some() || raw.mode.is_some() {
            let key = if raw.mode.is_some() { "mode" } else { "policy" };
            check_policy_mode(policy, mode, key, &mut errors);
        }
        let server_fingerprint = match &raw.server_fingerprint {
            None => None,
            Some(s) => match s.parse::<Fingerprint>() {
                Ok(f) => Some(f),
                Err(e) => {
                    errors.push(Problem::new(
                        &["server_fingerprint"],
                        format!("security.server_fingerprint: {e}"),
                    ));
                    None
                }
            },
        };
        if server_fingerprint.is_some() && raw.trust == Some(TrustMode::AutoAccept) {
            errors.push(Problem::new(
                &["trust"],
                "security: server_fingerprint pins one certificate, trust: auto_accept accepts any; choose one",
            ));
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
    pub(crate) fn check(&self) -> Vec<Problem> {
        let mut errors = Vec::new();
        check_policy_mode(self.policy, self.mode, "mode", &mut errors);
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
                        errors.push(Problem::new(
                            &[what],
                            format!("security.{what}: {} is not a readable file", p.display()),
                        ));
                    }
                }
            }
            (Some(_), None) => errors.push(Problem::new(
                &["certificate"],
                "security.certificate: needs `private_key` too (or neither, to generate one)",
            )),
            (None, Some(_)) => errors.push(Problem::new(
                &["private_key"],
                "security.private_key: needs `certificate` too (or neither, to generate one)",
            )),
            (None, None) => {}
        }
        if let Some(uri) = &self.application_uri {
            if uri.trim().is_empty() || !uri.contains(':') {
                errors.push(Problem::new(
                    &["application_uri"],
                    format!(
                        "security.application_uri: {uri:?} is not a URI (e.g. urn:acme:opc-collector)"
                    ),
                ));
            }
        }
        if self.channel_lifetime < Duration::from_secs(10)
            || self.channel_lifetime > Duration::from_millis(u64::from(u32::MAX))
        {
            errors.push(Problem::new(
                &["channel_lifetime"],
                "security.channel_lifetime: must be between 10s and 49 days",
            ));
        }
        errors
    }
}

/// A contradiction between policy and mode, reported at `key`.
fn check_policy_mode(
    policy: SecurityPolicy,
    mode: SecurityMode,
    key: &'static str,
    errors: &mut Vec<Problem>,
) {
    match (policy, mode) {
        (SecurityPolicy::None, SecurityMode::Sign | SecurityMode::SignAndEncrypt) => {
            errors.push(Problem::new(
                &[key],
                format!(
                    "security: policy None cannot {}; choose a policy such as basic256sha256",
                    if mode == SecurityMode::Sign {
                        "sign"
                    } else {
                        "sign and encrypt"
                    }
                ),
            ))
        }
        (p, SecurityMode::None) if p != SecurityPolicy::None && p != SecurityPolicy::Auto => {
            errors.push(Problem::new(
                &[key],
                format!(
                    "security: mode none with policy {} makes no sense; use mode sign or sign_and_encrypt",
                    p.name()
                ),
            ))
        }
        _ => {}
    }
}

/// The identity from a `user` / `user_certificate` pair; `check`: also
/// verify that the secret and files can be read now.
fn identity(
    user: Option<&UserPassword>,
    cert: Option<&UserCertificate>,
    check: bool,
    errors: &mut Vec<Problem>,
) -> Identity {
    match (user, cert) {
        (Some(_), Some(_)) => {
            errors.push(Problem::new(
                &["user_certificate"],
                "security: give either `user` or `user_certificate`, not both",
            ));
            Identity::Anonymous
        }
        (Some(u), None) => {
            if check && u.username.trim().is_empty() {
                errors.push(Problem::new(
                    &["user", "username"],
                    "security.user.username: must not be empty",
                ));
            }
            match SecretSource::from_pair(
                u.password_env.as_deref(),
                u.password_file.as_ref(),
                "password",
            ) {
                Ok(src) => {
                    if check {
                        if let Err(e) = src.read() {
                            let key = match src {
                                SecretSource::Env(_) => "password_env",
                                SecretSource::File(_) => "password_file",
                            };
                            errors.push(Problem::new(
                                &["user", key],
                                format!("security.user.{key}: {e}"),
                            ));
                        }
                    }
                    Identity::UserName {
                        username: u.username.clone(),
                        password: src,
                    }
                }
                Err(e) => {
                    if check {
                        errors.push(Problem::new(&["user"], format!("security.user.{e}")));
                    }
                    Identity::Anonymous
                }
            }
        }
        (None, Some(c)) => {
            if check {
                for (what, p) in [("cert", &c.cert), ("key", &c.key)] {
                    if !p.is_file() {
                        errors.push(Problem::new(
                            &["user_certificate", what],
                            format!(
                                "security.user_certificate.{what}: {} is not a readable file",
                                p.display()
                            ),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(errs[0].message.contains("password_env"), "{errs:?}");
        assert_eq!(errs[0].key, ["user"]);
        let d = fleet.resolve(None).unwrap();
        assert_eq!(d, DeviceSecurity::default());
    }
}
