//! Administration: device policies (PIN, PKI and FIDO applications). Each
//! policy is shown with its PIN rules and applications, and edited as its
//! JSON document through `PUT /api/v1/policies/{name}` (every rule is
//! checked by the server); new ones through `POST /api/v1/policies`.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::Permission;

use super::{internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/policies", get(page))
}

pub struct PolicyView {
    pub name: String,
    pub description: String,
    pub device_types: String,
    pub pin_rules: Vec<String>,
    pub pki: Vec<String>,
    pub fido: String,
    pub json: String,
}

#[derive(Template)]
#[template(path = "admin_policies.html")]
struct PoliciesPage {
    nav: Nav,
    policies: Vec<PolicyView>,
}

async fn page(State(state): State<AppState>, user: WebUser) -> Response {
    if let Err(r) = user.require(Permission::PoliciesWrite) {
        return r;
    }
    let policies = match state.store.list_policies().await {
        Ok(p) => p,
        Err(e) => return internal("listing policies", e),
    };
    let views = policies
        .into_iter()
        .map(|p| PolicyView {
            name: p.name.clone(),
            description: p.description.clone(),
            device_types: p
                .device_types
                .iter()
                .map(|t| t.label())
                .collect::<Vec<_>>()
                .join(", "),
            pin_rules: p
                .pin_application
                .check("")
                .into_iter()
                .map(|c| c.description)
                .collect(),
            pki: p
                .pki_applications
                .iter()
                .map(|a| {
                    format!(
                        "{} (slot {}, {})",
                        a.name,
                        serde_json::to_value(a.slot)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        serde_json::to_value(a.algorithm)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    )
                })
                .collect(),
            fido: match &p.fido_application {
                Some(f) => format!(
                    "passkey with {} ({}; credProtect level {})",
                    f.passkey_service_name,
                    if f.share_device_pin {
                        "shares the device PIN"
                    } else {
                        "its own FIDO PIN"
                    },
                    f.cred_protect
                ),
                None => String::new(),
            },
            json: serde_json::to_string_pretty(&p).unwrap_or_default(),
        })
        .collect();
    render(&PoliciesPage {
        nav: user.nav("/admin/policies"),
        policies: views,
    })
}
