//! `endpoints`: what a server offers (GetEndpoints, no session), what a
//! device's security settings pick among it, and (through a session with
//! those settings) the server's namespaces and operation limits.

use collector_core::config::Device;
use collector_core::ReadError;
use opcua::crypto::{SecurityPolicy as UaPolicy, X509};
use opcua::types::{
    EndpointDescription, MessageSecurityMode, NodeId, ReadValueId, TimestampsToReturn,
    UserTokenType, VariableId, Variant,
};

use crate::security::{fingerprint, select_endpoint};
use crate::OpcUaProtocol;
use tracing::instrument::WithSubscriber;

/// What a server says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerInfo {
    /// The URL asked.
    pub url: String,
    /// The server's application URI.
    pub application_uri: String,
    /// Its application name.
    pub application_name: String,
    /// Its product URI.
    pub product_uri: String,
    /// The certificates its endpoints present (usually one).
    pub certificates: Vec<CertificateInfo>,
    /// Its endpoints, as offered.
    pub endpoints: Vec<OfferedEndpoint>,
    /// What the device's settings pick (`policy/mode`, token policy id).
    pub chosen: Option<String>,
    /// Why nothing matches, when nothing does.
    pub not_chosen: Option<String>,
    /// Why that is the choice.
    pub why: String,
    /// Namespaces and limits, through a session with the device's
    /// settings.
    pub session: Option<SessionInfo>,
    /// Why that session did not open, when it did not.
    pub session_error: Option<String>,
}

/// A server certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertificateInfo {
    /// Subject.
    pub subject: String,
    /// Validity start (RFC 3339).
    pub not_before: String,
    /// Validity end (RFC 3339).
    pub not_after: String,
    /// SHA-256 of the DER encoding: what `server_fingerprint` pins.
    pub sha256: String,
}

/// One endpoint a server offers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OfferedEndpoint {
    /// Its URL.
    pub url: String,
    /// Security policy, as `security.policy` names it (`none`,
    /// `basic256sha256`, ...).
    pub policy: String,
    /// Message security mode (`none`, `sign`, `sign_and_encrypt`).
    pub mode: String,
    /// The server's own ranking.
    pub security_level: u8,
    /// The user identities it takes.
    pub user_tokens: Vec<UserToken>,
}

/// A user identity an endpoint takes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserToken {
    /// `anonymous`, `username`, `certificate` or `issued`.
    pub kind: String,
    /// The server's id of this token policy (sent back in the token).
    pub policy_id: String,
    /// The policy that protects the token, when not the channel's.
    pub security_policy: Option<String>,
}

/// What a session reveals.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    /// The namespace array (index = position).
    pub namespaces: Vec<String>,
    /// Operation limits (0: no limit given), by name.
    pub operation_limits: Vec<(String, u32)>,
}

fn policy_name(uri: &str) -> String {
    match UaPolicy::from_uri(uri) {
        UaPolicy::None => "none".into(),
        UaPolicy::Basic256Sha256 => "basic256sha256".into(),
        UaPolicy::Aes128Sha256RsaOaep => "aes128_sha256_rsaoaep".into(),
        UaPolicy::Aes256Sha256RsaPss => "aes256_sha256_rsapss".into(),
        UaPolicy::Basic256 => "basic256".into(),
        UaPolicy::Basic128Rsa15 => "basic128rsa15".into(),
        _ => uri.to_string(),
    }
}

fn mode_name(m: MessageSecurityMode) -> &'static str {
    match m {
        MessageSecurityMode::None => "none",
        MessageSecurityMode::Sign => "sign",
        MessageSecurityMode::SignAndEncrypt => "sign_and_encrypt",
        _ => "invalid",
    }
}

fn token_kind(t: UserTokenType) -> &'static str {
    match t {
        UserTokenType::Anonymous => "anonymous",
        UserTokenType::UserName => "username",
        UserTokenType::Certificate => "certificate",
        UserTokenType::IssuedToken => "issued",
    }
}

fn offered(e: &EndpointDescription) -> OfferedEndpoint {
    OfferedEndpoint {
        url: e.endpoint_url.to_string(),
        policy: policy_name(e.security_policy_uri.as_ref()),
        mode: mode_name(e.security_mode).into(),
        security_level: e.security_level,
        user_tokens: e
            .user_identity_tokens
            .iter()
            .flatten()
            .map(|t| UserToken {
                kind: token_kind(t.token_type).into(),
                policy_id: t.policy_id.to_string(),
                security_policy: (!t.security_policy_uri.is_empty())
                    .then(|| policy_name(t.security_policy_uri.as_ref())),
            })
            .collect(),
    }
}

fn certificate(e: &EndpointDescription) -> Option<CertificateInfo> {
    if e.server_certificate.is_null_or_empty() {
        return None;
    }
    let der = e.server_certificate.as_ref();
    let cert = X509::from_der(der).ok()?;
    let time = |t: Result<chrono::DateTime<chrono::Utc>, _>| {
        t.map(|t| t.to_rfc3339()).unwrap_or_else(|_| "?".into())
    };
    Some(CertificateInfo {
        subject: cert.subject_name(),
        not_before: time(cert.not_before()),
        not_after: time(cert.not_after()),
        sha256: fingerprint(der).to_string(),
    })
}

