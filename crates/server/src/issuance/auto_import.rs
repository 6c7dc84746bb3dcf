//! Automatic import of unknown devices (issue 18, "Enable Automatic Import
//! of Unknown Cards"): a supported device the inventory does not hold
//! becomes Available (type, serial and firmware from its own
//! identification; audited) at the moment an operator picks it at Add Device
//! or names it in `keyward issue`, and is issued at once. Devices an agent
//! merely reports are never imported (any paired agent, a person's own
//! included, could otherwise fill the inventory). With the setting off, the
//! refusal says how to import it.

use axum::http::StatusCode;
use keyward_domain::{Device, DeviceType, FirmwareVersion, NewDevice, Serial};
use keyward_proto::StartIssuance;

use crate::api::{audit, store_error};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// The device `serial` the inventory does not hold, imported when the
/// setting allows, from the identification of the agent that relays it or
/// of the caller's own client.
pub(super) async fn unknown_device(
    state: &AppState,
    caller: &Caller,
    serial: Serial,
    req: &StartIssuance,
) -> ApiResult<Device> {
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    if !settings.auto_import_unknown_devices {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "device_not_in_inventory",
            format!(
                "device {serial} is not in the inventory: import it (Devices page, or `keyward admin device import FILE.csv`), or turn on \"Enable Automatic Import of Unknown Cards\""
            ),
        )
        .field("serial"));
    }
    let (device_type, firmware) = identification(state, caller, serial, req).await?;
    let new = NewDevice {
        device_type,
        serial,
        firmware_version: firmware,
        atr: None,
    };
    let draft = audit(
        caller,
        "device.auto_import",
        format!("device:{serial}"),
        serde_json::json!({
            "device_type": device_type,
            "firmware_version": firmware.map(|f| f.to_string()),
            "via": req.via,
        }),
    );
    state
        .store
        .insert_device(&new, &draft)
        .await
        .map_err(|e| store_error("importing the device", e))
}

/// A device not in the inventory as an agent the caller may use reports it,
/// when automatic import is on (Add Device's policies for it); None
/// otherwise.
pub async fn reported_unknown(
    state: &AppState,
    caller: &Caller,
    serial: &str,
) -> ApiResult<Option<Device>> {
    let Ok(serial) = Serial::parse("serial", serial) else {
        return Ok(None);
    };
    let on = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?
        .auto_import_unknown_devices;
    if !on {
        return Ok(None);
    }
    let req = StartIssuance {
        via: Some("agent".into()),
        ..Default::default()
    };
    Ok(identification(state, caller, serial, &req).await.ok().map(
        |(device_type, firmware_version)| {
            NewDevice {
                device_type,
                serial,
                firmware_version,
                atr: None,
            }
            .into_device()
        },
    ))
}

/// The device's own identification: the report of the agent that will
/// relay it (one the caller may use), else what the caller's client read.
async fn identification(
    state: &AppState,
    caller: &Caller,
    serial: Serial,
    req: &StartIssuance,
) -> ApiResult<(DeviceType, Option<FirmwareVersion>)> {
    let unidentified = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "device_not_identified",
            format!(
                "device {serial} is not in the inventory and did not identify itself: connect it to a workstation agent (or run keyward issue where it is) and try again"
            ),
        )
        .field("serial")
    };
    let parse = |t: &str, f: Option<&str>| -> ApiResult<(DeviceType, Option<FirmwareVersion>)> {
        let t = DeviceType::parse_field(t, "device_type").map_err(crate::api::invalid)?;
        let f = f
            .map(|f| f.parse::<FirmwareVersion>())
            .transpose()
            .map_err(|_| {
                ApiError::bad_request("firmware_invalid", "the firmware is MAJOR.MINOR.PATCH")
                    .field("identified_firmware")
            })?;
        Ok((t, f))
    };
    if matches!(req.via.as_deref(), None | Some("local")) {
        let t = req.identified_type.as_deref().ok_or_else(unidentified)?;
        return parse(t, req.identified_firmware.as_deref());
    }
    let agents = state
        .store
        .list_agents()
        .await
        .map_err(|e| store_error("listing agents", e))?;
    let reports = state
        .store
        .list_agent_devices()
        .await
        .map_err(|e| store_error("listing the agents' devices", e))?;
    let serial_text = serial.to_string();
    for d in reports.iter().filter(|d| d.serial == serial_text) {
        let usable = agents
            .iter()
            .any(|a| a.id == d.agent_id && crate::agents::may_use(caller, a));
        if !usable {
            continue;
        }
        let info: serde_json::Value = serde_json::from_str(&d.info).unwrap_or_default();
        if let Some(t) = info["device_type"].as_str() {
            return parse(t, info["firmware"].as_str());
        }
    }
    Err(unidentified())
}
