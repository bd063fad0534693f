//! A device's monitored items: the create requests (client handle = the
//! node's index in the configuration plus one, the data-change filter from
//! its settings), sent in chunks of the server's MaxMonitoredItemsPerCall;
//! a node the server refuses becomes a Bad sample, never a failed device.

use std::sync::Arc;

use collector_core::metrics::names;
use collector_core::record::Sample;
use collector_core::ReadError;
use opcua::client::Session;
use opcua::types::{
    DataChangeFilter, DataChangeTrigger, DeadbandType, ExtensionObject, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, ReadValueId, StatusCode, TimestampsToReturn,
};

use crate::config::{DeadbandKind, ItemSettings, Trigger};
use crate::convert;

/// The create request for the node at `index` (0-based) in the device's
/// configuration.
pub(super) fn request(id: NodeId, index: usize, s: &ItemSettings) -> MonitoredItemCreateRequest {
    let filter = if s.trigger == Trigger::StatusValue && s.deadband.kind == DeadbandKind::None {
        // The server's default filter; sending none is what every server takes.
        ExtensionObject::null()
    } else {
        ExtensionObject::from_message(DataChangeFilter {
            trigger: match s.trigger {
                Trigger::Status => DataChangeTrigger::Status,
                Trigger::StatusValue => DataChangeTrigger::StatusValue,
                Trigger::StatusValueTimestamp => DataChangeTrigger::StatusValueTimestamp,
            },
            deadband_type: match s.deadband.kind {
                DeadbandKind::None => DeadbandType::None,
                DeadbandKind::Absolute => DeadbandType::Absolute,
                DeadbandKind::Percent => DeadbandType::Percent,
            } as u32,
            deadband_value: s.deadband.value,
        })
    };
    MonitoredItemCreateRequest {
        item_to_monitor: ReadValueId::from(id),
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            client_handle: u32::try_from(index + 1).unwrap_or(u32::MAX),
            sampling_interval: s.sampling_interval.as_secs_f64() * 1000.0,
            filter,
            queue_size: s.queue_size,
            discard_oldest: s.discard_oldest,
        },
    }
}

/// Creates `requests` on subscription `id` in chunks of `per_call`; returns
/// a Bad sample for each node the server refused (and logs it). A failed
/// request (not a per-item refusal) fails the whole set-up.
pub(super) async fn create(
    session: &Session,
    id: u32,
    requests: Vec<MonitoredItemCreateRequest>,
    per_call: usize,
    device: &str,
    nodes: &[Arc<str>],
    timeout: std::time::Duration,
) -> Result<Vec<Sample>, ReadError> {
    let mut refused = Vec::new();
    let mut rest = requests;
    while !rest.is_empty() {
        let tail = rest.split_off(per_call.max(1).min(rest.len()));
        let chunk = std::mem::replace(&mut rest, tail);
        let handles: Vec<u32> = chunk
            .iter()
            .map(|r| r.requested_parameters.client_handle)
            .collect();
        let results = tokio::time::timeout(
            timeout,
            session.create_monitored_items(id, TimestampsToReturn::Both, chunk),
        )
        .await
        .map_err(|_| ReadError::Timeout {
            what: "CreateMonitoredItems",
            after: timeout,
        })?
        .map_err(|e| ReadError::Service(format!("CreateMonitoredItems: {e}")))?;
        for (handle, r) in handles.iter().zip(&results) {
            if r.result.status_code.is_good() {
                continue;
            }
            let Some(node) = nodes.get((*handle as usize).wrapping_sub(1)) else {
                continue;
            };
            refused.push(refusal(device, node, r.result.status_code));
        }
        if results.len() < handles.len() {
            for handle in &handles[results.len()..] {
                if let Some(node) = nodes.get((*handle as usize).wrapping_sub(1)) {
                    refused.push(refusal(device, node, StatusCode::BadUnexpectedError));
                }
            }
        }
    }
    Ok(refused)
}

/// A node that cannot be monitored: logged with the device and node, and
/// delivered as a Bad sample so the consumer sees it too.
pub(super) fn refusal(device: &str, node: &Arc<str>, code: StatusCode) -> Sample {
    metrics::counter!(names::MONITORED_ITEM_FAILURES).increment(1);
    let hint = match code {
        StatusCode::BadFilterNotAllowed
        | StatusCode::BadMonitoredItemFilterUnsupported
        | StatusCode::BadMonitoredItemFilterInvalid
        | StatusCode::BadDeadbandFilterInvalid => {
            " (a percent deadband needs the node's EURange; use an absolute one or none)"
        }
        _ => "",
    };
    tracing::warn!(device, node = %node, status = %code, "the server refused to monitor this node{hint}");
    convert::missing(node, code)
}
