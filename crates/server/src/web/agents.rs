//! Agents: approve a workstation agent's pairing code, list the paired
//! agents with the devices they report, and revoke one. The list and the
//! actions go through the agents API (`/api/v1/agents`, docs/protocol.md).

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::Permission;

use super::{render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/agents", get(page))
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    nav: Nav,
    server_url: String,
}

async fn page(State(state): State<AppState>, user: WebUser) -> Response {
    if let Err(r) = user.require(Permission::DevicesIssue) {
        return r;
    }
    render(&AgentsPage {
        nav: user.nav("/agents"),
        server_url: state.config.public_url(),
    })
}
