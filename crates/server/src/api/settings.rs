//! Security Settings, User Portal configuration and Device parameters.

use axum::extract::{Path, State};
use axum::Json;
use keyward_domain::{SettingKey, Settings};
use keyward_proto::{SettingValue, SettingsView};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiResult, ErrorBody};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(set))
}

pub fn view(s: &Settings) -> SettingsView {
    SettingsView {
        initial_pin_display_mode: s.initial_pin_display_mode.as_str().into(),
        change_pin_during_issuance: s.change_pin_during_issuance,
        who_can_bind: s.who_can_bind.as_str().into(),
        enable_issuance_retry_for_user: s.enable_issuance_retry_for_user,
        auto_import_unknown_devices: s.auto_import_unknown_devices,
        unlock_request_minutes: s.unlock_request_minutes,
    }
}

/// All settings.
#[utoipa::path(get, path = "/settings", operation_id = "listSettings", tag = "settings",
    responses((status = 200, body = SettingsView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::SettingsRead>,
) -> ApiResult<Json<SettingsView>> {
    let s = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    Ok(Json(view(&s)))
}

/// Set one setting by its canonical key.
#[utoipa::path(put, path = "/settings/{key}", operation_id = "setSetting", tag = "settings", params(("key" = String, Path, description = "Canonical settings key")),
    request_body = SettingValue,
    responses((status = 200, body = SettingsView), (status = 400, body = ErrorBody)))]
async fn set(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::SettingsWrite>,
    Path(key): Path<String>,
    ApiJson(value): ApiJson<SettingValue>,
) -> ApiResult<Json<SettingsView>> {
    let key = SettingKey::parse_field(&key, "key").map_err(invalid)?;
    let parsed = key
        .parse_value(&value.value)
        .map_err(|e| invalid(e.within("")))?;
    let draft = audit(
        &caller,
        "settings.set",
        format!("setting:{key}"),
        serde_json::json!({ "setting": key.as_str(), "value": parsed.to_string() }),
    );
    let s = state
        .store
        .set_setting(key, parsed, &draft)
        .await
        .map_err(|e| store_error("changing the setting", e))?;
    Ok(Json(view(&s)))
}
