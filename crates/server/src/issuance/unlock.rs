//! Unlock (issue 16): a blocked or forgotten PIV PIN is reset with the PUK
//! Keyward keeps for the device (custody: the sealed state every device
//! session carries forward), and the PUK is replaced by a new one in the
//! same batch. Three ways in:
//!
//! * an operator's assisted unlock, `POST /devices/{serial}/unlock`
//!   (`devices.unlock`), relayed by the caller's client (`keyward unlock`)
//!   or the operator's workstation agent (`via`);
//! * the help desk's "Create Unlock Request", `POST
//!   /devices/{serial}/unlock-requests`, valid `unlock_request_minutes`;
//! * the person completing it, `POST /me/devices/{serial}/unlock`, with the
//!   device at their own paired agent (the request is used once).
//!
//! Refused before the device is touched (409): a device that is not issued,
//! one Keyward holds no PUK for (`puk_unknown`: "unlock after next update"),
//! one that blocked its PUK (`puk_blocked`: recycle and re-issue), one in
//! another session. The session (action `unlock`) ends `unlocked` or
//! `unlock_failed`; the device record never moves.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{Device, DeviceState, DeviceType, Serial, SessionAction, SessionStatus};
use keyward_engine::unlock::FidoPin;
use keyward_engine::DeviceSession;
use keyward_proto::{
    OfflineUnlockAnswer, OfflineUnlockRequest, RecycleRequest, RelayBatch, UnlockRequestView,
};
use keyward_store::IssuanceSession;

use super::session::{open_follow_up, unseal};
use crate::api::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};

const ACTION: SessionAction = SessionAction::Unlock;

/// The issued device `serial` and its latest session, or why not. With
/// `owner`, a device of another user is `not_found` before anything about
/// it is told (its state included).
pub(super) async fn issued_device(
    state: &AppState,
    serial: &str,
    owner: Option<uuid::Uuid>,
    not_found: impl Fn() -> ApiError,
) -> ApiResult<(Device, IssuanceSession)> {
    issued_device_for(state, serial, owner, not_found, "unlocked").await
}

/// [`issued_device`], the refusal saying what only an issued device is
/// (`unlocked`, `updated`).
pub(super) async fn issued_device_for(
    state: &AppState,
    serial: &str,
    owner: Option<uuid::Uuid>,
    not_found: impl Fn() -> ApiError,
    verb: &str,
) -> ApiResult<(Device, IssuanceSession)> {
    let serial = Serial::parse("serial", serial).map_err(invalid)?;
    let device = found(state.store.get_device_by_serial(serial).await)
        .map_err(|e| store_error("reading the device", e))?
        .ok_or_else(&not_found)?;
    if owner.is_some_and(|u| device.assigned_user != Some(u)) {
        return Err(not_found());
    }
    if device.state != DeviceState::Issued {
        return Err(ApiError::conflict(
            "device_not_issued",
            format!(
                "device {} is {}: only an issued device is {verb}",
                device.serial,
                device.state.label()
            ),
        )
        .field("serial"));
    }
    let last = state
        .store
        .latest_device_session(device.id)
        .await
        .map_err(|e| store_error("reading the device's sessions", e))?
        .ok_or_else(|| {
            ApiError::conflict(
                "puk_unknown",
                format!(
                    "Keyward has had no session with device {}: it holds no PUK for it",
                    device.serial
                ),
            )
        })?;
    if last.status == SessionStatus::Running {
        return Err(ApiError::conflict(
            "device_busy",
            format!(
                "device {} is in session {} (running)",
                device.serial, last.id
            ),
        ));
    }
    Ok((device, last))
}

