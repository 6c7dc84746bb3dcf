//! Get Initial PIN: with "Device initial PIN display mode" = Not Displayed and
//! "Change PIN during issuance" = No, Keyward generates the PIN and nobody is
//! shown it during issuance; the user recovers it later in self-service.
//! The PIN is kept only sealed under the KEK (bound to the device), revealed
//! once and then wiped, and expires after `initial_pin_days`. Every reveal is
//! audited; the PIN itself never reaches the audit trail or the log.

use axum::extract::{Path, State};
use axum::Json;
use keyward_domain::{Device, Serial};
use keyward_engine::piv::Secret;
use keyward_proto::views::{InitialPin, MyDevice};
use keyward_store::DeviceFilter;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::api::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_devices))
        .routes(routes!(reveal))
}

fn secret_name(device: Uuid) -> String {
    format!("initial-pin:{device}")
}

#[derive(Serialize, Deserialize)]
struct Kept {
    pin: Secret,
    user_id: Uuid,
    expires_at: i64,
}

/// Keeps the generated PIN of a device just issued, sealed.
pub async fn keep(
    state: &AppState,
    device: &Device,
    user_id: Uuid,
    pin: &Secret,
    caller: &Caller,
) -> ApiResult<()> {
    let name = secret_name(device.id);
    let expires_at = time::OffsetDateTime::now_utc()
        + time::Duration::days(state.config.initial_pin_days as i64);
    let plain = Zeroizing::new(
        serde_json::to_vec(&Kept {
            pin: pin.clone(),
            user_id,
            expires_at: expires_at.unix_timestamp(),
        })
        .expect("serialises"),
    );
    let draft = audit(
        caller,
        "device.initial_pin_kept",
        format!("device:{}", device.serial),
        serde_json::json!({}),
    );
    state
        .store
        .put_secret(&name, &state.sealer.seal(&name, &plain), &draft)
        .await
        .map_err(|e| store_error("keeping the initial PIN", e))
}

fn user_of(caller: &Caller) -> ApiResult<Uuid> {
    caller
        .user_id
        .ok_or_else(|| ApiError::forbidden("self-service without a user record"))
}

/// The signed-in user's devices.
#[utoipa::path(get, path = "/me/devices", operation_id = "listMyDevices", tag = "self-service",
    responses((status = 200, body = Vec<MyDevice>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn my_devices(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SelfService>,
) -> ApiResult<Json<Vec<MyDevice>>> {
    let user = user_of(&caller)?;
    let page = state
        .store
        .list_devices(&DeviceFilter {
            assigned_user: Some(user),
            limit: 1000,
            ..Default::default()
        })
        .await
        .map_err(|e| store_error("listing your devices", e))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = Vec::with_capacity(page.items.len());
    for d in page.items {
        let available = match state
            .store
            .get_secret(&secret_name(d.id))
            .await
            .map_err(|e| store_error("listing your devices", e))?
        {
            Some(sealed) => open(&state, d.id, &sealed)
                .is_some_and(|k| k.user_id == user && k.expires_at >= now),
            None => false,
        };
        out.push(MyDevice {
            serial: d.serial.to_string(),
            device_type: d.device_type.as_str().into(),
            state: d.state.as_str().into(),
            state_label: d.state.label().into(),
            initial_pin_available: available,
        });
    }
    Ok(Json(out))
}

fn open(state: &AppState, device: Uuid, sealed: &[u8]) -> Option<Kept> {
    let plain = Zeroizing::new(state.sealer.open(&secret_name(device), sealed).ok()?);
    serde_json::from_slice(&plain).ok()
}

/// Get Initial PIN: reveals the initial PIN of one of my devices, once. The
/// PIN is wiped when revealed, or when it expires.
#[utoipa::path(post, path = "/me/devices/{serial}/initial-pin", operation_id = "revealInitialPin", tag = "self-service", params(("serial" = String, Path)),
    responses((status = 200, body = InitialPin), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn reveal(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SelfService>,
    Path(serial): Path<String>,
) -> ApiResult<Json<InitialPin>> {
    let user = user_of(&caller)?;
    let serial = Serial::parse("serial", &serial).map_err(invalid)?;
    let device = state
        .store
        .get_device_by_serial(serial)
        .await
        .map_err(|e| store_error("reading the device", e))?;
    if device.assigned_user != Some(user) {
        // Not yours: the same answer as for a device that does not exist.
        return Err(ApiError::not_found("device"));
    }
    let name = secret_name(device.id);
    let gone = || {
        ApiError::new(axum::http::StatusCode::GONE, "initial_pin_not_available", "no initial PIN to reveal: it was revealed already, it expired, or the PIN was chosen during issuance")
    };
    let sealed = state
        .store
        .get_secret(&name)
        .await
        .map_err(|e| store_error("reading the initial PIN", e))?
        .ok_or_else(gone)?;
    let kept = open(&state, device.id, &sealed)
        .filter(|k| k.user_id == user)
        .ok_or_else(gone)?;
    let expired = kept.expires_at < time::OffsetDateTime::now_utc().unix_timestamp();
    let draft = audit(
        &caller,
        if expired {
            "device.initial_pin_expired"
        } else {
            "device.initial_pin_revealed"
        },
        format!("device:{}", device.serial),
        serde_json::json!({}),
    );
    // Wipe first: whoever deletes it is the one who may see it.
    if !state
        .store
        .delete_secret(&name, &draft)
        .await
        .map_err(|e| store_error("wiping the initial PIN", e))?
        || expired
    {
        return Err(gone());
    }
    Ok(Json(InitialPin {
        serial: device.serial.to_string(),
        pin: kept.pin.expose().to_string(),
    }))
}
