//! Recycle: `POST /devices/{serial}/recycle` wipes a device through the same
//! relay machinery as an issuance and returns it to Available (reason
//! Recycled). Allowed at once on a device whose issuance failed (the failed
//! session is ended first, as Cancel ends it), was cancelled or abandoned,
//! and on an available device Keyward has had a session with.
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
use keyward_proto::RelayBatch;
use keyward_store::IssuanceSession;
use uuid::Uuid;

use super::relay_batch;
use super::session::{seal, unseal};
use crate::api::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// Recycle: the request (the body is optional).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecycleRequest {
    /// Who relays the device commands: `local` (the default: the caller's
    /// client), `agent` (the online workstation agent that reports the
    /// device) or an agent's id. Prompts are answered by the caller's client.
    #[serde(default)]
    pub via: Option<String>,
}

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
    let req: RecycleRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RecycleRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("body_invalid", e.to_string()))?
    };
    let serial = Serial::parse("serial", &serial).map_err(invalid)?;
    let read_device = || async {
        found(state.store.get_device_by_serial(serial).await)
            .map_err(|e| store_error("reading the device", e))?
            .ok_or_else(|| ApiError::not_found("device").field("serial"))
    };
    let device = read_device().await?;
    if !device.is_recyclable() {
        return Err(ApiError::conflict(
            "device_not_recyclable",
            format!(
                "device {} is {} ({}): recycle takes a device whose issuance failed, was cancelled or abandoned, or an available one",
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
    let (data, batch) = DeviceSession::recycle(
        &last_data,
        device.device_type,
        device.firmware_version,
        fido_reset,
    );
    let id = Uuid::new_v4();
    let now = time::OffsetDateTime::now_utc();
    let session = IssuanceSession {
        id,
        device_id: device.id,
        user_id: last.user_id,
        policy_id: last.policy_id,
        action: SessionAction::Recycle,
        status: SessionStatus::Running,
        step: batch.step(),
        seq: 1,
        sealed_state: seal(&state, id, &data),
        error: None,
        created_by: caller.actor(),
        created_at: now,
        updated_at: now,
    };
    let draft = audit(
        &caller,
        "recycle.start",
        format!("device:{}", device.serial),
        serde_json::json!({ "session": id, "after_session": last.id, "fido_reset": fido_reset }),
    );
    state
        .store
        .open_device_session(&session, &draft)
        .await
        .map_err(|e| store_error("starting the recycle", e))?;
    if let Some(agent) = agent {
        crate::agents::bind_session(&state, id, agent).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(relay_batch(id, 1, SessionStatus::Running, &batch)),
    ))
}
