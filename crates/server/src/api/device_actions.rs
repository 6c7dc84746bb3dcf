//! A person's actions on an issued device, each a move through the
//! lifecycle service (which revokes, holds or releases its certificates and
//! queues its passkeys' deletion in the same transaction): Declare incident
//! (lost, stolen, damaged, forgotten, expired), Restore ("Original found",
//! a forgotten device), Terminate.

use axum::extract::{Path, State};
use axum::Json;
use keyward_domain::{Device, DeviceState, StateChange, StateReason};
use keyward_proto::views::{DeviceActionRequest, IncidentRequest};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::devices::{load, version_conflict};
use super::invalid;
use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(incident))
        .routes(routes!(restore))
        .routes(routes!(terminate))
}

/// Declare an incident on an issued device: lost or stolen (certificates
/// revoked keyCompromise, passkeys deleted), damaged (cessationOfOperation),
/// forgotten (certificates on hold, passkeys kept), expired (those not yet
/// expired revoked superseded).
#[utoipa::path(post, path = "/devices/{serial}/incident", operation_id = "declareIncident", tag = "devices", params(("serial" = String, Path)),
    request_body = IncidentRequest,
    responses((status = 200, body = Object, description = "The device"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn incident(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesLifecycle>,
    Path(serial): Path<String>,
    ApiJson(req): ApiJson<IncidentRequest>,
) -> ApiResult<Json<Device>> {
    let reason = StateReason::parse_field(&req.reason, "reason").map_err(invalid)?;
    if !matches!(
        reason,
        StateReason::Lost
            | StateReason::Stolen
            | StateReason::Damaged
            | StateReason::Forgotten
            | StateReason::Expired
    ) {
        return Err(ApiError::bad_request(
            "reason_not_allowed",
            "an incident is lost, stolen, damaged, forgotten or expired",
        )
        .field("reason"));
    }
    act(
        &state,
        &caller,
        &serial,
        req.expected_version,
        DeviceState::Invalid,
        Some(reason),
        req.note,
    )
    .await
}

/// Restore a forgotten device that turned up again ("Original found"): its
/// certificates' hold is released.
#[utoipa::path(post, path = "/devices/{serial}/restore", operation_id = "restoreDevice", tag = "devices", params(("serial" = String, Path)),
    request_body = DeviceActionRequest,
    responses((status = 200, body = Object, description = "The device"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn restore(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesLifecycle>,
    Path(serial): Path<String>,
    ApiJson(req): ApiJson<DeviceActionRequest>,
) -> ApiResult<Json<Device>> {
    act(
        &state,
        &caller,
        &serial,
        req.expected_version,
        DeviceState::Issued,
        None,
        req.note,
    )
    .await
}

/// Terminate a device for good: every certificate not yet revoked for good
/// is revoked cessationOfOperation (held ones too), its passkeys deleted.
#[utoipa::path(post, path = "/devices/{serial}/terminate", operation_id = "terminateDevice", tag = "devices", params(("serial" = String, Path)),
    request_body = DeviceActionRequest,
    responses((status = 200, body = Object, description = "The device"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn terminate(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesLifecycle>,
    Path(serial): Path<String>,
    ApiJson(req): ApiJson<DeviceActionRequest>,
) -> ApiResult<Json<Device>> {
    act(
        &state,
        &caller,
        &serial,
        req.expected_version,
        DeviceState::Terminated,
        None,
        req.note,
    )
    .await
}

async fn act(
    state: &AppState,
    caller: &Caller,
    serial: &str,
    expected_version: i64,
    to: DeviceState,
    reason: Option<StateReason>,
    note: Option<String>,
) -> ApiResult<Json<Device>> {
    let device = load(state, serial).await?;
    if device.version != expected_version {
        return Err(version_conflict(&device));
    }
    let change = StateChange {
        to,
        reason,
        assigned_user: None,
        device_policy: None,
        note,
    };
    let (device, _) =
        crate::lifecycle::change_state(state, caller, &device, expected_version, &change).await?;
    Ok(Json(device))
}
