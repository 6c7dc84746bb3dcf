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
use keyward_domain::{
    AuditOutcome, DeviceState, Serial, SessionAction, SessionStatus, StateChange, StateReason,
};
use keyward_engine::knowledge::Known;
use keyward_engine::piv::Secret;
use keyward_engine::plan::{factory_management_algorithm, FACTORY_PUK};
use keyward_engine::recycle::{Next, RecyclePlan, Recycling};
use keyward_engine::{Batch, Failure, ManagementKey, Response};
use keyward_proto::{RelayBatch, RelayResult};
use keyward_store::{IssuanceSession, IssuanceUpdate};
use uuid::Uuid;

use super::session::{seal, unseal};
use super::{relay_batch, Engine, Kept, SessionData};
use crate::api::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller};
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
                && unseal(&state, &last)?.batch.awaits_answers() =>
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
    let factory = ManagementKey::factory_default(factory_management_algorithm(
        device.device_type,
        device.firmware_version,
    ));
    // What the device holds: what the last session left, else factory values.
    let kept = last_data.kept.clone().unwrap_or_else(|| Kept {
        puk: Known::sure(Secret::new(FACTORY_PUK)),
        management_key: Known::sure(factory.clone()),
    });
    let fido_reset = policy.fido_application.is_some()
        && matches!(
            device.device_type,
            keyward_domain::DeviceType::C4000 | keyward_domain::DeviceType::YubiKey5
        );
    let plan = RecyclePlan {
        device_type: device.device_type,
        serial: device.serial.0,
        firmware: device
            .firmware_version
            .map(|f| (f.major as u8, f.minor as u8, f.patch as u8)),
        management_key: kept.management_key.clone(),
        puk: kept.puk.clone(),
        factory_management_key: factory,
        fido_reset,
    };
    let (engine, batch) = Recycling::start(plan);
    let id = Uuid::new_v4();
    let now = time::OffsetDateTime::now_utc();
    let data = SessionData {
        format: super::SEALED_FORMAT,
        engine: Engine::Recycle(engine),
        batch: batch.clone(),
        user_login: last_data.user_login,
        policy_name: last_data.policy_name,
        serial: device.serial.0,
        initial_pin: None,
        attempt: None,
        change_pin_at_end: false,
        kept: Some(kept),
    };
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

/// A relay result for a recycle session: the next batch, or the end
/// (`recycled`: the device is Available, reason Recycled; or `failed`: the
/// device record is unchanged and the device can be recycled again).
pub(super) async fn on_result(
    state: &AppState,
    caller: &Caller,
    s: &IssuanceSession,
    mut data: SessionData,
    responses: &[Response],
    result: &RelayResult,
) -> ApiResult<Json<RelayBatch>> {
    super::answers::check_for_session(state, s, &data.batch, &result.answers).await?;
    let Engine::Recycle(engine) = std::mem::replace(&mut data.engine, Engine::Finished) else {
        return Err(ApiError::internal("relaying", "not a recycle"));
    };
    let target = format!("device:{}", data.serial);
    let next_seq = s.seq + 1;
    let plan = engine.plan().clone();
    match engine.on_result(responses, &result.answers) {
        Ok(Next::Batch(engine, batch)) => {
            data.engine = Engine::Recycle(engine);
            data.batch = batch.clone();
            let update = IssuanceUpdate {
                status: SessionStatus::Running,
                step: batch.step(),
                seq: next_seq,
                sealed_state: seal(state, s.id, &data),
                error: None,
            };
            let draft = audit(
                caller,
                "recycle.step",
                target,
                serde_json::json!({ "session": s.id, "batch": next_seq }),
            );
            state
                .store
                .advance_issuance(s.id, s.seq, &update, None, &[], &[&draft])
                .await
                .map_err(|e| store_error("saving the session", e))?;
            Ok(Json(relay_batch(
                s.id,
                next_seq,
                SessionStatus::Running,
                &batch,
            )))
        }
        Ok(Next::Done(recycled)) => {
            let device = state
                .store
                .get_device(s.device_id)
                .await
                .map_err(|e| store_error("reading the device", e))?;
            data.batch = Batch::default();
            data.kept = Some(Kept {
                puk: Known::sure(recycled.puk),
                management_key: Known::sure(recycled.management_key),
            });
            let update = IssuanceUpdate {
                status: SessionStatus::Recycled,
                step: "done".into(),
                seq: next_seq,
                sealed_state: seal(state, s.id, &data),
                error: None,
            };
            let change = StateChange {
                to: DeviceState::Available,
                reason: Some(StateReason::Recycled),
                assigned_user: None,
                device_policy: None,
                note: Some(format!("recycled in session {}", s.id)),
            };
            let draft = audit(
                caller,
                "device.recycle",
                target,
                serde_json::json!({ "session": s.id }),
            );
            // An available device (recycled before) stays Available.
            let device_change =
                (device.state != DeviceState::Available).then_some((&device, &change));
            state
                .store
                .advance_issuance(s.id, s.seq, &update, device_change, &[], &[&draft])
                .await
                .map_err(|e| store_error("ending the recycle", e))?;
            // The device's passkeys are deleted at their Passkey-Enabled Service.
            super::fido_step::forget_passkeys(state, s.device_id).await;
            let revoked = state
                .store
                .revoke_device_credentials(s.device_id, time::OffsetDateTime::now_utc())
                .await
                .map_err(|e| store_error("revoking the device's credentials", e))?;
            if revoked > 0 {
                state.pki.invalidate_crl();
            }
            Ok(Json(relay_batch(
                s.id,
                next_seq,
                SessionStatus::Recycled,
                &Batch::default(),
            )))
        }
        Err(f) => {
            // Part of the wipe may have run: the factory values become the
            // alternatives a next recycle tries.
            let factory_puk = Secret::new(FACTORY_PUK);
            let mut kept = data.kept.take().unwrap_or(Kept {
                puk: plan.puk.clone(),
                management_key: plan.management_key.clone(),
            });
            if kept.management_key.value != plan.factory_management_key {
                kept.management_key.alternative = Some(plan.factory_management_key.clone());
            }
            if kept.puk.value != factory_puk {
                kept.puk.alternative = Some(factory_puk);
            }
            data.kept = Some(kept);
            data.batch = Batch::default();
            let update = IssuanceUpdate {
                status: SessionStatus::Failed,
                step: f.step.clone(),
                seq: next_seq,
                sealed_state: seal(state, s.id, &data),
                error: Some(report(s, &f).to_string()),
            };
            let mut draft = audit(
                caller,
                "recycle.fail",
                target,
                serde_json::json!({ "session": s.id, "code": f.code, "step": f.step }),
            );
            draft.outcome = AuditOutcome::Failure;
            state
                .store
                .advance_issuance(s.id, s.seq, &update, None, &[], &[&draft])
                .await
                .map_err(|e| store_error("ending the recycle", e))?;
            Ok(Json(relay_batch(
                s.id,
                next_seq,
                SessionStatus::Failed,
                &Batch::default(),
            )))
        }
    }
}

/// The error information a person can copy.
pub(super) fn report(s: &IssuanceSession, f: &Failure) -> serde_json::Value {
    serde_json::json!({
        "code": f.code, "step": f.step, "sw": f.sw.map(|sw| format!("{sw:04X}")), "message": f.message,
        "session": s.id, "at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    })
}
