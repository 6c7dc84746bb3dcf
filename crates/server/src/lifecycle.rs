//! The lifecycle service: a device's state changes here when a person
//! changes it (the state route today; incident, suspend, terminate and
//! replace actions, a directory sync later). It allows only the moves a
//! person makes (`keyward_domain::lifecycle::by_person`: a device is never
//! marked Issued without a session, nor moved under a session that would
//! then never end), and the store writes the move with what must follow in
//! the same transaction: certificates revoked, held or released with their
//! RFC 5280 reason, passkey deletions as durable jobs. The change feed then
//! tells every node (CRLs, the job runners).

use keyward_domain::{Device, SessionStatus, StateChange};
use keyward_store::EffectsDone;

use crate::api::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// Moves `device` (as the caller read it, at `expected_version`) by a
/// person's `change`.
pub async fn change_state(
    state: &AppState,
    caller: &Caller,
    device: &Device,
    expected_version: i64,
    change: &StateChange,
) -> ApiResult<(Device, EffectsDone)> {
    let t = keyward_domain::state::check_transition(
        device.state,
        device.reason,
        change.to,
        change.reason,
    )
    .map_err(invalid)?;
    if !keyward_domain::lifecycle::by_person(t) {
        return Err(ApiError::bad_request(
            "transition_not_by_hand",
            format!(
                "{} ({} to {}) is made by a device session (Add Device, Retry, Cancel, Recycle), not by hand",
                t.operation, device.state, change.to
            ),
        )
        .field("to"));
    }
    device.apply(change).map_err(invalid)?;
    refuse_in_session(state, device).await?;
    let draft = audit(
        caller,
        "device.state",
        format!("device:{}", device.serial),
        serde_json::json!({ "from": device.state, "to": change.to, "reason": change.reason }),
    );
    state
        .store
        .change_device_state(device.id, expected_version, change, &draft)
        .await
        .map_err(|e| store_error("changing the device state", e))
}

/// A device under a running or failed session is the session's: no person
/// moves it until the session ends.
pub async fn refuse_in_session(state: &AppState, device: &Device) -> ApiResult<()> {
    let last = state
        .store
        .latest_device_session(device.id)
        .await
        .map_err(|e| store_error("reading the device's sessions", e))?;
    if let Some(s) =
        last.filter(|s| matches!(s.status, SessionStatus::Running | SessionStatus::Failed))
    {
        return Err(ApiError::conflict(
            "device_in_session",
            format!(
                "device {} is in session {} ({}): finish, cancel or recycle it first",
                device.serial, s.id, s.status
            ),
        )
        .field("serial"));
    }
    Ok(())
}
