//! The device inventory: register and import devices, search, show with
//! history, and state changes under optimistic concurrency.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use keyward_domain::{
    Atr, Device, DeviceState, DeviceType, FirmwareVersion, NewDevice, Serial, StateChange,
    StateReason,
};
use keyward_proto::views::{DeviceDetails, DeviceQuery, ImportQuery};
use keyward_proto::{DeviceStateRequest, ImportReport, Page, RowError};
use keyward_store::DeviceFilter;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::import::{read_rows, row_error, run_import};
use super::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{ApiJson, ApiQuery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
        .routes(routes!(change_state))
        .routes(routes!(fitting_policies))
}

/// The import route, apart: it gets the larger body limit.
pub fn import_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(import))
}

/// Search the inventory.
#[utoipa::path(get, path = "/devices", operation_id = "listDevices", tag = "devices", params(DeviceQuery),
    responses((status = 200, body = Object, description = "Page of devices"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> ApiResult<Json<Page<Device>>> {
    let limit = match q.limit {
        None => 50,
        Some(n) if (1..=500).contains(&n) => n,
        Some(_) => {
            return Err(
                ApiError::bad_request("limit_out_of_range", "limit must be 1 to 500")
                    .field("limit"),
            )
        }
    };
    let filter = DeviceFilter {
        serial_prefix: q.prefix.clone().filter(|p| !p.is_empty()),
        state: q
            .state
            .as_deref()
            .map(|s| DeviceState::parse_field(s, "state"))
            .transpose()
            .map_err(invalid)?,
        device_type: q
            .device_type
            .as_deref()
            .map(|s| DeviceType::parse_field(s, "device_type"))
            .transpose()
            .map_err(invalid)?,
        after: q.after.clone(),
        limit,
        ..Default::default()
    };
    let page = state
        .store
        .list_devices(&filter)
        .await
        .map_err(|e| store_error("searching devices", e))?;
    Ok(Json(Page {
        items: page.items,
        next: page.next,
    }))
}

/// Register one device in the inventory (state `available`).
#[utoipa::path(post, path = "/devices", operation_id = "createDevice", tag = "devices",
    request_body(content = Object, description = "NewDevice: device_type, serial, firmware_version, atr"),
    responses((status = 201, body = Object, description = "The device"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesImport>,
    ApiJson(new): ApiJson<NewDevice>,
) -> ApiResult<(StatusCode, Json<Device>)> {
    let draft = audit(
        &caller,
        "device.create",
        format!("device:{}", new.serial),
        serde_json::json!({ "device_type": new.device_type }),
    );
    let device = state
        .store
        .insert_device(&new, &draft)
        .await
        .map_err(|e| store_error("registering the device", e))?;
    Ok((StatusCode::CREATED, Json(device)))
}

/// One device with its history.
#[utoipa::path(get, path = "/devices/{serial}", operation_id = "getDevice", tag = "devices", params(("serial" = String, Path)),
    responses((status = 200, body = DeviceDetails), (status = 404, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
    Path(serial): Path<String>,
) -> ApiResult<Json<DeviceDetails>> {
    let device = load(&state, &serial).await?;
    let history = state
        .store
        .device_history(device.id)
        .await
        .map_err(|e| store_error("reading the device history", e))?;
    Ok(Json(DeviceDetails {
        state_label: device.state.label().to_string(),
        device,
        history,
    }))
}

pub async fn load(state: &AppState, serial: &str) -> ApiResult<Device> {
    let serial = Serial::parse("serial", serial).map_err(invalid)?;
    state
        .store
        .get_device_by_serial(serial)
        .await
        .map_err(|e| store_error("reading the device", e))
}

/// Change a device's state by hand: a person's moves only (unassign,
/// terminate, declare incident, restore), not under an active session; the
/// certificates are revoked, held or released with the move, and passkey
/// deletions queued (the lifecycle service). Refused with 409
/// `version_conflict` if the device changed since `expected_version` was read.
#[utoipa::path(post, path = "/devices/{serial}/state", operation_id = "changeDeviceState", tag = "devices", params(("serial" = String, Path)),
    request_body = DeviceStateRequest,
    responses((status = 200, body = Object, description = "The device"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn change_state(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesLifecycle>,
    Path(serial): Path<String>,
    ApiJson(req): ApiJson<DeviceStateRequest>,
) -> ApiResult<Json<Device>> {
    let device = load(&state, &serial).await?;
    if device.version != req.expected_version {
        return Err(version_conflict(&device));
    }
    let change = StateChange {
        to: DeviceState::parse_field(&req.to, "to").map_err(invalid)?,
        reason: req
            .reason
            .as_deref()
            .map(|r| StateReason::parse_field(r, "reason"))
            .transpose()
            .map_err(invalid)?,
        assigned_user: None,
        device_policy: None,
        note: req.note.clone(),
    };
    let (updated, _) =
        crate::lifecycle::change_state(&state, &caller, &device, req.expected_version, &change)
            .await?;
    Ok(Json(updated))
}

pub fn version_conflict(device: &Device) -> ApiError {
    ApiError::conflict(
        "version_conflict",
        format!(
            "device {} changed since you read it (now {} at version {})",
            device.serial, device.state, device.version
        ),
    )
    .field("expected_version")
}

/// Import devices from CSV (`text/csv`: columns `device_type,serial,firmware_version,atr`)
/// or a JSON array of NewDevice objects.
#[utoipa::path(post, path = "/devices/import", operation_id = "importDevices", tag = "devices", params(ImportQuery),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportReport), (status = 400, body = ErrorBody)))]
async fn import(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesImport>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ImportReport>> {
    let rows = read_rows::<NewDevice>(&headers, &body, parse_device_csv)?;
    run_import(&caller, "device", q, rows, |good, mode, draft| async move {
        state.store.import_devices(&good, mode, &draft).await
    })
    .await
}

fn parse_device_csv(body: &[u8]) -> ApiResult<Vec<Result<NewDevice, RowError>>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request("invalid_utf8", format!("CSV is not valid UTF-8 ({e})"))
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| ApiError::bad_request("csv_malformed", e.to_string()))?
        .clone();
    let known = ["device_type", "serial", "firmware_version", "atr"];
    for h in headers.iter() {
        if !known.contains(&h) {
            return Err(ApiError::bad_request(
                "csv_unknown_column",
                format!("unknown column '{h}'; columns: {}", known.join(", ")),
            )
            .field(h.to_string()));
        }
    }
    for required in ["device_type", "serial"] {
        if !headers.iter().any(|h| h == required) {
            return Err(ApiError::bad_request(
                "csv_missing_column",
                format!("the CSV needs a '{required}' column"),
            )
            .field(required));
        }
    }
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row_no = i + 1;
        let parsed = record
            .map_err(|e| RowError {
                row: row_no,
                code: "csv_malformed".into(),
                field: String::new(),
                message: e.to_string(),
            })
            .and_then(|record| {
                let get = |name: &str| {
                    headers
                        .iter()
                        .position(|h| h == name)
                        .and_then(|i| record.get(i))
                        .unwrap_or("")
                };
                let device_type = DeviceType::parse_field(get("device_type"), "device_type")
                    .map_err(|e| row_error(row_no, e))?;
                let serial =
                    Serial::parse("serial", get("serial")).map_err(|e| row_error(row_no, e))?;
                let firmware_version = match get("firmware_version") {
                    "" => None,
                    v => Some(FirmwareVersion::parse(v).map_err(|e| row_error(row_no, e))?),
                };
                let atr = match get("atr") {
                    "" => None,
                    v => Some(Atr::parse("atr", v).map_err(|e| row_error(row_no, e))?),
                };
                Ok(NewDevice {
                    device_type,
                    serial,
                    firmware_version,
                    atr,
                })
            });
        rows.push(parsed);
    }
    Ok(rows)
}

/// The device policies that fit this device (its type and firmware): the
/// ones Add Device offers for it.
#[utoipa::path(get, path = "/devices/{serial}/policies", operation_id = "listFittingPolicies", tag = "devices", params(("serial" = String, Path)),
    responses((status = 200, body = Vec<Object>, description = "Fitting device policies"), (status = 404, body = ErrorBody)))]
async fn fitting_policies(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::DevicesRead>,
    Path(serial): Path<String>,
) -> ApiResult<Json<Vec<keyward_domain::DevicePolicy>>> {
    let device = match load(&state, &serial).await {
        Ok(d) => d,
        // Not in the inventory: with automatic import on, what fits the
        // device as the caller's agent reports it (it is imported when it
        // is picked).
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            crate::issuance::reported_unknown(&state, &caller, &serial)
                .await?
                .ok_or(e)?
        }
        Err(e) => return Err(e),
    };
    let policies = state
        .store
        .list_policies()
        .await
        .map_err(|e| store_error("listing policies", e))?;
    Ok(Json(
        policies
            .into_iter()
            .filter(|p| p.check_device(&device).is_ok())
            .collect(),
    ))
}
