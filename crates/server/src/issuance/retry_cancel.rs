//! Retry and Cancel of a failed attempt.

use axum::extract::{Path, State};
use axum::Json;
use keyward_domain::{DeviceState, StateChange, StateReason};
use keyward_engine::piv::PivIssuance;
use keyward_proto::RelayBatch;
use keyward_store::{IssuanceSession, IssuanceUpdate};

use super::session::{seal, unseal};
use super::{load, relay_batch, status, Attempt, Engine, Kept, SessionStatus};
use crate::api::{audit, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// Cancel a failed attempt: the device is no longer assigned to the user
/// (Produced, reason Unassigned) and can be recycled.
#[utoipa::path(post, path = "/issuance/{id}/cancel", operation_id = "cancelIssuance", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = SessionStatus), (status = 409, body = ErrorBody)))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesIssue>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionStatus>> {
    let s = load(&state, &id).await?;
    end_failed(&state, &caller, &s, "issuance.cancel").await?;
    status(State(state), caller, Path(id)).await
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
    let waiting_recycle = s.status == keyward_domain::SessionStatus::Running
        && s.action == keyward_domain::SessionAction::Recycle
        && data.batch.awaits_answers();
    if s.status != keyward_domain::SessionStatus::Failed && !waiting_recycle {
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
    data.initial_pin = None;
    if let Some(a) = data.attempt.take() {
        data.kept = Some(Kept::from_known(&a.known));
    }
    let update = IssuanceUpdate {
        status: keyward_domain::SessionStatus::Cancelled,
        step: s.step.clone(),
        seq: s.seq + 1,
        sealed_state: seal(state, s.id, &data),
        error: s.error.clone(),
    };
    let change = StateChange {
        to: DeviceState::Produced,
        reason: Some(StateReason::Unassigned),
        assigned_user: None,
        device_policy: None,
        note: Some(format!("issuance session {} cancelled", s.id)),
    };
    let draft = audit(
        caller,
        action,
        format!("device:{}", data.serial),
        serde_json::json!({ "session": s.id }),
    );
    let device_change =
        (s.action != keyward_domain::SessionAction::Recycle).then_some((&device, &change));
    state
        .store
        .advance_issuance(s.id, s.seq, &update, device_change, &[], &[&draft])
        .await
        .map_err(|e| store_error("cancelling the issuance", e))
}

/// Retry a failed attempt: the same device, the same policy and the same
/// PIN, starting from what the server knows the device's secrets are now
/// (keys are generated anew; the failed attempt's certificates were revoked).
/// Do not remove the device from the reader.
#[utoipa::path(post, path = "/issuance/{id}/retry", operation_id = "retryIssuance", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = RelayBatch), (status = 409, body = ErrorBody)))]
pub(super) async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RelayBatch>> {
    let s = super::access::load_for(&state, &caller, &id).await?;
    super::access::may_retry(&state, &caller, &s).await?;
    if s.action == keyward_domain::SessionAction::Recycle {
        return Err(ApiError::conflict(
            "retry_not_possible",
            "a failed recycle is not retried: recycle the device again (POST /devices/{serial}/recycle)",
        ));
    }
    if s.status != keyward_domain::SessionStatus::Failed {
        return Err(ApiError::conflict(
            "session_not_failed",
            format!(
                "only a failed attempt can be retried; this session is {}",
                s.status
            ),
        ));
    }
    let mut data = unseal(&state, &s)?;
    let attempt = data.attempt.take().ok_or_else(|| {
        ApiError::conflict(
            "retry_not_possible",
            "this session keeps nothing to retry from: cancel it and start a new issuance",
        )
    })?;
    let plan = attempt.known.retry_plan(&attempt.plan);
    let (engine, batch) = PivIssuance::start(plan.clone());
    data.engine = Engine::AwaitWitness(engine);
    data.batch = batch.clone();
    data.attempt = Some(Attempt {
        plan,
        known: attempt.known,
        certificates: vec![],
    });
    let device = state
        .store
        .get_device(s.device_id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let next_seq = s.seq + 1;
    let update = IssuanceUpdate {
        status: keyward_domain::SessionStatus::Running,
        step: batch.step(),
        seq: next_seq,
        sealed_state: seal(&state, s.id, &data),
        error: None,
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
        keyward_domain::SessionStatus::Running,
        &batch,
    )))
}
