//! Devices: the inventory search (serial prefix, state, type), CSV import
//! (through the REST API from the page), and the way to Recycle.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{DeviceState, DeviceType, Permission};
use keyward_store::DeviceFilter;
use serde::Deserialize;

use super::{internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/devices", get(page))
}

#[derive(Deserialize, Default)]
struct DeviceQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    device_type: String,
    after: Option<String>,
}

pub struct Row {
    pub serial: String,
    pub device_type: String,
    pub firmware: String,
    pub state: String,
    pub state_label: String,
    pub reason: String,
    pub recyclable: bool,
}

/// Work a device's move left to another service (a passkey to delete at
/// Entra ID) that has not succeeded yet.
pub struct PendingJob {
    pub id: String,
    pub what: &'static str,
    pub serial: String,
    pub attempts: u32,
    pub last_error: String,
    pub next_at: String,
}

/// A pending update request (Request Update, the renewal scan).
pub struct PendingUpdateRow {
    pub serial: String,
    /// "certificate renewal", who requested it, …
    pub origin: String,
    pub changes: Vec<String>,
    pub since: String,
}

pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    nav: Nav,
    q: String,
    states: Vec<Choice>,
    types: Vec<Choice>,
    rows: Vec<Row>,
    next: Option<String>,
    next_query: String,
    can_import: bool,
    can_recycle: bool,
    /// Pending revocations (passkey deletions): shown until they succeed or
    /// an administrator closes them.
    pending: Vec<PendingJob>,
    can_close_jobs: bool,
    /// Pending update requests: carried out when each device is next
    /// connected.
    updates: Vec<PendingUpdateRow>,
    error: Option<String>,
}

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    Query(query): Query<DeviceQuery>,
) -> Response {
    if let Err(r) = user.require(Permission::DevicesRead) {
        return r;
    }
    let state_filter = DeviceState::parse_field(&query.state, "state").ok();
    let type_filter = DeviceType::parse_field(&query.device_type, "device_type").ok();
    let mut error = None;
    let prefix = query.q.trim().to_string();
    if !prefix.chars().all(|c| c.is_ascii_digit()) {
        error = Some("A serial number has decimal digits only.".to_string());
    }
    let page = if error.is_none() {
        match state
            .store
            .list_devices(&DeviceFilter {
                serial_prefix: Some(prefix.clone()).filter(|p| !p.is_empty()),
                state: state_filter,
                device_type: type_filter,
                after: query.after.clone().filter(|a| !a.is_empty()),
                limit: 50,
                ..Default::default()
            })
            .await
        {
            Ok(p) => Some(p),
            Err(e) => return internal("searching devices", e),
        }
    } else {
        None
    };
    let (items, next) = page.map(|p| (p.items, p.next)).unwrap_or_default();
    let rows = items
        .into_iter()
        .map(|d| Row {
            serial: d.serial.to_string(),
            device_type: d.device_type.label().to_string(),
            firmware: d
                .firmware_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            state: d.state.as_str().to_string(),
            state_label: d.state.label().to_string(),
            reason: d.reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
            // Available ones too, but the list offers it where it is needed.
            recyclable: d.is_recyclable() && d.state != DeviceState::Available,
        })
        .collect();
    let pending = match state
        .store
        .list_jobs(Some(keyward_store::JobState::Pending), None)
        .await
    {
        Ok(jobs) => jobs
            .into_iter()
            // Revocations only: the renewal scan is always pending.
            .filter(|j| j.kind != keyward_store::lifecycle::JOB_RENEWAL_SCAN)
            .map(|j| PendingJob {
                id: j.id.to_string(),
                what: match j.kind.as_str() {
                    keyward_store::lifecycle::JOB_DELETE_PASSKEY => "Delete passkey at Entra ID",
                    _ => "Other",
                },
                serial: j
                    .target
                    .strip_prefix("device:")
                    .unwrap_or(&j.target)
                    .to_string(),
                attempts: j.attempts,
                last_error: j.last_error.unwrap_or_default(),
                next_at: j
                    .next_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            })
            .collect(),
        Err(e) => return internal("reading the pending jobs", e),
    };
    let updates = match state.store.pending_update_requests().await {
        Ok(requests) => {
            let mut out = Vec::with_capacity(requests.len());
            for r in requests {
                let Ok(d) = state.store.get_device(r.device_id).await else {
                    continue;
                };
                let changes: Vec<keyward_domain::update::AppliedChange> =
                    serde_json::from_str(&r.changes).unwrap_or_default();
                out.push(PendingUpdateRow {
                    serial: d.serial.to_string(),
                    origin: match r.origin.as_str() {
                        "renewal" => "certificate renewal".to_string(),
                        "offline_unlock" => "PIN check after an offline unlock".to_string(),
                        _ => crate::web::user::actor_label(&r.created_by),
                    },
                    changes: changes.iter().map(|c| c.describe()).collect(),
                    since: r
                        .created_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                });
            }
            out
        }
        Err(e) => return internal("reading the update requests", e),
    };
    render(&DevicesPage {
        updates,
        pending,
        can_close_jobs: user.can(Permission::JobsManage),
        nav: user.nav("/devices"),
        next_query: format!(
            "q={}&state={}&device_type={}",
            prefix, query.state, query.device_type
        ),
        q: prefix,
        states: DeviceState::ALL
            .iter()
            .map(|s| Choice {
                value: s.as_str(),
                label: s.label(),
                selected: Some(*s) == state_filter,
            })
            .collect(),
        types: DeviceType::ALL
            .iter()
            .map(|t| Choice {
                value: t.as_str(),
                label: t.label(),
                selected: Some(*t) == type_filter,
            })
            .collect(),
        rows,
        next,
        can_import: user.can(Permission::DevicesImport),
        can_recycle: user.can(Permission::DevicesRecycle),
        error,
    })
}