/// The unlock session's first state, or the refusal (before the device is
/// touched) when no PUK is held or the device blocked it. A policy with a
/// FIDO application has the FIDO PIN looked at too: one counter with PIV on
/// a C4000 sharing its PIN, else a PIN of its own.
async fn unlock_session(
    state: &AppState,
    device: &Device,
    last: &IssuanceSession,
) -> ApiResult<DeviceSession> {
    let previous = unseal(state, last)?;
    let policy = state
        .store
        .get_policy(last.policy_id)
        .await
        .map_err(|e| store_error("reading the device policy", e))?;
    let fido = match &policy.fido_application {
        None => FidoPin::Absent,
        Some(app) if app.share_device_pin && device.device_type == DeviceType::C4000 => {
            FidoPin::Shared
        }
        Some(_) => FidoPin::Own,
    };
    let new_puk = keyward_engine::plan::random_puk(&mut rand::rngs::OsRng);
    DeviceSession::unlock(
        &previous,
        device.device_type,
        device.firmware_version,
        new_puk,
        fido,
    )
    .map(|(s, _)| s)
    .map_err(|r| ApiError::conflict(r.code, r.message).field("serial"))
}

/// Unlock a user's issued device (operator-assisted): answers the first
/// batch of the unlock session (a `set_new_pin` prompt, then the device
/// commands), relayed by the caller's client or, with `via`, by the
/// workstation agent that reports the device.
#[utoipa::path(post, path = "/devices/{serial}/unlock", operation_id = "unlockDevice", tag = "issuance", params(("serial" = String, Path)),
    request_body(content = RecycleRequest, description = "optional: `via` as for Recycle"),
    responses((status = 201, body = RelayBatch, description = "the first batch of the unlock session"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not issued (device_not_issued), no PUK held (puk_unknown), PUK blocked (puk_blocked), or in another session (device_busy)")))]
pub(super) async fn start(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesUnlock>,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    let req: RecycleRequest = crate::json::optional_body(&body)?;
    let (device, last) = issued_device(&state, &serial, None, || {
        ApiError::not_found("device").field("serial")
    })
    .await?;
    let data = unlock_session(&state, &device, &last).await?;
    let agent =
        crate::agents::choose_for_start(&state, &caller, req.via.as_deref(), device.serial).await?;
    let mut details = serde_json::Map::new();
    details.insert("assisted".into(), serde_json::json!(true));
    if let Some(a) = agent {
        details.insert("agent".into(), serde_json::json!(a));
    }
    open_follow_up(
        &state,
        &caller,
        &last,
        last.user_id,
        &data,
        agent,
        details,
        ACTION,
    )
    .await
}

/// Create Unlock Request: the person completes the unlock in the User
/// Portal, with the device at their paired agent, within
/// `unlock_request_minutes`.
#[utoipa::path(post, path = "/devices/{serial}/unlock-requests", operation_id = "createUnlockRequest", tag = "issuance", params(("serial" = String, Path)),
    responses((status = 201, body = UnlockRequestView),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not issued, no PUK held (puk_unknown), PUK blocked (puk_blocked), or in another session")))]
pub(super) async fn create_request(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesUnlock>,
    Path(serial): Path<String>,
) -> ApiResult<(StatusCode, Json<UnlockRequestView>)> {
    let (device, last) = issued_device(&state, &serial, None, || {
        ApiError::not_found("device").field("serial")
    })
    .await?;
    // Refused now rather than when the person tries.
    unlock_session(&state, &device, &last).await?;
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    let now = time::OffsetDateTime::now_utc();
    let request = keyward_store::UnlockRequest {
        id: uuid::Uuid::new_v4(),
        device_id: device.id,
        created_by: caller.actor(),
        created_at: now,
        expires_at: now + time::Duration::minutes(i64::from(settings.unlock_request_minutes)),
        used_at: None,
        session_id: None,
    };
    let draft = audit(
        &caller,
        "device.unlock_request",
        format!("device:{}", device.serial),
        serde_json::json!({ "request": request.id, "expires_at": request.expires_at }),
    );
    state
        .store
        .create_unlock_request(&request, &draft)
        .await
        .map_err(|e| store_error("creating the unlock request", e))?;
    Ok((StatusCode::CREATED, Json(view(&device, &request))))
}

pub(crate) fn view(device: &Device, r: &keyward_store::UnlockRequest) -> UnlockRequestView {
    UnlockRequestView {
        id: r.id,
        serial: device.serial.to_string(),
        created_by: r.created_by.clone(),
        expires_at: r.expires_at,
    }
}

/// Unlock my device: uses the unlock request the help desk created for it;
/// the device is at the caller's own workstation agent.
#[utoipa::path(post, path = "/me/devices/{serial}/unlock", operation_id = "unlockMyDevice", tag = "self-service", params(("serial" = String, Path)),
    responses((status = 201, body = RelayBatch, description = "the first batch of the unlock session, relayed by the caller's agent"),
        (status = 403, body = ErrorBody, description = "not a self-service account, or not an issued device of the caller's user (device_not_yours)"),
        (status = 409, body = ErrorBody, description = "no open unlock request (no_unlock_request), no agent of the caller reports the device (no_agent_for_device), no PUK held, or busy")))]
pub(super) async fn start_own(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SelfService>,
    Path(serial): Path<String>,
) -> ApiResult<(StatusCode, Json<RelayBatch>)> {
    let not_yours = super::session::not_yours;
    let user_id = caller.user_id.ok_or_else(not_yours)?;
    let (device, last) = issued_device(&state, &serial, Some(user_id), not_yours).await?;
    let now = time::OffsetDateTime::now_utc();
    let request = state
        .store
        .open_unlock_request(device.id, now)
        .await
        .map_err(|e| store_error("reading the unlock request", e))?
        .ok_or_else(|| {
            ApiError::conflict(
                "no_unlock_request",
                "there is no open unlock request for this device: ask the help desk to create one",
            )
        })?;
    let data = unlock_session(&state, &device, &last).await?;
    let agent = crate::agents::choose_for_start(&state, &caller, Some("agent"), device.serial)
        .await?
        .ok_or_else(|| ApiError::internal("choosing the agent", "no agent"))?;
    let mut details = serde_json::Map::new();
    details.insert("agent".into(), serde_json::json!(agent));
    details.insert("request".into(), serde_json::json!(request.id));
    let (status, batch) = open_follow_up(
        &state,
        &caller,
        &last,
        user_id,
        &data,
        Some(agent),
        details,
        ACTION,
    )
    .await?;
    used(&state, &request, &batch.0.session_id).await?;
    Ok((status, batch))
}

/// Marks the request used by the session just opened (the one active
/// session per device keeps a second unlock out meanwhile).
async fn used(
    state: &AppState,
    request: &keyward_store::UnlockRequest,
    session: &str,
) -> ApiResult<()> {
    let session = uuid::Uuid::parse_str(session)
        .map_err(|e| ApiError::internal("reading the session id", e))?;
    state
        .store
        .use_unlock_request(request.id, session, time::OffsetDateTime::now_utc())
        .await
        .map_err(|e| store_error("using the unlock request", e))
}

/// An offline unlock sets a PIN only the device's own limits checked: the
/// device is flagged, and an update request (unless one is pending) asks
/// for a PIN that meets the policy's rules at its next online session.
async fn pin_check_after_offline_unlock(
    state: &AppState,
    caller: &crate::auth::Caller,
    device: &Device,
    last: &IssuanceSession,
) -> ApiResult<()> {
    let draft = audit(
        caller,
        "device.pin_check_due",
        format!("device:{}", device.serial),
        serde_json::json!({ "reason": "offline unlock" }),
    );
    state
        .store
        .set_pin_check_due(device.id, true, &draft)
        .await
        .map_err(|e| store_error("flagging the device", e))?;
    super::update::request_pin_check(state, caller, device, last).await
}

/// Offline unlock (the person has the device but no connection; they call
/// the help desk): a C4000's response to the challenge its tool showed,
/// computed from the device's management key; a YubiKey's PUK (PIV has no
/// administrative unblock), disclosed and audited, the device flagged so
/// that its next unlock replaces the PUK. Both with the policy's PIN rules
/// for the help desk to tell.
#[utoipa::path(post, path = "/devices/{serial}/offline-unlock", operation_id = "offlineUnlock", tag = "issuance", params(("serial" = String, Path)),
    request_body = OfflineUnlockRequest,
    responses((status = 200, body = OfflineUnlockAnswer),
        (status = 400, body = ErrorBody, description = "a challenge missing, malformed or of the wrong length; a challenge given for a YubiKey"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not issued; the policy keeps the factory management key (factory_management_key); a generic PIV device (offline_unlock_unsupported); no sure PUK held")))]
pub(super) async fn offline(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesUnlock>,
    Path(serial): Path<String>,
    crate::json::ApiJson(req): crate::json::ApiJson<OfflineUnlockRequest>,
) -> ApiResult<Json<OfflineUnlockAnswer>> {
    let (device, last) = issued_device(&state, &serial, None, || {
        ApiError::not_found("device").field("serial")
    })
    .await?;
    let policy = state
        .store
        .get_policy(last.policy_id)
        .await
        .map_err(|e| store_error("reading the device policy", e))?;
    let pin_rules: Vec<String> = policy
        .pin_application
        .check("")
        .into_iter()
        .map(|c| c.description)
        .collect();
    let previous = unseal(&state, &last)?;
    let kept = previous.kept().ok_or_else(|| {
        ApiError::conflict(
            "puk_unknown",
            format!(
                "Keyward holds no secrets of device {}: unlock after its next update, or recycle it",
                device.serial
            ),
        )
    })?;
    let target = format!("device:{}", device.serial);
    let challenge = req
        .challenge
        .as_deref()
        .map(|c| {
            let digits: String = c.chars().filter(|ch| !ch.is_whitespace()).collect();
            hex::decode(&digits).map_err(|_| {
                ApiError::bad_request(
                    "challenge_invalid",
                    "the challenge is hexadecimal digits, as the tool printed it",
                )
                .field("challenge")
            })
        })
        .transpose()?;
    if device.device_type == keyward_domain::DeviceType::YubiKey5 {
        if challenge.is_some() {
            return Err(ApiError::bad_request(
                "no_challenge",
                "a YubiKey has no offline challenge: leave it out, its PUK is disclosed instead",
            )
            .field("challenge"));
        }
        if previous.puk_custody() != keyward_engine::session::PukCustody::Known {
            return Err(ApiError::conflict(
                "puk_uncertain",
                format!(
                    "Keyward is not sure of device {}'s PUK (or the device blocked it): it cannot be disclosed",
                    device.serial
                ),
            ));
        }
        let draft = audit(
            &caller,
            "device.puk_disclosed",
            target,
            serde_json::json!({ "reason": "offline unlock" }),
        );
        state
            .store
            .set_puk_rotation_due(device.id, true, &draft)
            .await
            .map_err(|e| store_error("flagging the device", e))?;
        pin_check_after_offline_unlock(&state, &caller, &device, &last).await?;
        return Ok(Json(OfflineUnlockAnswer {
            kind: "puk".into(),
            value: kept.puk.value.expose().to_string(),
            pin_rules,
        }));
    }
    let Some(unblock) = keyward_engine::offline_unlock::for_type(device.device_type) else {
        return Err(ApiError::conflict(
            "offline_unlock_unsupported",
            format!(
                "a {} has no offline unlock: unlock it online",
                device.device_type.label()
            ),
        ));
    };
    // The factory key is public: its response would prove nothing.
    if policy.management_key == keyward_domain::ManagementKeyMode::Keep {
        return Err(ApiError::conflict(
            "factory_management_key",
            format!(
                "the policy of device {} keeps the factory management key: anyone could compute the response, so offline unlock is refused",
                device.serial
            ),
        ));
    }
    let challenge = challenge.ok_or_else(|| {
        ApiError::bad_request(
            "challenge_required",
            "enter the challenge the person's unlock tool shows",
        )
        .field("challenge")
    })?;
    let response = unblock
        .response(&kept.management_key.value, &challenge)
        .map_err(|m| ApiError::bad_request("challenge_invalid", m).field("challenge"))?;
    let draft = audit(
        &caller,
        "device.offline_unlock",
        target,
        serde_json::json!({ "challenge_bytes": challenge.len() }),
    );
    state
        .store
        .append_audit(&draft)
        .await
        .map_err(|e| store_error("auditing the offline unlock", e))?;
    pin_check_after_offline_unlock(&state, &caller, &device, &last).await?;
    Ok(Json(OfflineUnlockAnswer {
        kind: "response".into(),
        value: hex::encode_upper(response),
        pin_rules,
    }))
}
