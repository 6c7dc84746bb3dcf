//! Retry and Cancel of a failed attempt.

use axum::extract::{Path, State};
use axum::Json;
use keyward_domain::{DeviceState, SessionAction, SessionStatus, StateChange, StateReason};
use keyward_proto::RelayBatch;
use keyward_store::{IssuanceSession, IssuanceUpdate};

use super::session::{close, seal, unseal, Close};
use super::{relay_batch, status, SessionStatus as SessionView};
use crate::api::{audit, store_error};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};

/// Cancel a failed attempt: the device is no longer assigned to the user
/// (Produced, reason Unassigned) and can be recycled.
#[utoipa::path(post, path = "/issuance/{id}/cancel", operation_id = "cancelIssuance", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = SessionView), (status = 409, body = ErrorBody)))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionView>> {
    let s = crate::auth::sessions::load_for(&state, &caller, &id).await?;
    // Issuers any; an operator its own (a help desk's replacement).
    if !crate::auth::sessions::is_started_by(&caller, &s) {
        caller.require(keyward_domain::Permission::DevicesIssue)?;
    }
    end_failed(&state, &caller, &s, "issuance.cancel").await?;
    status(State(state), caller, Path(id)).await
}

/// The device's move when a session is cancelled or abandoned: no longer
/// assigned to the user (Produced, Unassigned). A recycle or a PIN change
/// never moved it: nothing to undo.
pub(super) fn unassign(s: &IssuanceSession, note: String) -> Option<StateChange> {
    (s.action != SessionAction::Recycle && s.action != SessionAction::ChangePin).then(|| {
        StateChange {
            to: DeviceState::Produced,
            reason: Some(StateReason::Unassigned),
            assigned_user: None,
            device_policy: None,
            note: Some(note),
        }
    })
}

/// Ends a failed session (Cancel, or Recycle ending it first). A failed
/// issuance: the device is no longer assigned to the user (Produced,
/// Unassigned); the attempt's certificates were revoked when it failed; the
/// PIN is wiped, the PUK and management key stay sealed for Recycle. A
/// failed recycle: nothing changes on the device record.
pub(super) async fn end_failed(
    state: &AppState,
    caller: &Caller,
    s: &IssuanceSession,
    action: &str,
) -> ApiResult<()> {
    let mut data = unseal(state, s)?;
    // A recycle left waiting for the person (prompts out) ends like a
    // failed one: nothing is in flight on the device.
    let waiting_recycle = s.status == SessionStatus::Running
        && s.action == SessionAction::Recycle
        && data.batch().awaits_answers();
    if s.status != SessionStatus::Failed && !waiting_recycle {
        return Err(ApiError::conflict(
            "session_not_failed",
            format!(
                "only a failed attempt can be cancelled; this session is {}",
                s.status
            ),
        ));
    }
    let device = state
        .store
        .get_device(s.device_id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let erased = data.erased_passkeys();
    data.cancel();
    let draft = audit(
        caller,
        action,
        format!("device:{}", data.serial),
        serde_json::json!({ "session": s.id }),
    );
    let device_move = unassign(s, format!("issuance session {} cancelled", s.id));
    close(
        state,
        s,
        &data,
        Close {
            status: SessionStatus::Cancelled,
            step: s.step.clone(),
            error: s.error.clone(),
            device: device_move.map(|c| (device, c)),
            credentials: vec![],
            audits: vec![draft],
            passkeys_erased: erased,
            passkey_reregistration: erased.then_some(true),
            update: None,
            pin_checked: false,
        },
    )
    .await
    .map(|_| ())
}

/// Retry a failed attempt: the same device, the same policy and the same
/// PIN, starting from what the server knows the device's secrets are now
/// (keys are generated anew; the failed attempt's certificates were revoked).
/// Do not remove the device from the reader. A failed update is retried by
/// a new update session of its pending request (the batch names it).
#[utoipa::path(post, path = "/issuance/{id}/retry", operation_id = "retryIssuance", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = RelayBatch), (status = 409, body = ErrorBody)))]
pub(super) async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RelayBatch>> {
    let s = crate::auth::sessions::load_for(&state, &caller, &id).await?;
    if s.action == SessionAction::Update {
        // The next update session of the request the failed one left
        // pending, at the same agent (the changes computed again: what the
        // failed attempt finished is not done twice).
        return super::update::retry(&state, &caller, &s)
            .await
            .map(|(_, b)| b);
    }
    crate::auth::sessions::may_retry(&state, &caller, &s).await?;
    if s.action == SessionAction::Recycle {
        return Err(ApiError::conflict(
            "retry_not_possible",
            "a failed recycle is not retried: recycle the device again (POST /devices/{serial}/recycle)",
        ));
    }
    if s.status != SessionStatus::Failed {
        return Err(ApiError::conflict(
            "session_not_failed",
            format!(
                "only a failed attempt can be retried; this session is {}",
                s.status
            ),
        ));
    }
    let mut data = unseal(&state, &s)?;
    let batch = data.retry().ok_or_else(|| {
        ApiError::conflict(
            "retry_not_possible",
            "this session keeps nothing to retry from: cancel it and start a new issuance",
        )
    })?;
    let device = state
        .store
        .get_device(s.device_id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let next_seq = s.seq + 1;
    let update = IssuanceUpdate {
        status: SessionStatus::Running,
        step: batch.step(),
        seq: next_seq,
        sealed_state: seal(&state, s.id, &data),
        error: None,
        passkeys_erased: false,
        passkey_reregistration: None,
        update: None,
        pin_checked: false,
    };
    let change = StateChange {
        to: DeviceState::InProduction,
        reason: None,
        assigned_user: None,
        device_policy: None,
        note: Some(format!("issuance session {} retried", s.id)),
    };
    let draft = audit(
        &caller,
        "issuance.retry",
        format!("device:{}", data.serial),
        serde_json::json!({ "session": s.id }),
    );
    state
        .store
        .advance_issuance(
            s.id,
            s.seq,
            &update,
            Some((&device, &change)),
            &[],
            &[&draft],
        )
        .await
        .map_err(|e| store_error("retrying the issuance", e))?;
    Ok(Json(relay_batch(
        s.id,
        next_seq,
        SessionStatus::Running,
        &batch,
    )))
}
