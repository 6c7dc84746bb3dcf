//! Add Device: the issuance dialog of the User page. The page carries what
//! the server knows up front (the user, the PIN display mode); the devices
//! connected to the operator's agents, the fitting policies, the PIN rules,
//! progress and prompts come live from the API (`static/add_device.js`).
//! The browser never talks to an agent and never holds device commands.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{DisplayMode, Permission, User};

use super::{error_page, internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/users/{login}/add-device", get(page))
}

#[derive(Template)]
#[template(path = "add_device.html")]
struct AddDevicePage {
    nav: Nav,
    user: User,
    /// `displayed`, `disguised` or `not_displayed`.
    display_mode: &'static str,
    display_mode_label: &'static str,
    change_pin_during_issuance: bool,
    server_url: String,
    /// Replace Device: the device replaced, why, and its policy (chosen
    /// for the new device unless the operator picks another).
    replacing: Option<Replacing>,
}

struct Replacing {
    serial: String,
    reason: String,
    temporary: bool,
    policy: String,
    temporary_days: u32,
}

#[derive(serde::Deserialize, Default)]
struct PageQuery {
    replaces: Option<String>,
    reason: Option<String>,
}

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    headers: axum::http::HeaderMap,
    Path(login): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let needs = match q.replaces {
        Some(_) => Permission::DevicesReplace,
        None => Permission::DevicesIssue,
    };
    if let Err(r) = user.require(needs) {
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
    let settings = match state.store.get_settings().await {
        Ok(s) => s,
        Err(e) => return internal("reading settings", e),
    };
    let mode: DisplayMode = settings.initial_pin_display_mode;
    let replacing = match (q.replaces, q.reason) {
        (Some(serial), reason) => {
            let reason = reason.unwrap_or_else(|| "lost".into());
            let original = match keyward_domain::Serial::parse("replaces", &serial) {
                Ok(s) => crate::api::found(state.store.get_device_by_serial(s).await),
                Err(_) => Ok(None),
            };
            let original = match original {
                Ok(Some(d)) if d.assigned_user == Some(subject.id) => d,
                Ok(_) => {
                    return error_page(
                        &user,
                        StatusCode::NOT_FOUND,
                        "No such device",
                        "The device to replace is not one of this user's devices.",
                    )
                }
                Err(e) => return internal("reading the device", e),
            };
            let policy = match original.device_policy {
                Some(id) => state.store.get_policy(id).await.ok(),
                None => None,
            };
            Some(Replacing {
                serial,
                temporary: reason == "forgotten",
                reason,
                temporary_days: policy
                    .as_ref()
                    .map(|p| p.temporary_validity_days)
                    .unwrap_or(7),
                policy: policy.map(|p| p.name).unwrap_or_default(),
            })
        }
        (None, _) => None,
    };
    render(&AddDevicePage {
        nav: user.nav("/users"),
        user: subject,
        display_mode: mode.as_str(),
        display_mode_label: mode.label(),
        change_pin_during_issuance: settings.change_pin_during_issuance,
        server_url: super::server_url(&state, &headers),
        replacing,
    })
}
