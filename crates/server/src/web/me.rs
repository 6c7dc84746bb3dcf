//! The User Portal (self-service): my devices with state, policy and
//! credentials, and Get Initial PIN (revealed once, after confirmation,
//! audited by the API; the page drops the PIN when the person hides it),
//! Change PIN, and Report Lost or Stolen (after a warning that it cannot be
//! undone).

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::Permission;

use super::user::{acted_notice, device_rows, DeviceRow, Grants};
use super::{render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/me", get(page))
}

#[derive(Template)]
#[template(path = "me.html")]
struct MePage {
    nav: Nav,
    devices: Vec<DeviceRow>,
    /// "Who can bind the device to the user?" is User: the person completes
    /// the issuance of a device assigned to them, through their own agent.
    can_complete: bool,
    /// The user's login (the issuance is started in their name).
    user_login: String,
    /// The initial PIN display mode: which PIN fields the person fills in.
    display_mode: &'static str,
    notice: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct PageQuery {
    acted: Option<String>,
    done: Option<String>,
}

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Err(r) = user.require(Permission::SelfService) {
        return r;
    }
    let Some(user_id) = user.caller.user_id else {
        return super::error_page(
            &user,
            axum::http::StatusCode::FORBIDDEN,
            "No user record",
            "This account is not linked to a user.",
        );
    };
    let grants = Grants {
        lifecycle: false,
        suspend: false,
        replace: false,
        own_loss: true,
        unlock: false,
        own_unlock: true,
        update: false,
        own_update: true,
    };
    let devices = match device_rows(&state, user_id, q.acted.as_deref(), grants).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let settings = match state.store.get_settings().await {
        Ok(s) => s,
        Err(e) => return super::internal("reading the settings or user", e),
    };
    let user_login = match state.store.get_user(user_id).await {
        Ok(u) => u.login,
        Err(e) => return super::internal("reading the settings or user", e),
    };
    render(&MePage {
        nav: user.nav("/me"),
        devices,
        can_complete: settings.who_can_bind == keyward_domain::WhoCanBind::User,
        user_login,
        display_mode: settings.initial_pin_display_mode.as_str(),
        notice: match (&q.acted, &q.done) {
            (Some(s), Some(d)) => Some(acted_notice(s, d)),
            _ => None,
        },
    })
}
