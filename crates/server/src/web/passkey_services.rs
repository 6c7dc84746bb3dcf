//! Administration: Passkey-Enabled Services (Microsoft Entra ID tenants),
//! with Test connection. The client secret is never shown.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::Permission;

use super::{internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/passkey-services", get(page))
}

pub struct ServiceView {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub authority_url: String,
    pub graph_url: String,
}

#[derive(Template)]
#[template(path = "passkey_services.html")]
struct ServicesPage {
    nav: Nav,
    services: Vec<ServiceView>,
}

async fn page(State(state): State<AppState>, user: WebUser) -> Response {
    if let Err(r) = user.require(Permission::PasskeyServicesWrite) {
        return r;
    }
    let services = match state.store.list_passkey_services().await {
        Ok(s) => s,
        Err(e) => return internal("listing Passkey-Enabled Services", e),
    };
    render(&ServicesPage {
        nav: user.nav("/admin/passkey-services"),
        services: services
            .into_iter()
            .map(|s| ServiceView {
                name: s.name,
                tenant_id: s.tenant_id,
                client_id: s.client_id,
                authority_url: s.authority_url,
                graph_url: s.graph_url,
            })
            .collect(),
    })
}
