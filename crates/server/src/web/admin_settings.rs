//! Administration: Security Settings ("Device initial PIN display mode"),
//! User Portal configuration and Device parameters. Each setting is changed
//! through `PUT /api/v1/settings/{key}` from the page.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{Permission, SettingKey};

use super::{internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/settings", get(page))
}

pub struct SettingRow {
    pub key: &'static str,
    pub label: &'static str,
    pub section: &'static str,
    pub current: String,
    pub choices: Vec<(&'static str, &'static str)>,
}

#[derive(Template)]
#[template(path = "admin_settings.html")]
struct SettingsPage {
    nav: Nav,
    rows: Vec<SettingRow>,
}

async fn page(State(state): State<AppState>, user: WebUser) -> Response {
    if let Err(r) = user.require(Permission::SettingsWrite) {
        return r;
    }
    let s = match state.store.get_settings().await {
        Ok(s) => s,
        Err(e) => return internal("reading settings", e),
    };
    // The current values by key, from the API's own view of the settings.
    let current = serde_json::to_value(crate::api::settings::view(&s)).unwrap_or_default();
    let rows = SettingKey::ALL
        .iter()
        .map(|k| {
            let value = &current[k.as_str()];
            let choices = match k {
                SettingKey::InitialPinDisplayMode => vec![
                    ("displayed", "Displayed"),
                    ("disguised", "Disguised"),
                    ("not_displayed", "Not Displayed"),
                ],
                SettingKey::WhoCanBind => {
                    vec![("issuance_operator", "Issuance Operator"), ("user", "User")]
                }
                SettingKey::UnlockRequestMinutes => vec![
                    ("5", "5 minutes"),
                    ("10", "10 minutes"),
                    ("15", "15 minutes"),
                    ("30", "30 minutes"),
                    ("60", "1 hour"),
                    ("240", "4 hours"),
                    ("1440", "1 day"),
                ],
                // Every other setting is a yes/no one.
                _ => vec![("true", "Yes"), ("false", "No")],
            };
            SettingRow {
                key: k.as_str(),
                label: k.label(),
                section: k.section(),
                current: match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                choices,
            }
        })
        .collect();
    render(&SettingsPage {
        nav: user.nav("/admin/settings"),
        rows,
    })
}