/// The operation limits worth knowing, by name.
const LIMITS: &[(&str, VariableId)] = &[
    ("MaxNodesPerRead", VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
    ("MaxNodesPerBrowse", VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse),
    (
        "MaxNodesPerHistoryReadData",
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
    ),
    (
        "MaxMonitoredItemsPerCall",
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    ),
    (
        "MaxNodesPerTranslateBrowsePathsToNodeIds",
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
    ),
    ("MaxBrowseContinuationPoints", VariableId::Server_ServerCapabilities_MaxBrowseContinuationPoints),
];

pub(super) async fn endpoints(
    protocol: &OpcUaProtocol,
    device: &Device,
) -> Result<ServerInfo, ReadError> {
    let url = device.endpoint.as_str();
    let opc = protocol
        .settings
        .device(device)
        .map_err(|e| ReadError::Config(collector_core::error::ConfigErrors(e).to_string()))?;
    let timeout = protocol.pool.config().connect_timeout;
    let connect_err = |reason: String| ReadError::Connect {
        endpoint: url.to_string(),
        reason,
    };
    let eps = tokio::time::timeout(
        timeout,
        protocol
            .pool
            .clients()
            .plain()
            .get_server_endpoints_from_url(url)
            .with_subscriber(crate::session::without_false_alarms()),
    )
    .await
    .map_err(|_| connect_err(format!("GetEndpoints: no answer within {timeout:?}")))?
    .map_err(|e| connect_err(format!("GetEndpoints: {e}")))?;
    let first = eps.first();
    let mut certificates: Vec<CertificateInfo> = Vec::new();
    for c in eps.iter().filter_map(certificate) {
        if !certificates.iter().any(|k| k.sha256 == c.sha256) {
            certificates.push(c);
        }
    }
    let chosen = select_endpoint(url, &opc.security, &eps)
        .map(|e| {
            let token = e
                .find_policy(crate::security::token_type(&opc.security.identity))
                .map(|p| p.policy_id.to_string())
                .unwrap_or_default();
            format!(
                "{}/{} with {} (token policy `{token}`)",
                policy_name(e.security_policy_uri.as_ref()),
                mode_name(e.security_mode),
                opc.security.identity.describe()
            )
        })
        .map_err(|e| e.to_string());
    let why = format!(
        "policy {} and mode {} with {}: {}",
        opc.security.policy.name(),
        opc.security.mode.name(),
        opc.security.identity.describe(),
        "`auto` takes the strongest offered of aes256_sha256_rsapss, basic256sha256, aes128_sha256_rsaoaep (never a deprecated policy), sign_and_encrypt before sign, and none only when no secure endpoint takes the identity (never with a user or a pinned fingerprint)"
    );
    let session = session_info(protocol, device, &opc.security).await;
    Ok(ServerInfo {
        url: url.to_string(),
        application_uri: first
            .map(|e| e.server.application_uri.to_string())
            .unwrap_or_default(),
        application_name: first
            .map(|e| e.server.application_name.text.to_string())
            .unwrap_or_default(),
        product_uri: first
            .map(|e| e.server.product_uri.to_string())
            .unwrap_or_default(),
        certificates,
        endpoints: eps.iter().map(offered).collect(),
        not_chosen: chosen.as_ref().err().cloned(),
        chosen: chosen.ok(),
        why,
        session_error: session.as_ref().err().cloned(),
        session: session.ok(),
    })
}

async fn session_info(
    protocol: &OpcUaProtocol,
    device: &Device,
    security: &crate::config::DeviceSecurity,
) -> Result<SessionInfo, String> {
    let ep = protocol.pool.endpoint(&device.endpoint, security);
    let live = protocol
        .pool
        .session(&ep)
        .await
        .map_err(|e| e.to_string())?;
    let mut ids = vec![ReadValueId::from(NodeId::from(
        VariableId::Server_NamespaceArray,
    ))];
    ids.extend(
        LIMITS
            .iter()
            .map(|(_, v)| ReadValueId::from(NodeId::from(*v))),
    );
    let read = tokio::time::timeout(
        protocol.pool.config().read_timeout,
        live.session.read(&ids, TimestampsToReturn::Neither, 0.0),
    )
    .await
    .map_err(|_| "no answer to the Read within the read timeout".to_string())?
    .map_err(|e| format!("Read: {e}"))?;
    let namespaces = match read.first().and_then(|dv| dv.value.clone()) {
        Some(Variant::Array(a)) => a
            .values
            .iter()
            .map(|v| match v {
                Variant::String(s) => s.as_ref().to_string(),
                _ => String::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let operation_limits = LIMITS
        .iter()
        .zip(read.iter().skip(1))
        .map(|((name, _), dv)| {
            let n = match &dv.value {
                Some(Variant::UInt32(n)) => *n,
                Some(Variant::UInt16(n)) => u32::from(*n),
                _ => 0,
            };
            (name.to_string(), n)
        })
        .collect();
    Ok(SessionInfo {
        namespaces,
        operation_limits,
    })
}
