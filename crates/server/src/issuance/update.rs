//! Request Update (issue 17): a policy re-applied to an issued device. The
//! operator sees the applied changes (`GET /devices/{serial}/update-preview`)
//! and confirms (`POST /devices/{serial}/update-requests`); the request waits
//! until the device is next connected, to the operator's agent (`POST
//! /devices/{serial}/update`, `keyward update`) or the person's (`POST
//! /me/devices/{serial}/update`), and is carried out as a device session
//! (action `update`, ending `updated` or `update_failed`; a failed one
//! leaves the request pending, and the next update finishes it). Cancel
//! Update Request withdraws it (`DELETE`). The daily renewal scan (a job)
//! requests the update of every device with a certificate inside its
//! renewal window.
//!
//! The changes are computed by `keyward_domain::update` from what is on
//! record, when the request is made and again when it is carried out (the
//! record may have moved meanwhile); the session's end revokes what they
//! replace (`superseded` after a new key, `cessationOfOperation` for a
//! removed slot), deletes a removed passkey at its service, and moves the
//! device to the policy.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::update::{applied_changes, AppliedChange, CertificateOnRecord, OnRecord};
use keyward_domain::{
    Device, DevicePolicy, PivSlot, RenewalMode, RevocationReason, SessionAction, SessionStatus,
};
use keyward_engine::piv::KeySpec;
use keyward_engine::update::{Retire, SameKey, UpdatePlan};
use keyward_engine::{Context, DeviceSession};
use keyward_proto::{
    RecycleRequest, RelayBatch, RenewalScanRequest, RenewalScanResult, UpdateChangeView,
    UpdateRequestCreate, UpdateRequestView,
};
use keyward_store::{IssuanceSession, UpdateOutcome, UpdateRequest};
use serde::Deserialize;

use super::session::{not_yours, open_follow_up, unseal};
use super::unlock::issued_device_for;
use crate::api::{audit, found, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};

const ACTION: SessionAction = SessionAction::Update;

fn device_not_found() -> ApiError {
    ApiError::not_found("device").field("serial")
}

/// The issued device `serial` and its latest session.
async fn issued(
    state: &AppState,
    serial: &str,
    owner: Option<uuid::Uuid>,
) -> ApiResult<(Device, IssuanceSession)> {
    let not_found = if owner.is_some() {
        not_yours
    } else {
        device_not_found
    };
    issued_device_for(state, serial, owner, not_found, "updated").await
}

/// The policy named `name`, or the device's own.
async fn target_policy(
    state: &AppState,
    device: &Device,
    last: &IssuanceSession,
    name: Option<&str>,
) -> ApiResult<DevicePolicy> {
    let policy = match name {
        Some(n) => found(state.store.get_policy_by_name(n).await)
            .map_err(|e| store_error("reading the policy", e))?
            .ok_or_else(|| ApiError::not_found("policy").field("policy"))?,
        None => state
            .store
            .get_policy(device.device_policy.unwrap_or(last.policy_id))
            .await
            .map_err(|e| store_error("reading the device policy", e))?,
    };
    policy.check_device(device).map_err(|e| {
        ApiError::bad_request(
            &e.code,
            format!("{} does not fit this device: {}", policy.name, e.message),
        )
        .field("policy")
    })?;
    Ok(policy)
}

/// What is on record for the device, and the changes `target` applies at
/// `now`.
async fn changes_for(
    state: &AppState,
    device: &Device,
    last: &IssuanceSession,
    target: &DevicePolicy,
    now: time::OffsetDateTime,
) -> ApiResult<Vec<AppliedChange>> {
    let credentials = credentials_of(state, device).await?;
    changes_from(state, device, last, target, now, &credentials).await
}

async fn credentials_of(
    state: &AppState,
    device: &Device,
) -> ApiResult<Vec<keyward_store::Credential>> {
    state
        .store
        .device_credentials(device.id)
        .await
        .map_err(|e| store_error("reading the device's credentials", e))
}

