//! Add Device for a user: every check before the device is touched, then
//! the first batch.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{DeviceState, Serial, StateChange, UserStatus};
use keyward_engine::{DeviceSession, NewIssuance};
use keyward_store::IssuanceSession;
use uuid::Uuid;

use super::session::seal;
use super::{relay_batch, StartIssuance};
use crate::api::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
#[allow(unused_imports)]
use keyward_proto::RelayBatch;

/// Add Device for a user, action "Issue Device": checks everything before
/// the device is touched, then returns the first batch to relay.
#[utoipa::path(post, path = "/issuance", operation_id = "startIssuance", tag = "issuance",
    request_body = StartIssuance,
    responses((status = 201, body = RelayBatch, description = "Issue Device: the first batch; Assign Device: {serial, state: assigned, user, policy}"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody, description = "without devices.issue; a self-service account (role user) may only complete its own Assigned device, with its policy, via its own agent, when who_can_bind = user: codes binding_not_allowed_for_users, assign_not_allowed_for_users, agent_required_for_users, device_not_assigned_to_you"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn start(
    State(state): State<AppState>,
    crate::auth::sessions::MayStart(caller): crate::auth::sessions::MayStart,
    ApiJson(req): ApiJson<StartIssuance>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    // Operators with "devices.issue"; a self-service account only for the
    // device assigned to its own user (under who_can_bind = user).
    crate::auth::sessions::may_start(&state, &caller, &req).await?;
    let serial = Serial::parse("serial", &req.serial).map_err(invalid)?;
    let device = match found(state.store.get_device_by_serial(serial).await)
        .map_err(|e| store_error("reading the device", e))?
    {
        Some(d) => d,
        None => super::auto_import::unknown_device(&state, &caller, serial, &req).await?,
    };
    let assign = match req.action.as_deref() {
        None | Some("issue") => false,
        Some("assign") => true,
        Some(other) => {
            return Err(invalid(keyward_domain::ValidationError::unknown_value(
                "action",
                other,
                &["issue", "assign"],
            )));
        }
    };
    let user = crate::api::users::load(&state, &req.user).await?;
    if user.status != UserStatus::Active {
        return Err(ApiError::bad_request("user_not_active", "the user is disabled").field("user"));
    }
    // Replace Device: checked before anything is touched; the policy is
    // the original's unless another is named.
    let replace = match &req.replaces {
        None => None,
        Some(old) => {
            if assign {
                return Err(ApiError::bad_request(
                    "assign_not_allowed",
                    "a replacement is issued at once (Action Type issue)",
                )
                .field("action"));
            }
            Some(
                super::replace::check(&state, &user, &device, old, req.replace_reason.as_deref())
                    .await?,
            )
        }
    };
    let policy = match (&replace, req.policy.trim()) {
        (Some(r), "") => {
            let id = r.original.device_policy.ok_or_else(|| {
                ApiError::bad_request(
                    "policy_required",
                    format!(
                        "device {} has no policy on record: name one",
                        r.original.serial
                    ),
                )
                .field("policy")
            })?;
            state
                .store
                .get_policy(id)
                .await
                .map_err(|e| store_error("reading the policy", e))?
        }
        (None, "") => {
            return Err(
                ApiError::bad_request("policy_required", "name the device policy").field("policy"),
            )
        }
        (_, name) => crate::api::policies::load(&state, name).await?,
    };
    let replacing = match replace {
        Some(r) => Some(r.replacing(&policy)?),
        None => None,
    };
    match device.state {
        DeviceState::Available => {}
        // Assigned earlier ("Assign Device"): issuance completes it, for that
        // user and with that policy only.
        DeviceState::Assigned
            if !assign
                && device.assigned_user == Some(user.id)
                && device.device_policy == Some(policy.id) => {}
        DeviceState::Assigned => {
            return Err(ApiError::conflict(
                "device_assigned",
                format!(
                    "device {} is assigned (to another user, or with another policy, or already)",
                    device.serial
                ),
            )
            .field("serial"))
        }
        _ => {
            return Err(ApiError::conflict(
                "device_not_available",
                format!(
                    "device {} is {} ({}), not available",
                    device.serial,
                    device.state.label(),
                    device.reason.map(|r| r.as_str()).unwrap_or("-")
                ),
            )
            .field("serial"))
        }
    }
    policy.check_device(&device).map_err(invalid)?;
    let id = Uuid::new_v4();
    // Issue 18: a policy that requires approval carries out an approved
    // request of this user and policy (and device), once.
    let kind = if replacing.is_some() {
        keyward_domain::ApprovalAction::Replacement
    } else {
        keyward_domain::ApprovalAction::Issuance
    };
    // An Assigned device was approved when it was assigned.
    let request = if device.state == DeviceState::Assigned {
        None
    } else if !policy.requires_approval(kind) && req.request.is_none() {
        // A bulk batch's request for this user and device is collected
        // here too (its progress counts it).
        match crate::api::requests::matching(
            &state,
            kind,
            user.id,
            &policy,
            &device.serial.to_string(),
        )
        .await?
        {
            Some(r) => state.store.use_request(r, id).await.ok().map(|()| r),
            None => None,
        }
    } else {
        Some(
            crate::api::requests::carry_out(
                &state,
                req.request,
                kind,
                user.id,
                &policy,
                &device.serial.to_string(),
                id,
            )
            .await?,
        )
    };
    // The workstation agent that will relay the device commands (issue 4).
    let agent = match assign {
        false => {
            crate::agents::choose_for_start(&state, &caller, req.via.as_deref(), serial).await?
        }
        true => None,
    };
    if assign {
        let change = StateChange {
            to: DeviceState::Assigned,
            reason: None,
            assigned_user: Some(user.id),
            device_policy: Some(policy.id),
            note: Some("Assign Device".into()),
        };
        let draft = audit(
            &caller,
            "device.assign",
            format!("device:{}", device.serial),
            serde_json::json!({ "user": user.login, "policy": policy.name }),
        );
        if let Err(e) = state
            .store
            .change_device_state(device.id, device.version, &change, &draft)
            .await
        {
            if let Some(r) = request {
                let _ = state.store.release_request(r, id).await;
            }
            return Err(store_error("assigning the device", e));
        }
        let body = serde_json::json!({ "serial": device.serial.to_string(), "state": "assigned", "user": user.login, "policy": policy.name });
        return Ok((StatusCode::CREATED, Json(body)));
    }
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    let master = crate::secrets::management_key::master_key(&state).await?;
    let (data, batch) = DeviceSession::start_issue(
        NewIssuance {
            policy: &policy,
            device: &device,
            user_login: &user.login,
            display_mode: settings.initial_pin_display_mode,
            change_pin_during_issuance: settings.change_pin_during_issuance,
            pin: req.pin.as_deref(),
            confirm_pin: req.confirm_pin.as_deref(),
            master_key: &master,
        },
        time::OffsetDateTime::now_utc(),
        &mut rand::rngs::OsRng,
    )
    .map_err(invalid)?;
    let now = time::OffsetDateTime::now_utc();
    let session = IssuanceSession {
        id,
        device_id: device.id,
        user_id: user.id,
        policy_id: policy.id,
        action: keyward_domain::SessionAction::Issue,
        status: keyward_domain::SessionStatus::Running,
        step: batch.step(),
        seq: 1,
        sealed_state: seal(&state, id, &data),
        error: None,
        created_by: caller.actor(),
        created_at: now,
        updated_at: now,
    };
    let change = StateChange {
        to: DeviceState::InProduction,
        reason: None,
        assigned_user: Some(user.id),
        device_policy: Some(policy.id),
        note: Some(format!("issuance session {id}")),
    };
    let draft = audit(
        &caller,
        "issuance.start",
        format!("device:{}", device.serial),
        serde_json::json!({
            "session": id,
            "user": user.login,
            "policy": policy.name,
            "replaces": replacing.as_ref().map(|r| r.original.serial.to_string()),
            "replace_reason": replacing.as_ref().map(|r| r.replacement.reason.as_str()),
            "temporary_until": replacing.as_ref().and_then(|r| r.replacement.until).map(|t| t.to_string()),
        }),
    );
    if let Err(e) = state
        .store
        .start_issuance(&session, &device, &change, replacing.as_ref(), &draft)
        .await
    {
        // Not started: the request may be carried out again.
        if let Some(r) = request {
            let _ = state.store.release_request(r, id).await;
        }
        return Err(store_error("starting the issuance", e));
    }
    if let Some(agent) = agent {
        crate::agents::bind_session(&state, id, agent).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(
            serde_json::to_value(relay_batch(
                id,
                1,
                keyward_domain::SessionStatus::Running,
                &batch,
            ))
            .expect("a batch serialises"),
        ),
    ))
}
