//! The operator's HTTP surface: `/metrics` (Prometheus), `/healthz`
//! (liveness), `/readyz` (Kafka reachable), `/startupz` (devices loaded
//! and scheduled), `/devices` (per-device state, filtered and paginated),
//! `/status` (the device list: shard, reloads, the last rejected one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use axum::Router;
use collector_core::device_status::{DeviceBoard, DeviceStatus};
use collector_core::health::Health;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::handover::HandoverView;

/// What the HTTP server shows.
#[derive(Clone)]
pub(crate) struct AppState {
    pub metrics: PrometheusHandle,
    pub health: Health,
    pub devices: DeviceBoard,
    /// The device list: shard, reloads, the last rejected reload (none in
    /// the demo, whose list is fixed).
    pub list: Option<crate::reload::SharedStatus>,
}

/// Binds `addr` (so a port conflict fails start-up, not later) and serves
/// until `stop`.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: AppState,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics/health: {e}"))?;
    let local = listener.local_addr()?;
    let upkeep = state.metrics.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = upkeep_stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/startupz", get(started))
        .route("/devices", get(devices))
        .route("/status", get(status))
        .with_state(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(addr = %local, "serving /metrics /healthz /readyz /startupz /devices /status");
    Ok((local, task))
}

async fn metrics_handler(State(s): State<AppState>) -> String {
    s.metrics.render()
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let body = format!(
        "{{\"ready\":{},\"started\":{},\"kafka\":{},\"spill\":{}}}\n",
        s.health.is_ready(),
        s.health.is_started(),
        s.health.sink_reachability().is_up(),
        s.health.has_spill()
    );
    let code = if s.health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn started(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_started() {
        (StatusCode::OK, "started\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn status(State(s): State<AppState>) -> Result<Json<crate::reload::ListStatus>, StatusCode> {
    let list = s.list.as_ref().ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(
        list.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .status
            .clone(),
    ))
}

/// `/devices` query: `?breaker=open&failing=true&offset=0&limit=100`.
#[derive(Debug, serde::Deserialize)]
struct DevicesQuery {
    /// Only devices whose breaker is in this state (`closed`, `open`, `half_open`).
    breaker: Option<String>,
    /// Only devices whose last read failed (`true`) or succeeded (`false`).
    failing: Option<bool>,
    /// Only devices whose id starts with this.
    id_prefix: Option<String>,
    /// Only devices of another shard still read here (`true`), or only this
    /// shard's (`false`).
    handover: Option<bool>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Largest page `/devices` returns.
const MAX_PAGE: usize = 1000;

#[derive(serde::Serialize)]
struct DevicesPage {
    total: usize,
    offset: usize,
    devices: Vec<DeviceView>,
}

/// A device's state, with the shard that reads it (absent in the demo).
#[derive(serde::Serialize)]
struct DeviceView {
    #[serde(flatten)]
    status: DeviceStatus,
    /// The device's shard: this replica's, or the one it is handed over to.
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<u32>,
    /// Set while this replica still reads a device of another shard.
    #[serde(skip_serializing_if = "Option::is_none")]
    handover: Option<HandoverView>,
}

async fn devices(State(s): State<AppState>, Query(q): Query<DevicesQuery>) -> Json<DevicesPage> {
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let (index, handovers) = match &s.list {
        Some(list) => {
            let f = list
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (Some(f.status.shard_index), f.handovers.clone())
        }
        None => (None, HashMap::new()),
    };
    let (total, devices) = s.devices.page(
        |d| {
            q.breaker.as_deref().is_none_or(|b| d.breaker.label() == b)
                && q.failing.is_none_or(|f| (d.consecutive_failures > 0) == f)
                && q.id_prefix.as_deref().is_none_or(|p| d.id.starts_with(p))
                && q.handover
                    .is_none_or(|h| handovers.contains_key(&d.id) == h)
        },
        q.offset,
        limit,
    );
    let devices = devices
        .into_iter()
        .map(|status| {
            let handover = handovers.get(&status.id).cloned();
            DeviceView {
                shard: handover.as_ref().map(|h| h.to_shard).or(index),
                handover,
                status,
            }
        })
        .collect();
    Json(DevicesPage {
        total,
        offset: q.offset,
        devices,
    })
}
