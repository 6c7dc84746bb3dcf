//! Add Device for a user: every check before the device is touched, then
//! the first batch.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{DeviceState, Serial, StateChange, UserStatus};
use keyward_engine::plan::{initial_pin, piv_plan, random_puk, PlanSecrets};
use keyward_engine::DeviceSession;
use keyward_store::IssuanceSession;
use rand::RngCore;
use uuid::Uuid;

use super::session::{master_key, seal};
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
    super::access::MayStart(caller): super::access::MayStart,
    ApiJson(req): ApiJson<StartIssuance>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    // Operators with "devices.issue"; a self-service account only for the
    // device assigned to its own user (under who_can_bind = user).
    super::access::may_start(&state, &caller, &req).await?;
    let serial = Serial::parse("serial", &req.serial).map_err(invalid)?;
    let device = found(state.store.get_device_by_serial(serial).await)
        .map_err(|e| store_error("reading the device", e))?
        .ok_or_else(|| ApiError::not_found("device").field("serial"))?;
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
    let policy = crate::api::policies::load(&state, &req.policy).await?;
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
        state
            .store
            .change_device_state(device.id, device.version, &change, &draft)
            .await
            .map_err(|e| store_error("assigning the device", e))?;
        let body = serde_json::json!({ "serial": device.serial.to_string(), "state": "assigned", "user": user.login, "policy": policy.name });
        return Ok((StatusCode::CREATED, Json(body)));
    }
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    let mut rng = rand::rngs::OsRng;
    let pin = initial_pin(
        settings.initial_pin_display_mode,
        &policy.pin_application,
        req.pin.as_deref(),
        req.confirm_pin.as_deref(),
        &mut rng,
    )
    .map_err(invalid)?;
    // Not Displayed: with "Change PIN during issuance" = Yes the person sets
    // their own PIN at the end (a prompt); with No the generated PIN is kept
    // sealed for Get Initial PIN.
    let change_pin_at_end = pin.generated && settings.change_pin_during_issuance;
    let initial_pin = (pin.generated && !change_pin_at_end).then(|| pin.pin.clone());
    // Read and unsealed once per server, not per issuance.
    let master = state
        .master_key
        .get_or_try_init(|| master_key(&state))
        .await?
        .clone();
    let mut guid = [0u8; 16];
    rng.fill_bytes(&mut guid);
    let expiration = (time::OffsetDateTime::now_utc() + time::Duration::days(5 * 365)).date();
    let plan = piv_plan(
        &policy,
        &device,
        PlanSecrets {
            pin: pin.pin,
            puk: random_puk(&mut rng),
            master_key: &master,
            chuid_guid: guid,
            credential_number: rng.next_u32() % 1_000_000,
            expiration: format!(
                "{:04}{:02}{:02}",
                expiration.year(),
                expiration.month() as u8,
                expiration.day()
            ),
        },
    )
    .map_err(invalid)?;
    let (data, batch) = DeviceSession::issue(
        plan,
        &user.login,
        &policy.name,
        initial_pin,
        change_pin_at_end,
    );
    let id = Uuid::new_v4();
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
        serde_json::json!({ "session": id, "user": user.login, "policy": policy.name }),
    );
    state
        .store
        .start_issuance(&session, &device, &change, &draft)
        .await
        .map_err(|e| store_error("starting the issuance", e))?;
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
