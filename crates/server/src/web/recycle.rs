//! Recycle a device: wipe it to factory state through the workstation agent
//! that reports it, and return it to Available (reason recycled). Allowed at
//! once on a device whose issuance failed, was cancelled or abandoned. The
//! page starts the recycle session (`POST /api/v1/devices/{serial}/recycle`
//! with `via`), follows it, and asks its prompts (a FIDO reset needs the
//! device reinserted and touched).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{Permission, Serial};

use super::{error_page, internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/devices/{serial}/recycle", get(page))
}

#[derive(Template)]
#[template(path = "recycle.html")]
struct RecyclePage {
    nav: Nav,
    serial: String,
    device_type: String,
    state_label: String,
    reason: String,
    recyclable: bool,
    server_url: String,
}

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    headers: axum::http::HeaderMap,
    Path(serial): Path<String>,
) -> Response {
    if let Err(r) = user.require(Permission::DevicesRecycle) {
        return r;
    }
    let not_found = || {
        error_page(
            &user,
            StatusCode::NOT_FOUND,
            "No such device",
            "There is no device with this serial number in the inventory.",
        )
    };
    let Ok(serial) = Serial::parse("serial", &serial) else {
        return not_found();
    };
    let device = match crate::api::found(state.store.get_device_by_serial(serial).await) {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(),
        Err(e) => return internal("reading the device", e),
    };
    render(&RecyclePage {
        nav: user.nav("/devices"),
        serial: device.serial.to_string(),
        device_type: device.device_type.label().to_string(),
        state_label: device.state.label().to_string(),
        reason: device
            .reason
            .map(|r| r.as_str().to_string())
            .unwrap_or_default(),
        recyclable: device.is_recyclable(),
        server_url: super::server_url(&state, &headers),
    })
}
