//! Administration: the audit trail, a page at a time, and its verification.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::Permission;
use serde::Deserialize;

use super::{internal, render, when, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/audit", get(page))
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    after: Option<i64>,
}

pub struct EventRow {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    events: Vec<EventRow>,
    next: Option<i64>,
}

const PAGE: u32 = 100;

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Err(r) = user.require(Permission::AuditRead) {
        return r;
    }
    let events = match state.store.list_audit(q.after.unwrap_or(0), PAGE).await {
        Ok(e) => e,
        Err(e) => return internal("reading the audit trail", e),
    };
    let next = (events.len() == PAGE as usize)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    render(&AuditPage {
        nav: user.nav("/admin/audit"),
        events: events
            .into_iter()
            .map(|e| EventRow {
                seq: e.seq,
                at: when(e.at),
                actor: e.actor,
                action: e.action,
                target: e.target,
                outcome: serde_json::to_value(e.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                details: if e.details.as_object().is_some_and(|o| o.is_empty()) {
                    String::new()
                } else {
                    e.details.to_string()
                },
            })
            .collect(),
        next,
    })
}
