//! The User page: the user's details, their devices with state, policy and
//! credentials (certificates with expiry, passkeys), and the actions the
//! signed-in role may take (Add Device).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{DeviceState, Permission, User};
use keyward_store::DeviceFilter;
use serde::Deserialize;

use super::{error_page, internal, render, when, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/users/{login}", get(page))
}

pub struct DeviceRow {
    pub serial: String,
    pub device_type: String,
    pub firmware: String,
    pub state: String,
    pub state_label: String,
    pub reason: String,
    pub policy: String,
    /// When and by whom the device reached its state.
    pub since: String,
    pub by: String,
    pub credentials: Vec<CredentialRow>,
    pub highlighted: bool,
    /// The version the lifecycle actions send back (optimistic concurrency).
    pub version: i64,
}

pub struct CredentialRow {
    pub kind: String,
    pub slot: String,
    pub serial: String,
    pub expires: String,
    pub revoked: bool,
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    nav: Nav,
    user: User,
    attributes: Vec<(String, String)>,
    devices: Vec<DeviceRow>,
    can_issue: bool,
    /// Help Desk scope: declare incidents, terminate.
    can_lifecycle: bool,
    notice: Option<String>,
}

#[derive(Deserialize, Default)]
struct PageQuery {
    /// Set by the Add Device dialog on success: the device just issued.
    issued: Option<String>,
    /// Set by the Add Device dialog: the device just assigned.
    assigned: Option<String>,
    /// Set by the failure dialog's Cancel.
    cancelled: Option<String>,
}

/// The devices of a user as the User page and the User Portal show them.
pub async fn device_rows(
    state: &AppState,
    user_id: uuid::Uuid,
    highlight: Option<&str>,
) -> Result<Vec<DeviceRow>, Response> {
    let page = state
        .store
        .list_devices(&DeviceFilter {
            assigned_user: Some(user_id),
            limit: 500,
            ..Default::default()
        })
        .await
        .map_err(|e| internal("listing the user's devices", e))?;
    let policies: HashMap<uuid::Uuid, String> = state
        .store
        .list_policies()
        .await
        .map_err(|e| internal("listing policies", e))?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    let mut rows = Vec::with_capacity(page.items.len());
    for d in page.items {
        let history = state
            .store
            .device_history(d.id)
            .await
            .map_err(|e| internal("reading device history", e))?;
        let last = history.iter().rev().find(|h| h.to_state == d.state);
        // An issued device was issued by whoever started its issuance (the
        // agent only relayed the commands).
        let started = history
            .iter()
            .rev()
            .find(|h| h.to_state == DeviceState::InProduction);
        let by = match (d.state, started) {
            (DeviceState::Issued, Some(s)) => s.actor.clone(),
            _ => last.map(|h| h.actor.clone()).unwrap_or_default(),
        };
        let credentials = if matches!(d.state, DeviceState::Issued | DeviceState::InProduction) {
            state
                .store
                .device_credentials(d.id)
                .await
                .map_err(|e| internal("reading credentials", e))?
                .into_iter()
                .map(|c| CredentialRow {
                    kind: c.kind,
                    slot: c.slot.unwrap_or_default(),
                    serial: c.serial,
                    expires: c.not_after.map(when).unwrap_or_default(),
                    revoked: c.revoked_at.is_some(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let serial = d.serial.to_string();
        rows.push(DeviceRow {
            version: d.version,
            highlighted: highlight == Some(serial.as_str()),
            serial,
            device_type: d.device_type.label().to_string(),
            firmware: d
                .firmware_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            state: d.state.as_str().to_string(),
            state_label: d.state.label().to_string(),
            reason: d.reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
            policy: d
                .device_policy
                .and_then(|id| policies.get(&id).cloned())
                .unwrap_or_default(),
            since: last.map(|h| when(h.at)).unwrap_or_default(),
            by,
            credentials,
        });
    }
    Ok(rows)
}

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    Path(login): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    if let Err(r) = user.require(Permission::UsersRead) {
        return r;
    }
    let subject = match crate::api::found(state.store.get_user_by_login(&login).await) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return error_page(
                &user,
                StatusCode::NOT_FOUND,
                "No such user",
                "There is no user with this login.",
            )
        }
        Err(e) => return internal("reading the user", e),
    };
    let highlight = query.issued.as_deref().or(query.assigned.as_deref());
    let devices = match device_rows(&state, subject.id, highlight).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let notice = if let Some(s) = &query.issued {
        Some(format!(
            "Device {s} was issued to {}.",
            subject.display_name
        ))
    } else if let Some(s) = &query.assigned {
        Some(format!(
            "Device {s} is assigned to {}: issuance completes later.",
            subject.display_name
        ))
    } else {
        query.cancelled.as_ref().map(|s| {
            format!("The issuance of device {s} was cancelled: the device is no longer assigned to the user.")
        })
    };
    render(&UserPage {
        nav: user.nav("/users"),
        attributes: subject
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        user: subject,
        devices,
        can_issue: user.can(Permission::DevicesIssue),
        can_lifecycle: user.can(Permission::DevicesLifecycle),
        notice,
    })
}