/// [`changes_for`] from the device's credentials already read.
async fn changes_from(
    state: &AppState,
    device: &Device,
    last: &IssuanceSession,
    target: &DevicePolicy,
    now: time::OffsetDateTime,
    credentials: &[keyward_store::Credential],
) -> ApiResult<Vec<AppliedChange>> {
    let current = state
        .store
        .get_policy(device.device_policy.unwrap_or(last.policy_id))
        .await
        .ok();
    let certificates = credentials
        .iter()
        .filter(|c| c.kind == "certificate" && c.revoked_at.is_none())
        .filter_map(|c| {
            let slot = c.slot.as_deref()?.parse::<PivSlot>().ok()?;
            Some(CertificateOnRecord {
                credential: c.id,
                slot,
                not_after: c.not_after,
            })
        })
        .collect();
    let pin_check_due = state
        .store
        .pin_check_due(device.id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let record = OnRecord {
        current_policy: current.as_ref(),
        certificates,
        has_passkey: credentials
            .iter()
            .any(|c| c.kind == "passkey" && c.revoked_at.is_none()),
        passkey_reregistration: device.passkey_reregistration,
        pin_check_due,
        moves_keys: device.device_type.moves_keys(device.firmware_version),
    };
    applied_changes(target, &record, now)
        .map_err(|e| ApiError::conflict(&e.code, e.message).field("policy"))
}

fn change_view(c: &AppliedChange) -> UpdateChangeView {
    let v = serde_json::to_value(c).unwrap_or_default();
    UpdateChangeView {
        change: v["change"].as_str().unwrap_or_default().to_string(),
        slot: v["slot"].as_str().map(str::to_string),
        mode: v["mode"].as_str().map(str::to_string),
        description: c.describe(),
    }
}

fn request_view(
    device: &Device,
    policy: &DevicePolicy,
    r: Option<&UpdateRequest>,
    changes: &[AppliedChange],
) -> UpdateRequestView {
    UpdateRequestView {
        id: r.map(|r| r.id),
        serial: device.serial.to_string(),
        policy: policy.name.clone(),
        origin: r.map(|r| r.origin.clone()),
        created_by: r.map(|r| r.created_by.clone()),
        created_at: r.map(|r| r.created_at),
        changes: changes.iter().map(change_view).collect(),
    }
}

fn stored_changes(r: &UpdateRequest) -> Vec<AppliedChange> {
    serde_json::from_str(&r.changes).unwrap_or_default()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct PreviewQuery {
    /// The policy to re-apply (default: the device's own).
    policy: Option<String>,
}

/// The applied changes re-applying a policy would make, before the
/// operator confirms.
#[utoipa::path(get, path = "/devices/{serial}/update-preview", operation_id = "previewUpdate", tag = "issuance", params(("serial" = String, Path), PreviewQuery),
    responses((status = 200, body = UpdateRequestView),
        (status = 400, body = ErrorBody, description = "the policy does not fit the device"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not issued; a change Keyward refuses (key_management_algorithm_changed)")))]
pub(super) async fn preview(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesUpdate>,
    Path(serial): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> ApiResult<Json<UpdateRequestView>> {
    let (device, last) = issued(&state, &serial, None).await?;
    let target = target_policy(&state, &device, &last, q.policy.as_deref()).await?;
    let changes = changes_for(
        &state,
        &device,
        &last,
        &target,
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    Ok(Json(request_view(&device, &target, None, &changes)))
}

/// Writes a pending request for `device` (its audit record with the
/// changes, each described).
async fn write_request(
    state: &AppState,
    actor: &str,
    caller: Option<&Caller>,
    device: &Device,
    target: &DevicePolicy,
    changes: &[AppliedChange],
    origin: &str,
) -> ApiResult<UpdateRequest> {
    let request = UpdateRequest {
        id: uuid::Uuid::new_v4(),
        device_id: device.id,
        policy_id: target.id,
        changes: serde_json::to_string(changes)
            .map_err(|e| ApiError::internal("writing the changes", e))?,
        origin: origin.into(),
        created_by: actor.into(),
        created_at: time::OffsetDateTime::now_utc(),
        state: "pending".into(),
        session_id: None,
        ended_at: None,
    };
    let details = serde_json::json!({
        "request": request.id,
        "policy": target.name,
        "origin": origin,
        "changes": changes.iter().map(AppliedChange::describe).collect::<Vec<_>>(),
    });
    let target_name = format!("device:{}", device.serial);
    let draft = match caller {
        Some(c) => audit(c, "device.update_request", target_name, details),
        None => keyward_domain::AuditDraft::new(actor, "device.update_request", &target_name)
            .details(details),
    };
    state
        .store
        .create_update_request(&request, &draft)
        .await
        .map_err(|e| store_error("creating the update request", e))?;
    Ok(request)
}

/// After an offline unlock: an update request that asks for a PIN change
/// under the device's policy (unless one is pending: it gains the change
/// when carried out, the changes being computed again then).
pub(super) async fn request_pin_check(
    state: &AppState,
    caller: &Caller,
    device: &Device,
    last: &IssuanceSession,
) -> ApiResult<()> {
    if state
        .store
        .pending_update_request(device.id)
        .await
        .map_err(|e| store_error("reading the update request", e))?
        .is_some()
    {
        return Ok(());
    }
    let policy = target_policy(state, device, last, None).await?;
    let changes = changes_for(
        state,
        device,
        last,
        &policy,
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    match write_request(
        state,
        &caller.actor(),
        Some(caller),
        device,
        &policy,
        &changes,
        "offline_unlock",
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.status == StatusCode::CONFLICT => Ok(()),
        Err(e) => Err(e),
    }
}

/// Request Update: re-apply the device's policy (or another that fits it);
/// pending until the device is next connected.
#[utoipa::path(post, path = "/devices/{serial}/update-requests", operation_id = "requestUpdate", tag = "issuance", params(("serial" = String, Path)),
    request_body(content = UpdateRequestCreate, description = "optional: the policy (default: the device's own)"),
    responses((status = 201, body = UpdateRequestView),
        (status = 400, body = ErrorBody, description = "the policy does not fit the device"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not issued; nothing to update (nothing_to_update); a pending request already (update_pending)")))]
pub(super) async fn create_request(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesUpdate>,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<UpdateRequestView>)> {
    let req: UpdateRequestCreate = crate::json::optional_body(&body)?;
    let (device, last) = issued(&state, &serial, None).await?;
    let target = target_policy(&state, &device, &last, req.policy.as_deref()).await?;
    let changes = changes_for(
        &state,
        &device,
        &last,
        &target,
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    let policy_changes = device.device_policy != Some(target.id);
    if changes.is_empty() && !policy_changes {
        return Err(ApiError::conflict(
            "nothing_to_update",
            format!(
                "device {} already has everything {} gives it",
                device.serial, target.name
            ),
        ));
    }
    let request = write_request(
        &state,
        &caller.actor(),
        Some(&caller),
        &device,
        &target,
        &changes,
        "operator",
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(request_view(&device, &target, Some(&request), &changes)),
    ))
}

/// The device's pending update request.
#[utoipa::path(get, path = "/devices/{serial}/update-requests", operation_id = "getUpdateRequest", tag = "issuance", params(("serial" = String, Path)),
    responses((status = 200, body = UpdateRequestView), (status = 404, body = ErrorBody, description = "no device, or no pending request")))]
pub(super) async fn get_request(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
    Path(serial): Path<String>,
) -> ApiResult<Json<UpdateRequestView>> {
    let (device, request) = pending(&state, &serial, None).await?;
    let policy = state
        .store
        .get_policy(request.policy_id)
        .await
        .map_err(|e| store_error("reading the policy", e))?;
    Ok(Json(request_view(
        &device,
        &policy,
        Some(&request),
        &stored_changes(&request),
    )))
}

/// The device `serial` (of `owner`, when given) and its pending request.
async fn pending(
    state: &AppState,
    serial: &str,
    owner: Option<uuid::Uuid>,
) -> ApiResult<(Device, UpdateRequest)> {
    let serial = keyward_domain::Serial::parse("serial", serial).map_err(crate::api::invalid)?;
    let device = found(state.store.get_device_by_serial(serial).await)
        .map_err(|e| store_error("reading the device", e))?
        .ok_or_else(if owner.is_some() {
            not_yours
        } else {
            device_not_found
        })?;
    if owner.is_some_and(|u| device.assigned_user != Some(u)) {
        return Err(not_yours());
    }
    let request = state
        .store
        .pending_update_request(device.id)
        .await
        .map_err(|e| store_error("reading the update request", e))?
        .ok_or_else(|| ApiError::not_found("update request").field("serial"))?;
    Ok((device, request))
}

/// Cancel Update Request.
#[utoipa::path(delete, path = "/devices/{serial}/update-requests", operation_id = "cancelUpdateRequest", tag = "issuance", params(("serial" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody, description = "no device, or no pending request")))]
pub(super) async fn cancel_request(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesUpdate>,
    Path(serial): Path<String>,
) -> ApiResult<StatusCode> {
    let (device, request) = pending(&state, &serial, None).await?;
    let draft = audit(
        &caller,
        "device.update_request_cancelled",
        format!("device:{}", device.serial),
        serde_json::json!({ "request": request.id }),
    );
    state
        .store
        .cancel_update_request(request.id, &draft)
        .await
        .map_err(|e| store_error("cancelling the update request", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Carry out the pending update of a user's device at the operator's
/// agent (`via`) or the caller's client (`keyward update`).
#[utoipa::path(post, path = "/devices/{serial}/update", operation_id = "updateDevice", tag = "issuance", params(("serial" = String, Path)),
    request_body(content = RecycleRequest, description = "optional: `via` as for Recycle"),
    responses((status = 201, body = RelayBatch, description = "the first batch of the update session"),
        (status = 404, body = ErrorBody, description = "no device, or no pending update request"),
        (status = 409, body = ErrorBody, description = "not issued; in another session (device_busy); the management key is not known for sure (management_key_uncertain); nothing left to update (nothing_to_update: the request is closed)")))]
pub(super) async fn start(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesUpdate>,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    let req: RecycleRequest = crate::json::optional_body(&body)?;
    let (device, request) = pending(&state, &serial, None).await?;
    let (_, last) = issued(&state, &serial, None).await?;
    let data = update_session(&state, &caller, &device, &last, &request).await?;
    let agent =
        crate::agents::choose_for_start(&state, &caller, req.via.as_deref(), device.serial).await?;
    open(&state, &caller, &last, &data, agent, &request).await
}

/// Update my device: its pending update, with the device at the caller's
/// own workstation agent.
#[utoipa::path(post, path = "/me/devices/{serial}/update", operation_id = "updateMyDevice", tag = "self-service", params(("serial" = String, Path)),
    responses((status = 201, body = RelayBatch, description = "the first batch of the update session, relayed by the caller's agent"),
        (status = 403, body = ErrorBody, description = "not a self-service account, or not an issued device of the caller's user (device_not_yours)"),
        (status = 404, body = ErrorBody, description = "no pending update request"),
        (status = 409, body = ErrorBody, description = "no agent of the caller reports the device (no_agent_for_device), busy, or nothing left to update")))]
pub(super) async fn start_own(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SelfService>,
    Path(serial): Path<String>,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    let user_id = caller.user_id.ok_or_else(not_yours)?;
    let (device, request) = pending(&state, &serial, Some(user_id)).await?;
    let (_, last) = issued(&state, &serial, Some(user_id)).await?;
    let data = update_session(&state, &caller, &device, &last, &request).await?;
    let agent = crate::agents::choose_for_start(&state, &caller, Some("agent"), device.serial)
        .await?
        .ok_or_else(|| ApiError::internal("choosing the agent", "no agent"))?;
    open(&state, &caller, &last, &data, Some(agent), &request).await
}

/// Retry of the failed update session `failed`: the next update session of
/// the request it left pending, relayed as the failed one was (its agent,
/// or the caller's client). Whoever started it, an operator who may update
/// devices, or the device's person may.
pub(super) async fn retry(
    state: &AppState,
    caller: &Caller,
    failed: &IssuanceSession,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    use crate::auth::sessions::{is_own, is_started_by};
    if !(is_started_by(caller, failed) || is_own(caller, failed)) {
        caller.require(keyward_domain::Permission::DevicesUpdate)?;
    }
    if failed.status != SessionStatus::UpdateFailed {
        return Err(ApiError::conflict(
            "session_not_failed",
            format!(
                "only a failed update can be retried; this session is {}",
                failed.status
            ),
        ));
    }
    let device = state
        .store
        .get_device(failed.device_id)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    let serial = device.serial.to_string();
    let (device, request) = pending(state, &serial, None).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::conflict(
                "retry_not_possible",
                format!("device {serial} has no pending update request any more: nothing to retry"),
            )
        } else {
            e
        }
    })?;
    let (_, last) = issued(state, &serial, None).await?;
    let data = update_session(state, caller, &device, &last, &request).await?;
    let agent = crate::agents::agent_of_session(state, failed.id).await?;
    open(state, caller, &last, &data, agent, &request).await
}

/// Opens the update session under the request's policy.
async fn open(
    state: &AppState,
    caller: &Caller,
    last: &IssuanceSession,
    data: &DeviceSession,
    agent: Option<uuid::Uuid>,
    request: &UpdateRequest,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    let mut base = last.clone();
    base.policy_id = request.policy_id;
    let mut details = serde_json::Map::new();
    details.insert("request".into(), serde_json::json!(request.id));
    if let Some(a) = agent {
        details.insert("agent".into(), serde_json::json!(a));
    }
    open_follow_up(
        state,
        caller,
        &base,
        last.user_id,
        data,
        agent,
        details,
        ACTION,
    )
    .await
}

/// The update session of `request`, its changes computed again now (the
/// record may have moved since the request); refused before the device is
/// touched when there is nothing left to do or the management key is not
/// known for sure.
async fn update_session(
    state: &AppState,
    caller: &Caller,
    device: &Device,
    last: &IssuanceSession,
    request: &UpdateRequest,
) -> ApiResult<DeviceSession> {
    let target = state
        .store
        .get_policy(request.policy_id)
        .await
        .map_err(|e| store_error("reading the policy", e))?;
    // One read of the credentials: the changes, the renewals asked, the
    // certificates a renewal keeps or retires the key of.
    let credentials = credentials_of(state, device).await?;
    let mut changes = changes_from(
        state,
        device,
        last,
        &target,
        time::OffsetDateTime::now_utc(),
        &credentials,
    )
    .await?;
    // A renewal the request asked for (the scan's time may be ahead of
    // now) stands while the certificate it renews is still on record.
    let active: Vec<uuid::Uuid> = credentials
        .iter()
        .filter(|c| c.revoked_at.is_none())
        .map(|c| c.id)
        .collect();
    for asked in stored_changes(request) {
        if let AppliedChange::RenewCertificate { slot, replaces, .. } = &asked {
            let planned = changes.iter().any(|c| {
                matches!(c, AppliedChange::RenewCertificate { slot: s, .. } | AppliedChange::AddCertificate { slot: s, .. } if s == slot)
            });
            let fits = target.pki_applications.iter().any(|a| a.slot == *slot);
            if !planned && fits && active.contains(replaces) {
                changes.push(asked);
            }
        }
    }
    let policy_changes = device.device_policy != Some(target.id);
    if changes.is_empty() && !policy_changes {
        let draft = audit(
            caller,
            "device.update_request_cancelled",
            format!("device:{}", device.serial),
            serde_json::json!({ "request": request.id, "reason": "nothing left to update" }),
        );
        state
            .store
            .cancel_update_request(request.id, &draft)
            .await
            .map_err(|e| store_error("closing the update request", e))?;
        return Err(ApiError::conflict(
            "nothing_to_update",
            format!(
                "device {} has nothing left to update: the request is closed",
                device.serial
            ),
        ));
    }
    state
        .store
        .refresh_update_request(
            request.id,
            &serde_json::to_string(&changes).unwrap_or_default(),
        )
        .await
        .map_err(|e| store_error("writing the update request", e))?;
    let previous = unseal(state, last)?;
    let app = |slot: PivSlot| target.pki_applications.iter().find(|a| a.slot == slot);
    let mut plan = UpdatePlan {
        device_type: device.device_type,
        serial: device.serial.0,
        firmware: device
            .firmware_version
            .map(|f| (f.major as u8, f.minor as u8, f.patch as u8)),
        management_key: previous.kept().map(|k| k.management_key.value.clone()),
        pin_change: false,
        generate: vec![],
        same_key: vec![],
        remove: vec![],
        retire: None,
    };
    let mut passkey = false;
    for c in &changes {
        match c {
            AppliedChange::AddCertificate { slot, .. } => {
                let a = app(*slot)
                    .ok_or_else(|| ApiError::internal("planning the update", "no application"))?;
                plan.generate.push(KeySpec {
                    slot: keyward_engine::plan::piv_slot(*slot),
                    algorithm: keyward_engine::plan::piv_algorithm(a.algorithm),
                });
            }
            AppliedChange::RenewCertificate {
                slot,
                mode: RenewalMode::Rekey,
                replaces,
                ..
            } => {
                let a = app(*slot)
                    .ok_or_else(|| ApiError::internal("planning the update", "no application"))?;
                plan.generate.push(KeySpec {
                    slot: keyward_engine::plan::piv_slot(*slot),
                    algorithm: keyward_engine::plan::piv_algorithm(a.algorithm),
                });
                // A new 9D key keeps the old one in a retired slot (the
                // changes allow it only on a device that moves keys).
                if *slot == PivSlot::KeyManagement {
                    let der = certificate_on_record(&credentials, *replaces, *slot)?;
                    plan.retire = Some(Retire {
                        spki_der: spki_of(&der)?,
                        certificate: der,
                        decided: None,
                    });
                }
            }
            AppliedChange::RenewCertificate {
                slot,
                mode: RenewalMode::SameKey,
                replaces,
                ..
            } => {
                let a = app(*slot)
                    .ok_or_else(|| ApiError::internal("planning the update", "no application"))?;
                let der = certificate_on_record(&credentials, *replaces, *slot)?;
                let spki_der = spki_of(&der)?;
                plan.same_key.push(SameKey {
                    slot: keyward_engine::plan::piv_slot(*slot),
                    algorithm: keyward_engine::plan::piv_algorithm(a.algorithm),
                    certificate: der,
                    spki_der,
                });
            }
            AppliedChange::RemoveCertificate { slot, .. } => {
                plan.remove.push(keyward_engine::plan::piv_slot(*slot))
            }
            AppliedChange::AddPasskey { .. } => passkey = true,
            AppliedChange::ChangePin { .. } => plan.pin_change = true,
            AppliedChange::RemovePasskey => {}
        }
    }
    let writes = !plan.generate.is_empty() || !plan.same_key.is_empty() || !plan.remove.is_empty();
    if writes
        && previous
            .kept()
            .is_none_or(|k| k.management_key.alternative.is_some())
    {
        return Err(ApiError::conflict(
            "management_key_uncertain",
            format!(
                "Keyward is not sure of device {}'s management key: recycle and re-issue it",
                device.serial
            ),
        ));
    }
    let user = state
        .store
        .get_user(last.user_id)
        .await
        .map_err(|e| store_error("reading the user", e))?;
    let mut rng = rand::rngs::OsRng;
    let mut cx = Context {
        policy: &target,
        user: &user,
        now: time::OffsetDateTime::now_utc(),
        rng: &mut rng,
    };
    DeviceSession::update(&previous, plan, passkey, &mut cx)
        .map(|(s, _)| s)
        .map_err(|f| ApiError::conflict(f.code.as_str(), f.message))
}

/// The DER of the certificate `id` on record, which a renewal keeps the key
/// of (same key) or retires the key of (9D).
fn certificate_on_record(
    credentials: &[keyward_store::Credential],
    id: uuid::Uuid,
    slot: PivSlot,
) -> ApiResult<Vec<u8>> {
    credentials
        .iter()
        .find(|c| c.id == id)
        .and_then(|c| c.der.clone())
        .ok_or_else(|| {
            ApiError::conflict(
                "certificate_unknown",
                format!("the certificate in slot {slot} is not on record: its key cannot be renewed or retired"),
            )
        })
}

fn spki_of(der: &[u8]) -> ApiResult<Vec<u8>> {
    use der::{Decode, Encode};
    x509_cert::Certificate::from_der(der)
        .and_then(|c| c.tbs_certificate.subject_public_key_info.to_der())
        .map_err(|e| ApiError::internal("reading a certificate on record", e))
}

/// What an update session's end does to its request and the device:
/// (the outcome, a removed passkey to delete, the PIN checked).
pub(super) async fn outcome(
    state: &AppState,
    s: &IssuanceSession,
    status: SessionStatus,
    piv_written: bool,
    retired: Option<(u8, u8)>,
) -> ApiResult<Option<(UpdateOutcome, bool, bool)>> {
    if s.action != ACTION {
        return Ok(None);
    }
    let Some(request) = state
        .store
        .pending_update_request(s.device_id)
        .await
        .map_err(|e| store_error("reading the update request", e))?
    else {
        return Ok(None);
    };
    let changes = stored_changes(&request);
    let done = status == SessionStatus::Updated;
    let mut revoke = Vec::new();
    if piv_written {
        for c in &changes {
            match c {
                AppliedChange::RenewCertificate {
                    mode: RenewalMode::Rekey,
                    replaces,
                    ..
                } => revoke.push((*replaces, RevocationReason::Superseded.code())),
                AppliedChange::RemoveCertificate { replaces, .. } => {
                    revoke.push((*replaces, RevocationReason::CessationOfOperation.code()))
                }
                _ => {}
            }
        }
    }
    // The old 9D key kept in a retired slot: its certificate on record
    // moves with it (shown as retired; revoked superseded above).
    let mut retire = Vec::new();
    if let (true, Some((from, to))) = (piv_written, retired) {
        for c in &changes {
            if let AppliedChange::RenewCertificate {
                slot,
                mode: RenewalMode::Rekey,
                replaces,
                ..
            } = c
            {
                if keyward_engine::plan::piv_slot(*slot) == from {
                    retire.push((*replaces, format!("{to:02x}")));
                }
            }
        }
    }
    let remove_passkey = done && changes.contains(&AppliedChange::RemovePasskey);
    let pin_checked = done
        && changes
            .iter()
            .any(|c| matches!(c, AppliedChange::ChangePin { .. }));
    Ok(Some((
        UpdateOutcome {
            request: request.id,
            done,
            revoke,
            retire,
            device_policy: done.then_some(request.policy_id),
        },
        remove_passkey,
        pin_checked,
    )))
}

/// The renewal scan at `now`: every issued device with a certificate
/// inside its policy's renewal window and no pending request gets one
/// (origin `renewal`). Answers the devices scanned and those requested.
pub async fn renewal_scan(
    state: &AppState,
    now: time::OffsetDateTime,
) -> ApiResult<RenewalScanResult> {
    let devices = issued_devices(state).await?;
    let mut requested = Vec::new();
    let mut refused = Vec::new();
    for device in &devices {
        let Ok(Some(last)) = state.store.latest_device_session(device.id).await else {
            continue;
        };
        if state
            .store
            .pending_update_request(device.id)
            .await
            .map_err(|e| store_error("reading the update request", e))?
            .is_some()
        {
            continue;
        }
        let Ok(policy) = target_policy(state, device, &last, None).await else {
            continue;
        };
        let changes = match changes_for(state, device, &last, &policy, now).await {
            Ok(c) => c,
            // Said, not skipped in silence: a certificate will expire
            // unless someone acts (a 9D rekey on a device that cannot keep
            // the old key, say).
            Err(e) if e.status == StatusCode::CONFLICT => {
                tracing::warn!(serial = %device.serial, code = %e.detail.code, "renewal scan: {}", e.detail.message);
                refused.push(keyward_proto::RenewalRefused {
                    serial: device.serial.to_string(),
                    code: e.detail.code.clone(),
                    message: e.detail.message.clone(),
                });
                continue;
            }
            Err(_) => continue,
        };
        if !changes
            .iter()
            .any(|c| matches!(c, AppliedChange::RenewCertificate { .. }))
        {
            continue;
        }
        match write_request(state, "system", None, device, &policy, &changes, "renewal").await {
            Ok(_) => requested.push(device.serial.to_string()),
            // Requested meanwhile by an operator: theirs stands.
            Err(e) if e.status == StatusCode::CONFLICT => {}
            Err(e) => return Err(e),
        }
    }
    Ok(RenewalScanResult {
        scanned: devices.len(),
        requested,
        refused,
    })
}

/// Every issued device, page by page.
async fn issued_devices(state: &AppState) -> ApiResult<Vec<Device>> {
    let mut filter = keyward_store::DeviceFilter {
        state: Some(keyward_domain::DeviceState::Issued),
        limit: 500,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let page = state
            .store
            .list_devices(&filter)
            .await
            .map_err(|e| store_error("reading the issued devices", e))?;
        out.extend(page.items);
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return Ok(out),
        }
    }
}

/// The renewal scan now, or at the time given (the daily job runs it at
/// its own time).
#[utoipa::path(post, path = "/update-requests/scan", operation_id = "renewalScan", tag = "issuance",
    request_body(content = RenewalScanRequest, description = "optional: `at`, the time to scan for (RFC 3339)"),
    responses((status = 200, body = RenewalScanResult)))]
pub(super) async fn scan(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesUpdate>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RenewalScanResult>> {
    let req: RenewalScanRequest = crate::json::optional_body(&body)?;
    renewal_scan(&state, req.at.unwrap_or_else(time::OffsetDateTime::now_utc))
        .await
        .map(Json)
}

/// The pending update requests (the devices page, the User Portal).
#[utoipa::path(get, path = "/update-requests", operation_id = "listUpdateRequests", tag = "issuance",
    responses((status = 200, body = Vec<UpdateRequestView>)))]
pub(super) async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
) -> ApiResult<Json<Vec<UpdateRequestView>>> {
    let requests = state
        .store
        .pending_update_requests()
        .await
        .map_err(|e| store_error("reading the update requests", e))?;
    let mut out = Vec::with_capacity(requests.len());
    for r in &requests {
        let device = state
            .store
            .get_device(r.device_id)
            .await
            .map_err(|e| store_error("reading the device", e))?;
        let policy = state
            .store
            .get_policy(r.policy_id)
            .await
            .map_err(|e| store_error("reading the policy", e))?;
        out.push(request_view(&device, &policy, Some(r), &stored_changes(r)));
    }
    Ok(Json(out))
}
