//! Change my PIN (User Portal): `POST /me/devices/{serial}/change-pin`
//! starts a small device session on an Issued device of the caller's own
//! user, relayed by the caller's workstation agent that reports the device;
//! the person's client answers its prompts (current and new PIN, the new one
//! checked against the device policy's PIN rules before the device sees it).
//!
//! The session shares the issuance session table (action `change_pin`),
//! never moves the device record, and carries forward what the last session
//! kept (PUK, management key) so a later Recycle still finds it. It ends
//! `pin_changed` or `pin_change_failed` (neither blocks the device). The
//! audit trail names the device and the outcome, never a PIN.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{DeviceState, Serial};
use keyward_engine::DeviceSession;
use keyward_proto::RelayBatch;
use keyward_store::IssuanceSession;
use uuid::Uuid;

use super::relay_batch;
use super::session::{close, failure_audit, seal, unseal, Close};
use crate::api::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};

const ACTION: keyward_domain::SessionAction = keyward_domain::SessionAction::ChangePin;

/// Change the PIN of my issued device through my agent: the first batch of
/// the session (follow it with GET /issuance/{id}; answer its prompts
/// `enter_pin` and `set_new_pin` on the relay endpoint).
#[utoipa::path(post, path = "/me/devices/{serial}/change-pin", operation_id = "startPinChange", tag = "self-service", params(("serial" = String, Path)),
    responses((status = 201, body = RelayBatch, description = "the first batch of the change_pin session, relayed by the caller's agent"),
        (status = 403, body = ErrorBody, description = "not a self-service account, or not an issued device of the caller's user (device_not_yours)"),
        (status = 409, body = ErrorBody, description = "no online agent of the caller reports the device (no_agent_for_device), or the device is in another session (device_busy)")))]
pub(super) async fn start(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SelfService>,
    Path(serial): Path<String>,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    let not_yours = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "device_not_yours",
            "the device is not an issued device of yours",
        )
        .field("serial")
    };
    let user_id = caller.user_id.ok_or_else(not_yours)?;
    let serial = Serial::parse("serial", &serial).map_err(invalid)?;
    let device = found(state.store.get_device_by_serial(serial).await)
        .map_err(|e| store_error("reading the device", e))?
        .ok_or_else(not_yours)?;
    if device.assigned_user != Some(user_id) {
        return Err(not_yours());
    }
    if device.state != DeviceState::Issued {
        return Err(ApiError::conflict(
            "device_not_issued",
            format!(
                "device {} is {}: only an issued device's PIN is changed",
                device.serial,
                device.state.label()
            ),
        )
        .field("serial"));
    }
    let agent = crate::agents::choose_for_start(&state, &caller, Some("agent"), serial)
        .await?
        .ok_or_else(|| ApiError::internal("choosing the agent", "no agent"))?;
    let last = state
        .store
        .latest_device_session(device.id)
        .await
        .map_err(|e| store_error("reading the device's sessions", e))?
        .ok_or_else(|| {
            ApiError::conflict(
                "device_not_issued_by_keyward",
                "Keyward has no session with this device",
            )
        })?;
    if last.status == keyward_domain::SessionStatus::Running {
        // Only a PIN change waiting for its answers is replaced; one whose
        // device commands are out (or any other session) is left to finish.
        if last.action != ACTION || !unseal(&state, &last)?.batch().awaits_answers() {
            return Err(ApiError::conflict(
                "device_busy",
                format!(
                    "device {} is in session {} (running)",
                    device.serial, last.id
                ),
            ));
        }
        // An earlier PIN change left waiting: ended, this one replaces it.
        let mut waiting = unseal(&state, &last)?;
        waiting.cancel();
        let replaced = serde_json::json!({ "code": "replaced", "step": last.step, "message": "a new PIN change replaced this one", "session": last.id });
        let draft = failure_audit(
            &caller,
            "pin_change.fail",
            device.serial.0,
            serde_json::json!({ "session": last.id, "code": "replaced", "tries_left": null }),
        );
        let _ended = close(
            &state,
            &last,
            &waiting,
            Close {
                status: keyward_domain::SessionStatus::PinChangeFailed,
                step: last.step.clone(),
                error: Some(replaced.to_string()),
                device: None,
                credentials: vec![],
                audits: vec![draft],
            },
        )
        .await?;
    }
    let (data, batch) = DeviceSession::change_pin(&unseal(&state, &last)?);
    let id = Uuid::new_v4();
    let now = time::OffsetDateTime::now_utc();
    let session = IssuanceSession {
        id,
        device_id: device.id,
        user_id,
        policy_id: last.policy_id,
        action: ACTION,
        status: keyward_domain::SessionStatus::Running,
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
        "pin_change.start",
        format!("device:{}", device.serial),
        serde_json::json!({ "session": id, "agent": agent }),
    );
    state
        .store
        .open_device_session(&session, &draft)
        .await
        .map_err(|e| store_error("starting the PIN change", e))?;
    crate::agents::bind_session(&state, id, agent).await?;
    Ok((
        StatusCode::CREATED,
        Json(relay_batch(
            id,
            1,
            keyward_domain::SessionStatus::Running,
            &batch,
        )),
    ))
}

/// Checks a candidate new PIN against the PIN rules of my device's policy,
/// rule by rule, as the User Portal does while the person types (an empty
/// PIN lists the rules). Stores and logs nothing; the check at the prompt
/// is the authority.
#[utoipa::path(post, path = "/me/devices/{serial}/pin-check", operation_id = "checkMyDevicePin", tag = "self-service", params(("serial" = String, Path)),
    request_body = crate::api::policies::PinCandidate,
    responses((status = 200, body = crate::api::policies::PinCheckResult),
        (status = 403, body = ErrorBody, description = "not a device of the caller's user (device_not_yours)")))]
pub(super) async fn pin_check(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SelfService>,
    Path(serial): Path<String>,
    crate::json::ApiJson(candidate): crate::json::ApiJson<crate::api::policies::PinCandidate>,
) -> ApiResult<Json<crate::api::policies::PinCheckResult>> {
    let not_yours = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "device_not_yours",
            "the device is not a device of yours",
        )
        .field("serial")
    };
    let serial = Serial::parse("serial", &serial).map_err(invalid)?;
    let device = found(state.store.get_device_by_serial(serial).await)
        .map_err(|e| store_error("reading the device", e))?
        .ok_or_else(not_yours)?;
    let (Some(policy_id), true) = (
        device.device_policy,
        caller.user_id.is_some() && device.assigned_user == caller.user_id,
    ) else {
        return Err(not_yours());
    };
    let policy = state
        .store
        .get_policy(policy_id)
        .await
        .map_err(|e| store_error("reading the policy", e))?;
    let checks = policy.pin_application.check(&candidate.pin);
    Ok(Json(crate::api::policies::PinCheckResult {
        valid: checks.iter().all(|c| c.passed),
        rules: crate::api::policies::rule_views(checks, true),
    }))
}
