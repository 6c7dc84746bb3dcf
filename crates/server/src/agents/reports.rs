//! The devices each agent reports connected, and the portal's view of its
//! account's agents' devices (with their inventory state).

use keyward_proto::views::AgentDevicesQuery;
use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use keyward_domain::Serial;
use keyward_store::AgentDevice;

use super::{is_online, may_use, AgentAuth, MAX_WAIT};
use crate::api::{found, store_error};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use keyward_proto::agent::{
    AgentDeviceView, AgentDevicesView, DeviceReport, ReportAnswer, ReportedDevice,
};

/// The agent reports the devices connected now (on start and on every
/// arrival or removal).
#[utoipa::path(put, path = "/agents/me/devices", operation_id = "reportAgentDevices", tag = "agents", request_body = DeviceReport,
    responses((status = 200, body = ReportAnswer), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn report_devices(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiJson(report): ApiJson<DeviceReport>,
) -> ApiResult<Json<ReportAnswer>> {
    if report.devices.len() > 64 {
        return Err(
            ApiError::bad_request("too_many_devices", "at most 64 devices").field("devices"),
        );
    }
    let mut next = BTreeMap::new();
    for (i, d) in report.devices.iter().enumerate() {
        Serial::parse("serial", &d.serial).map_err(|e| {
            ApiError::bad_request(&e.code, e.message).field(format!("devices[{i}].serial"))
        })?;
        next.insert(d.serial.clone(), d.clone());
    }
    let before: BTreeMap<String, AgentDevice> = state
        .store
        .list_agent_devices()
        .await
        .map_err(|e| store_error("reading the agent's devices", e))?
        .into_iter()
        .filter(|d| d.agent_id == agent.id)
        .map(|d| (d.serial.clone(), d))
        .collect();
    let arrived: Vec<String> = next
        .keys()
        .filter(|s| !before.contains_key(*s))
        .cloned()
        .collect();
    let removed: Vec<String> = before
        .keys()
        .filter(|s| !next.contains_key(*s))
        .cloned()
        .collect();
    let now = keyward_store::now();
    let rows: Vec<AgentDevice> = next
        .values()
        .map(|d| AgentDevice {
            agent_id: agent.id,
            serial: d.serial.clone(),
            info: serde_json::to_string(d).expect("a device serialises"),
            updated_at: now,
        })
        .collect();
    let changed = !arrived.is_empty()
        || !removed.is_empty()
        || rows
            .iter()
            .any(|r| before.get(&r.serial).is_none_or(|b| b.info != r.info));
    if changed {
        state
            .store
            .replace_agent_devices(agent.id, &rows)
            .await
            .map_err(|e| store_error("recording the agent's devices", e))?;
        for s in &arrived {
            tracing::info!(agent = %agent.id, serial = %s, "device arrived at agent");
        }
        for s in &removed {
            tracing::info!(agent = %agent.id, serial = %s, "device removed from agent");
        }
    }
    super::credential::touch(&state, &agent).await;
    Ok(Json(ReportAnswer { arrived, removed }))
}

/// The devices connected to the caller's paired agents (a signed-in
/// account: its own agents; administrators and API tokens: every agent),
/// with their inventory state. With `since` and `wait`, answers when they
/// change (device inserted or removed, agent paired or revoked).
#[utoipa::path(get, path = "/agents/devices", operation_id = "listAgentDevices", tag = "agents", params(AgentDevicesQuery),
    responses((status = 200, body = AgentDevicesView), (status = 401, body = ErrorBody)))]
pub(super) async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AgentDevicesQuery>,
) -> ApiResult<Json<AgentDevicesView>> {
    let mut rx = state.agents.watch_devices();
    let version = *rx.borrow_and_update();
    if let (Some(since), Some(wait)) = (q.since, q.wait) {
        if since == version && wait > 0 {
            let wait = Duration::from_secs(wait).min(MAX_WAIT);
            tokio::select! {
                _ = tokio::time::timeout(wait, rx.changed()) => {}
                _ = state.agents.stopped() => {}
            }
        }
    }
    let version = state.agents.devices_version();
    let agents: Vec<_> = state
        .store
        .list_agents()
        .await
        .map_err(|e| store_error("listing agents", e))?
        .into_iter()
        .filter(|a| a.status == "paired" && may_use(&caller, a))
        .collect();
    let mut devices = Vec::new();
    for d in state
        .store
        .list_agent_devices()
        .await
        .map_err(|e| store_error("listing the agents' devices", e))?
    {
        let Some(agent) = agents.iter().find(|a| a.id == d.agent_id) else {
            continue;
        };
        let Ok(device) = serde_json::from_str::<ReportedDevice>(&d.info) else {
            continue;
        };
        let inventory = match Serial::parse("serial", &device.serial) {
            Ok(serial) => found(state.store.get_device_by_serial(serial).await)
                .map_err(|e| store_error("reading the inventory", e))?
                .map(|dev| dev.state.as_str().to_string()),
            Err(_) => None,
        };
        devices.push(AgentDeviceView {
            agent_id: agent.id.to_string(),
            agent_name: agent.name.clone(),
            agent_online: is_online(agent),
            device,
            state: inventory,
        });
    }
    Ok(Json(AgentDevicesView {
        version,
        agents: agents.iter().map(super::agent_view).collect(),
        devices,
    }))
}
