//! Agents: approve a workstation agent's pairing code, list the paired
//! agents, and revoke one. Operators pair the agents that relay their
//! issuances; users pair their own (the User Portal's device actions go
//! through them). The list and the actions go through the agents API
//! (`/api/v1/agents`), which pairs an agent to whoever approves it.

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

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    headers: axum::http::HeaderMap,
) -> Response {
    // Operators who issue, replace or recycle, and people for their own agents.
    if !user.can(Permission::SelfService) && !user.works_with_agents() {
        if let Err(r) = user.require(Permission::DevicesIssue) {
            return r;
        }
    }
    render(&AgentsPage {
        nav: user.nav("/agents"),
        server_url: super::server_url(&state, &headers),
    })
}
