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

use super::session::{close, failure_audit, open_follow_up, unseal, Close};
use crate::api::{found, invalid, store_error};
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
    let not_yours = super::session::not_yours;
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
                passkeys_erased: false,
                passkey_reregistration: None,
                update: None,
                pin_checked: false,
            },
        )
        .await?;
    }
    let (data, _) = DeviceSession::change_pin(&unseal(&state, &last)?);
    let mut details = serde_json::Map::new();
    details.insert("agent".into(), serde_json::json!(agent));
    open_follow_up(
        &state,
        &caller,
        &last,
        user_id,
        &data,
        Some(agent),
        details,
        ACTION,
    )
    .await
}
