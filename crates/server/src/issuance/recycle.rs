//! Recycle: `POST /devices/{serial}/recycle` wipes a device through the same
//! relay machinery as an issuance and returns it to Available (reason
//! Recycled). Allowed at once on a device whose issuance failed (the failed
//! session is ended first, as Cancel ends it), was cancelled or abandoned,
//! on a terminated device that is at hand, and on an available device
//! Keyward has had a session with. An issued device is terminated first.
//!
//! The device record does not move while the wipe runs (the one active
//! session per device keeps anyone else off it); the session's user and
//! policy are those of the device's last session (the policy says whether
//! FIDO was used, hence whether FIDO is reset too).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{Serial, SessionAction, SessionStatus};
use keyward_engine::DeviceSession;
use keyward_proto::{RecycleRequest, RelayBatch};

use super::session::{open_follow_up, unseal};
use crate::api::{found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// Recycle a device: answers the first batch of its recycle session.
#[utoipa::path(post, path = "/devices/{serial}/recycle", operation_id = "recycleDevice", tag = "issuance", params(("serial" = String, Path)),
    request_body(content = RecycleRequest, description = "optional"),
    responses((status = 201, body = RelayBatch, description = "the first batch of the recycle session (relay it like an issuance's)"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn recycle(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesRecycle>,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    let req: RecycleRequest = crate::json::optional_body(&body)?;
    let serial = Serial::parse("serial", &serial).map_err(invalid)?;
    let read_device = || async {
        found(state.store.get_device_by_serial(serial).await)
            .map_err(|e| store_error("reading the device", e))?
            .ok_or_else(|| ApiError::not_found("device").field("serial"))
    };
    let device = read_device().await?;
    if !device.is_recyclable() {
        // An issued (or invalid) device is someone's: it ends first.
        let hint = match device.state {
            keyward_domain::DeviceState::Issued | keyward_domain::DeviceState::Invalid => {
                "terminate it first (Terminate: its certificates are revoked and its passkeys deleted), then recycle it"
            }
            _ => "recycle takes a terminated device, one whose issuance failed, was cancelled or abandoned, or an available one",
        };
        return Err(ApiError::conflict(
            "device_not_recyclable",
            format!(
                "device {} is {} ({}): {hint}",
                device.serial,
                device.state.label(),
                device.reason.map(|r| r.as_str()).unwrap_or("-")
            ),
        )
        .field("serial"));
    }
    // The workstation agent that will relay the device commands (issue 4).
    let agent =
        crate::agents::choose_for_start(&state, &caller, req.via.as_deref(), serial).await?;
    let last = state
        .store
        .latest_device_session(device.id)
        .await
        .map_err(|e| store_error("reading the device's sessions", e))?
        .ok_or_else(|| {
            ApiError::conflict(
                "nothing_to_recycle",
                format!(
                    "device {} has had no session with Keyward: as far as Keyward knows it is factory-new",
                    device.serial
                ),
            )
            .field("serial")
        })?;
    let last = match last.status {
        // A recycle left waiting at its prompts is ended and started over.
        SessionStatus::Running
            if last.action == SessionAction::Recycle
                && unseal(&state, &last)?.batch().awaits_answers() =>
        {
            super::retry_cancel::end_failed(&state, &caller, &last, "recycle.end_waiting_session")
                .await?;
            state
                .store
                .get_issuance(last.id)
                .await
                .map_err(|e| store_error("reading the session", e))?
        }
        SessionStatus::Running => {
            return Err(ApiError::conflict(
                "device_busy",
                format!(
                    "device {} is in session {} (running)",
                    device.serial, last.id
                ),
            ))
        }
        // Recycle ends a failed session first, as Cancel does.
        SessionStatus::Failed => {
            super::retry_cancel::end_failed(&state, &caller, &last, "recycle.end_failed_session")
                .await?;
            state
                .store
                .get_issuance(last.id)
                .await
                .map_err(|e| store_error("reading the session", e))?
        }
        _ => last,
    };
    let device = read_device().await?;
    let last_data = unseal(&state, &last)?;
    let policy = state
        .store
        .get_policy(last.policy_id)
        .await
        .map_err(|e| store_error("reading the policy", e))?;
    let fido_reset = policy.fido_application.is_some()
        && matches!(
            device.device_type,
            keyward_domain::DeviceType::C4000 | keyward_domain::DeviceType::YubiKey5
        );
    // What the device holds: what the last session left, else factory values.
    let (data, _) = DeviceSession::recycle(
        &last_data,
        device.device_type,
        device.firmware_version,
        fido_reset,
    );
    let details = serde_json::json!({ "after_session": last.id, "fido_reset": fido_reset });
    let serde_json::Value::Object(details) = details else {
        unreachable!("an object")
    };
    open_follow_up(
        &state,
        &caller,
        &last,
        last.user_id,
        &data,
        agent,
        details,
        SessionAction::Recycle,
    )
    .await
}
