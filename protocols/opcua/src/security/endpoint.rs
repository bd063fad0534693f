//! Endpoint selection: the offered endpoint a device's policy, mode and
//! identity allow (`auto` = the strongest on offer, never a deprecated
//! policy), or an error listing what the server offers.

use crate::config::{DeviceSecurity, Identity, SecurityMode, SecurityPolicy};
use opcua::crypto::SecurityPolicy as UaPolicy;
use opcua::types::{EndpointDescription, MessageSecurityMode, UserTokenType};

use super::identity::token_type;
use super::SecurityError;

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
