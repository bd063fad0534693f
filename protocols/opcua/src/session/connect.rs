//! Opening one session: endpoint discovery (GetEndpoints, cached), the
//! session build off the executor (reactivating a session whose connection
//! was lost, when there is one), the event loop task with the library's
//! reconnects off, and an actionable reason when the server refuses it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{DeviceSecurity, Identity};
use collector_core::ReadError;
use futures::StreamExt;
use opcua::client::{SessionConnectMode, SessionPollResult, SubscriptionActivity};
use opcua::types::{EndpointDescription, StatusCode};
use tracing::instrument::WithSubscriber;

use crate::security::{identity_token, token_type, SecurityError};

use super::endpoint::{Endpoint, Live, LoopTask, Resume};
use super::false_alarms::{quietly, without_false_alarms};
use super::keep_alive::{KeepAlive, Liveness};
use super::namespaces::discover;
use super::pool::LeftBehind;
use super::transport::WireSource;
use super::{Pool, MONITORED_ITEMS_PER_CALL_CAP};

/// How a connect ended up with its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opened {
    /// A new session (CreateSession).
    Created,
    /// The lost session, reactivated on the new connection.
    Reactivated,
}

impl Pool {
    /// Opens a session on `ep`: reactivates `resume`'s session when given
    /// (the library creates a new one if the server refuses).
    pub(super) async fn connect(
        &self,
        ep: &Endpoint,
        generation: u64,
        offered_cache: &mut Option<Vec<EndpointDescription>>,
        resume: Option<Resume>,
    ) -> Result<(Live, Opened), ReadError> {
        let url = ep.url.as_str();
        let connect_err = |reason: String| ReadError::Connect {
            endpoint: url.to_string(),
            reason,
        };
        let security_err = |reason: String| ReadError::Security {
            endpoint: url.to_string(),
            reason,
        };
        let sec = ep.security.clone();
        // Ask the server what it offers (GetEndpoints on an unsecured
        // channel, as every OPC UA client does), also for security None:
        // the identity token must carry a token policy id the server
        // advertised, and stacks name theirs as they like (open62541:
        // `open62541-anonymous-policy-none#None`) and refuse any other.
        // Cached per endpoint; forgotten after a security failure.
        let offered: Vec<EndpointDescription> = if let Some(cached) = offered_cache {
            cached.clone()
        } else {
            let eps = self
                .clients
                .plain()
                .get_server_endpoints_from_url(url)
                .with_subscriber(without_false_alarms())
                .await
                .map_err(|e| connect_err(format!("GetEndpoints: {e}")))?;
            *offered_cache = Some(eps.clone());
            eps
        };
        // Building a session reads the certificate store from disk (and the
        // first secure one may generate the client certificate): keep that
        // blocking work off the executor threads the schedules run on.
        let clients = self.clients.clone();
        let endpoint_url = url.to_string();
        let build_sec = sec.clone();
        let built = tokio::task::spawn_blocking(move || {
            let prepared = clients
                .prepare(&endpoint_url, &build_sec, &offered)
                .map_err(BuildError::Security)?;
            let client = prepared.client(clients.plain());
            let endpoint = prepared.endpoint.clone();
            let chosen = Chosen::of(&endpoint, &build_sec.identity);
            let token = identity_token(&build_sec.identity).map_err(BuildError::Security)?;
            let build = || {
                client
                    .session_builder()
                    .with_connector(WireSource)
                    .connect_to_endpoint_directly(endpoint)
                    .and_then(|b| {
                        let b = b.user_identity_token(token);
                        match &resume {
                            Some(r) => b.session_id(r.session_id.clone()),
                            None => b,
                        }
                        .build(client.certificate_store().clone())
                    })
                    .map(|(session, event_loop)| {
                        if let Some(r) = &resume {
                            // The token ActivateSession presents for the old session.
                            session.channel().set_auth_token(r.auth_token.clone());
                        }
                        (session, event_loop, chosen)
                    })
                    .map_err(|e| BuildError::Other(e.to_string()))
            };
            if prepared.is_secure() {
                build()
            } else {
                quietly(build)
            }
        })
        .await;
        let (session, event_loop, chosen) = match built {
            Ok(Ok(v)) => v,
            Ok(Err(BuildError::Security(e))) => return Err(security_err(e.to_string())),
            Ok(Err(BuildError::Other(e))) => return Err(connect_err(e)),
            Err(e) => return Err(connect_err(format!("session build task: {e}"))),
        };
        // We own reconnects: when this session's transport ends, its loop ends.
        session.disable_reconnects();
        let alive = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) =
            tokio::sync::oneshot::channel::<Result<SessionConnectMode, StatusCode>>();
        let loop_alive = alive.clone();
        let loop_url = url.to_string();
        let subscriptions_lost = Arc::new(AtomicU64::new(0));
        // Cancelled when the loop ends or is aborted: subscribers move to
        // the next session at once rather than at their next check.
        let ended = tokio_util::sync::CancellationToken::new();
        let loop_ended = ended.clone();
        let loop_lost = subscriptions_lost.clone();
        let liveness = Arc::new(Liveness::new());
        let loop_liveness = liveness.clone();
        let loop_session = session.clone();
        let keep_alive = KeepAlive {
            interval: self.cfg.keep_alive_interval,
            max_failed: self.cfg.max_failed_keep_alives,
            timeout: self.cfg.read_timeout,
        };
        let loop_task = LoopTask(tokio::spawn(async move {
            let _ended = loop_ended.drop_guard();
            let mut ready_tx = Some(ready_tx);
            let stream = event_loop.enter();
            futures::pin_mut!(stream);
            // Started once the session is up; polled by this task with the
            // loop, so its Read's response is read meanwhile.
            let mut keep_alive_run = None;
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => ev,
                    code = async {
                        match keep_alive_run.as_mut() {
                            Some(run) => run.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        tracing::warn!(
                            endpoint = %loop_url,
                            %code,
                            failed = keep_alive.max_failed,
                            "keep-alives failed: the connection is dropped, the session resumed on a new one"
                        );
                        break;
                    }
                };
                let Some(ev) = ev else { break };
                match ev {
                    Ok(SessionPollResult::Reconnected(mode)) => {
                        loop_liveness.proven();
                        keep_alive_run = Some(Box::pin(
                            keep_alive.run(loop_session.clone(), loop_liveness.clone()),
                        ));
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(mode));
                        }
                    }
                    Ok(SessionPollResult::ConnectionLost(code)) => {
                        tracing::debug!(endpoint = %loop_url, %code, "connection lost");
                    }
                    Ok(SessionPollResult::Subscription(SubscriptionActivity::Publish)) => {
                        loop_liveness.proven();
                    }
                    Ok(SessionPollResult::Subscription(SubscriptionActivity::PublishFailed(
                        StatusCode::BadNoSubscription | StatusCode::BadSubscriptionIdInvalid,
                    ))) => {
                        loop_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(code) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Err(code));
                        }
                        break;
                    }
                }
            }
            loop_alive.store(false, Ordering::Relaxed);
        }));
        let abort_on_err = |e: ReadError| {
            loop_task.abort();
            e
        };
        let opened = match ready_rx.await {
            Ok(Ok(SessionConnectMode::ReactivatedSession(_))) => Opened::Reactivated,
            Ok(Ok(SessionConnectMode::NewSession(_))) => Opened::Created,
            Ok(Err(code)) => {
                let e = match rejection_hint(code, &sec, &chosen) {
                    Some(reason) => security_err(reason),
                    None if refuses_service(code) => ReadError::Refused {
                        endpoint: url.to_string(),
                        reason: code.to_string(),
                    },
                    None => connect_err(code.to_string()),
                };
                return Err(abort_on_err(e));
            }
            Err(_) => return Err(abort_on_err(connect_err("session event loop ended".into()))),
        };
        // A new session exists on the server from here: if this connect is
        // cut off before it returns the session or closes it (its timeout,
        // a shutdown), it stays there until its timeout: counted. (A
        // reactivated session stays resumable: nothing is lost with it.)
        let mut created = (opened == Opened::Created).then(|| {
            LeftBehind::new(
                url,
                "the connect was cut off (connect_timeout or shutdown) after the server created the session",
            )
        });
        let discovered = match discover(&session).await {
            Ok(v) => v,
            Err(e) => {
                let _ = session.disconnect().await;
                if let Some(c) = created.as_mut() {
                    c.disarm();
                }
                return Err(abort_on_err(e));
            }
        };
        if let Some(c) = created.as_mut() {
            c.disarm();
        }
        let namespace_array = discovered.namespaces;
        let cap = self.cfg.max_nodes_per_read as usize;
        let max_nodes_per_read = match (discovered.max_nodes_per_read, cap) {
            (0, 0) => usize::MAX,
            (0, c) => c,
            (s, 0) => s,
            (s, c) => s.min(c),
        };
        tracing::debug!(endpoint = %url, security = %chosen, identity = %sec.identity.describe(), max_nodes_per_read, "session connected");
        let remap = ep.remap(&namespace_array);
        let namespaces = namespace_array
            .iter()
            .cloned()
            .enumerate()
            .filter_map(|(i, uri)| u16::try_from(i).ok().map(|i| (uri, i)))
            .collect();
        Ok((
            Live {
                session,
                alive,
                loop_task,
                namespaces,
                namespace_array,
                remap,
                max_nodes_per_read,
                max_monitored_items_per_call: match discovered.max_monitored_items_per_call {
                    0 => MONITORED_ITEMS_PER_CALL_CAP,
                    n => n.min(MONITORED_ITEMS_PER_CALL_CAP),
                },
                max_nodes_per_history_read: discovered.max_nodes_per_history_read,
                subscriptions_lost: subscriptions_lost.clone(),
                liveness,
                ended,
                generation,
            },
            opened,
        ))
    }
}

