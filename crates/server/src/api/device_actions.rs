//! A person's actions on an issued device, each a move through the
//! lifecycle service (which revokes, holds or releases its certificates and
//! queues its passkeys' deletion in the same transaction): Declare incident
//! (lost, stolen, damaged, forgotten, expired), Restore ("Original found",
//! a forgotten device), Terminate; and Suspend / Resume, which keep the
//! device issued (certificates on hold, passkeys deleted) and are written
//! the same way by the store.
//!
//! A person (a self-service account) may declare their own device lost or
//! stolen, nothing else: anything more is the help desk's.

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
use keyward_domain::Permission;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(incident))
        .routes(routes!(restore))
        .routes(routes!(terminate))
        .routes(routes!(suspend))
        .routes(routes!(resume))
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
    MayDeclare(caller): MayDeclare,
    Path(serial): Path<String>,
    ApiJson(req): ApiJson<IncidentRequest>,
) -> ApiResult<Json<Device>> {
    if !caller.role.allows(Permission::DevicesLifecycle) {
        own_loss(&state, &caller, &serial, &req.reason).await?;
    }
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

/// Who may call the incident route at all, checked before the body is
/// read: the help desk (`devices.lifecycle`), or a self-service account
/// linked to a user (for its own devices: `own_loss`).
struct MayDeclare(Caller);

impl axum::extract::FromRequestParts<AppState> for MayDeclare {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let person = caller.role.allows(Permission::SelfService) && caller.user_id.is_some();
        if !person {
            caller.require(Permission::DevicesLifecycle)?;
        }
        Ok(MayDeclare(caller))
    }
}

/// A person reporting their own device lost or stolen (the User Portal):
/// any other reason, another person's device, or a serial that does not
/// exist is the same 403, so devices cannot be probed.
async fn own_loss(state: &AppState, caller: &Caller, serial: &str, reason: &str) -> ApiResult<()> {
    let (Some(user_id), true) = (caller.user_id, caller.role.allows(Permission::SelfService))
    else {
        return caller.require(Permission::DevicesLifecycle);
    };
    let refuse = |code: &str, message: &str| {
        ApiError::new(axum::http::StatusCode::FORBIDDEN, code, message.to_string())
    };
    if !matches!(reason, "lost" | "stolen") {
        return Err(refuse(
            "reason_not_allowed_for_users",
            "you may report your own device lost or stolen; for anything else ask the help desk",
        )
        .field("reason"));
    }
    let mine = match keyward_domain::Serial::parse("serial", serial) {
        Ok(s) => crate::api::found(state.store.get_device_by_serial(s).await)
            .map_err(|e| crate::api::store_error("reading the device", e))?
            .is_some_and(|d| d.assigned_user == Some(user_id)),
        Err(_) => false,
    };
    if !mine {
        return Err(
            refuse("device_not_yours", "this device is not assigned to you").field("serial"),
        );
    }
    Ok(())
}

/// Suspend an issued device: it stays issued, its certificates go on hold
/// (certificateHold) and its passkeys are deleted (Graph has no "disable");
/// the device is flagged for a passkey registered again by its next update.
#[utoipa::path(post, path = "/devices/{serial}/suspend", operation_id = "suspendDevice", tag = "devices", params(("serial" = String, Path)),
    request_body = DeviceActionRequest,
    responses((status = 200, body = Object, description = "The device"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn suspend(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesSuspend>,
    Path(serial): Path<String>,
    ApiJson(req): ApiJson<DeviceActionRequest>,
) -> ApiResult<Json<Device>> {
    suspension(&state, &caller, &serial, req, true).await
}

/// Resume a suspended device: its certificates' hold is released; its
/// passkey stays flagged to be registered again (Request Update).
#[utoipa::path(post, path = "/devices/{serial}/resume", operation_id = "resumeDevice", tag = "devices", params(("serial" = String, Path)),
    request_body = DeviceActionRequest,
    responses((status = 200, body = Object, description = "The device"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resume(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesSuspend>,
    Path(serial): Path<String>,
    ApiJson(req): ApiJson<DeviceActionRequest>,
) -> ApiResult<Json<Device>> {
    suspension(&state, &caller, &serial, req, false).await
}

async fn suspension(
    state: &AppState,
    caller: &Caller,
    serial: &str,
    req: DeviceActionRequest,
    suspend: bool,
) -> ApiResult<Json<Device>> {
    let device = load(state, serial).await?;
    if device.version != req.expected_version {
        return Err(version_conflict(&device));
    }
    if let Some(n) = &req.note {
        keyward_domain::validate::description("note", n).map_err(invalid)?;
    }
    // Checked here for a clear answer; the store checks again in its write.
    if suspend {
        device.suspend().map_err(invalid)?;
    } else {
        device.resume().map_err(invalid)?;
    }
    crate::lifecycle::refuse_in_session(state, &device).await?;
    let draft = crate::api::audit(
        caller,
        if suspend {
            "device.suspend"
        } else {
            "device.resume"
        },
        format!("device:{}", device.serial),
        serde_json::json!({ "note": req.note }),
    );
    let (device, _) = state
        .store
        .set_device_suspended(
            device.id,
            req.expected_version,
            suspend,
            req.note.as_deref(),
            &draft,
        )
        .await
        .map_err(|e| crate::api::store_error("suspending or resuming the device", e))?;
    Ok(Json(device))
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
