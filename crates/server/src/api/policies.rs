//! Device policies (stored whole, as validated documents) and the device
//! types' capabilities the policies are checked against.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::Serial;
use keyward_domain::{DevicePolicy, DeviceType, EntraPasskeySupport};
use keyward_proto::views::{PinCandidate, PinCheckResult, PinRuleView};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, replace, remove))
        .routes(routes!(device_types))
        .routes(routes!(pin_rules))
        .routes(routes!(pin_check))
        .routes(routes!(my_device_pin_check))
}

/// Every device policy.
#[utoipa::path(get, path = "/policies", operation_id = "listPolicies", tag = "policies",
    responses((status = 200, body = Vec<Object>, description = "Device policies"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::PoliciesRead>,
) -> ApiResult<Json<Vec<DevicePolicy>>> {
    state
        .store
        .list_policies()
        .await
        .map(Json)
        .map_err(|e| store_error("listing policies", e))
}

/// Create a device policy; every rule (PIN limits against each device type,
/// PIN sharing, management key, algorithms, FIDO support) is checked.
#[utoipa::path(post, path = "/policies", operation_id = "createPolicy", tag = "policies",
    request_body(content = Object, description = "DevicePolicy"),
    responses((status = 201, body = Object, description = "The policy"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::PoliciesWrite>,
    ApiJson(mut policy): ApiJson<DevicePolicy>,
) -> ApiResult<(StatusCode, Json<DevicePolicy>)> {
    policy.id = Uuid::new_v4();
    check(&state, &policy).await?;
    let policy = state
        .store
        .create_policy(
            &policy,
            &audit(
                &caller,
                "policy.create",
                format!("policy:{}", policy.name),
                serde_json::json!({}),
            ),
        )
        .await
        .map_err(|e| store_error("creating the policy", e))?;
    Ok((StatusCode::CREATED, Json(policy)))
}

/// Domain rules, then the references only the store can check.
async fn check(state: &AppState, policy: &DevicePolicy) -> ApiResult<()> {
    policy.validate().map_err(invalid)?;
    if let Some(fido) = &policy.fido_application {
        let service = found(
            state
                .store
                .get_passkey_service(fido.passkey_service_id)
                .await,
        )
        .map_err(|e| store_error("checking the Passkey-Enabled Service", e))?;
        if service.is_none() {
            return Err(ApiError::bad_request(
                "passkey_service_unknown",
                "the FIDO application names a Passkey-Enabled Service that does not exist",
            )
            .field("fido_application.passkey_service_id"));
        }
    }
    Ok(())
}

pub async fn load(state: &AppState, name: &str) -> ApiResult<DevicePolicy> {
    state
        .store
        .get_policy_by_name(name)
        .await
        .map_err(|e| store_error("reading the policy", e))
}

/// One device policy by name.
#[utoipa::path(get, path = "/policies/{name}", operation_id = "getPolicy", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Object, description = "The policy"), (status = 404, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::PoliciesRead>,
    Path(name): Path<String>,
) -> ApiResult<Json<DevicePolicy>> {
    load(&state, &name).await.map(Json)
}

/// Replace a device policy (same name, or a rename through `name`).
#[utoipa::path(put, path = "/policies/{name}", operation_id = "replacePolicy", tag = "policies", params(("name" = String, Path)),
    request_body(content = Object, description = "DevicePolicy"),
    responses((status = 200, body = Object, description = "The policy"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn replace(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::PoliciesWrite>,
    Path(name): Path<String>,
    ApiJson(mut policy): ApiJson<DevicePolicy>,
) -> ApiResult<Json<DevicePolicy>> {
    let current = load(&state, &name).await?;
    policy.id = current.id;
    check(&state, &policy).await?;
    state
        .store
        .update_policy(
            &policy,
            &audit(
                &caller,
                "policy.update",
                format!("policy:{}", policy.name),
                serde_json::json!({ "previous_name": name }),
            ),
        )
        .await
        .map_err(|e| store_error("updating the policy", e))?;
    Ok(Json(policy))
}

/// Delete a device policy that no device uses.
#[utoipa::path(delete, path = "/policies/{name}", operation_id = "deletePolicy", tag = "policies", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::PoliciesWrite>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let policy = load(&state, &name).await?;
    state
        .store
        .delete_policy(
            policy.id,
            &audit(
                &caller,
                "policy.delete",
                format!("policy:{}", policy.name),
                serde_json::json!({}),
            ),
        )
        .await
        .map_err(|e| store_error("deleting the policy", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The device types and their capabilities.
#[utoipa::path(get, path = "/device-types", operation_id = "listDeviceTypes", tag = "policies",
    responses((status = 200, body = Vec<Object>, description = "Device types with capabilities")))]
async fn device_types(
    Allowed(_caller, _): Allowed<perm::PoliciesRead>,
) -> ApiResult<Json<serde_json::Value>> {
    let types: Vec<serde_json::Value> = DeviceType::ALL
        .iter()
        .map(|t| {
            let c = t.capabilities();
            serde_json::json!({
                "name": t.as_str(),
                "label": t.label(),
                "algorithms": c.algorithms.iter().map(|a| serde_json::json!({
                    "algorithm": a.algorithm,
                    "min_firmware": a.min_firmware.map(|v| v.to_string()),
                })).collect::<Vec<_>>(),
                "pin_min_length": c.pin_min_length,
                "pin_max_length": c.pin_max_length,
                "pin_character_sets": c.pin_character_sets,
                "piv_transports": c.piv_transports,
                "fido_transports": c.fido_transports,
                "can_share_pin": c.can_share_pin,
                "can_change_management_key": c.can_change_management_key,
                "can_change_retry_counts": c.can_change_retry_counts,
                "max_retry_count": c.max_retry_count,
                "entra_passkey": match c.entra_passkey {
                    EntraPasskeySupport::NotSupported => "not_supported".to_string(),
                    EntraPasskeySupport::Supported => "supported".to_string(),
                    EntraPasskeySupport::FromFirmware(v) => format!("from_firmware {v}"),
                },
            })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(types)))
}

pub(crate) fn rule_views(
    checks: Vec<keyward_domain::PinRuleCheck>,
    with_result: bool,
) -> Vec<PinRuleView> {
    checks
        .into_iter()
        .map(|c| PinRuleView {
            rule: serde_json::to_value(c.rule)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            code: c.code,
            description: c.description,
            passed: with_result.then_some(c.passed),
        })
        .collect()
}

/// The PIN rules of a device policy, for a UI to list (the info button).
#[utoipa::path(get, path = "/policies/{name}/pin-rules", operation_id = "getPinRules", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Vec<PinRuleView>), (status = 404, body = ErrorBody)))]
async fn pin_rules(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::PoliciesRead>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<PinRuleView>>> {
    let policy = load(&state, &name).await?;
    Ok(Json(rule_views(policy.pin_application.check(""), false)))
}

/// Checks a candidate PIN against the policy's rules, rule by rule, as a UI
/// does while the person types. The server's check at issuance is the
/// authority; this one stores and logs nothing.
#[utoipa::path(post, path = "/policies/{name}/pin-check", operation_id = "checkPolicyPin", tag = "policies", params(("name" = String, Path)),
    request_body = PinCandidate,
    responses((status = 200, body = PinCheckResult), (status = 404, body = ErrorBody)))]
async fn pin_check(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::PoliciesRead>,
    Path(name): Path<String>,
    ApiJson(candidate): ApiJson<PinCandidate>,
) -> ApiResult<Json<PinCheckResult>> {
    let policy = load(&state, &name).await?;
    let checks = policy.pin_application.check(&candidate.pin);
    Ok(Json(PinCheckResult {
        valid: checks.iter().all(|c| c.passed),
        rules: rule_views(checks, true),
    }))
}

/// Checks a candidate new PIN against the PIN rules of my device's policy,
/// rule by rule, as the User Portal does while the person types (an empty
/// PIN lists the rules). Stores and logs nothing; the check at the prompt
/// is the authority.
#[utoipa::path(post, path = "/me/devices/{serial}/pin-check", operation_id = "checkMyDevicePin", tag = "self-service", params(("serial" = String, Path)),
    request_body = PinCandidate,
    responses((status = 200, body = PinCheckResult),
        (status = 403, body = ErrorBody, description = "not a device of the caller's user (device_not_yours)")))]
async fn my_device_pin_check(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SelfService>,
    Path(serial): Path<String>,
    ApiJson(candidate): ApiJson<PinCandidate>,
) -> ApiResult<Json<PinCheckResult>> {
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
    Ok(Json(PinCheckResult {
        valid: checks.iter().all(|c| c.passed),
        rules: rule_views(checks, true),
    }))
}