/// Why a session could not be built.
enum BuildError {
    Security(SecurityError),
    Other(String),
}

/// Whether `code` is a server refusing service for now (as opposed to a
/// transport failure): retrying at once would only load it further.
fn refuses_service(code: StatusCode) -> bool {
    code == StatusCode::BadTooManySessions
        || code == StatusCode::BadTcpServerTooBusy
        || code == StatusCode::BadServerHalted
        || code == StatusCode::BadResourceUnavailable
}

/// The endpoint and identity token a session was attempted with, for
/// logs and for the reason of a refusal.
struct Chosen {
    /// `Basic256Sha256/SignAndEncrypt`.
    channel: String,
    /// The server's token policy id the identity token carried.
    token_policy: String,
}

impl Chosen {
    fn of(endpoint: &EndpointDescription, identity: &Identity) -> Self {
        Self {
            channel: format!(
                "{}/{:?}",
                opcua::crypto::SecurityPolicy::from_uri(endpoint.security_policy_uri.as_ref()),
                endpoint.security_mode
            ),
            token_policy: endpoint
                .find_policy(token_type(identity))
                .map(|p| p.policy_id.to_string())
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.channel)
    }
}

/// An actionable reason for a session the server refused on security
/// grounds, or None for other failures.
fn rejection_hint(code: StatusCode, sec: &DeviceSecurity, chosen: &Chosen) -> Option<String> {
    let name = format!("{code}");
    let token_refused =
        code == StatusCode::BadIdentityTokenInvalid || code == StatusCode::BadIdentityTokenRejected;
    if sec.identity == Identity::Anonymous
        && (token_refused || code == StatusCode::BadUserAccessDenied)
    {
        // No password involved: the server does not take this anonymous
        // login (anonymous access off, or a token policy it disowns).
        return Some(format!(
            "the server refused an anonymous session ({name}) over {} with its token policy `{}`: it may not allow anonymous access; configure a user (`security.user`) or check the server's user token policies",
            chosen.channel, chosen.token_policy
        ));
    }
    if token_refused {
        return Some(format!(
            "authentication failed for {} ({name}) over {} with the server's token policy `{}`: check the user name and password (or user certificate), and that the server allows this kind of user on this endpoint",
            sec.identity.describe(),
            chosen.channel,
            chosen.token_policy
        ));
    }
    if code == StatusCode::BadUserAccessDenied {
        return Some(format!(
            "authentication failed for {} ({name}): check the user name and password (or user certificate)",
            sec.identity.describe()
        ));
    }
    if name.starts_with("BadCertificate")
        || code == StatusCode::BadNoValidCertificates
        || code == StatusCode::BadSecurityChecksFailed
        || code == StatusCode::BadSecurityPolicyRejected
        || code == StatusCode::BadSecurityModeRejected
    {
        return Some(format!(
            "the {chosen} channel failed its certificate checks ({name}): the server may not trust the collector's client certificate yet (add it to the server's trust list), the server's certificate may have changed, or a check failed (validity dates, hostname, application URI)"
        ));
    }
    None
}
