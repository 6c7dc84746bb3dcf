//! The Requests page (issue 18): what waits for a second operator's
//! approval (with counts), Approve and Deny for each, Cancel, the approved
//! ones ready to be collected at Add Device, and the upload of a bulk CSV.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{Permission, RequestState};

use super::{internal, render, when, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/requests", get(page))
}

pub struct RequestRow {
    pub id: String,
    pub kind: String,
    pub user: String,
    pub policy: String,
    pub serial: String,
    pub state: String,
    pub state_label: &'static str,
    pub requested_by: String,
    pub decided_by: String,
    pub since: String,
    pub batch: String,
    /// Approve / Deny are offered (pending, and the signed-in person is not
    /// the requester; the server checks the recipient too).
    pub decidable: bool,
    pub cancellable: bool,
}

#[derive(Template)]
#[template(path = "requests.html")]
struct RequestsPage {
    nav: Nav,
    pending: Vec<RequestRow>,
    approved: Vec<RequestRow>,
    closed: Vec<RequestRow>,
    can_import: bool,
}

async fn page(State(state): State<AppState>, user: WebUser) -> Response {
    if let Err(r) = user.require(Permission::DevicesRead) {
        return r;
    }
    let requests = match state.store.list_requests(None, None).await {
        Ok(r) => r,
        Err(e) => return internal("reading the requests", e),
    };
    let me = user.caller.actor();
    let (mut pending, mut approved, mut closed) = (Vec::new(), Vec::new(), Vec::new());
    for r in &requests {
        let view = match crate::api::requests::view(&state, r).await {
            Ok(v) => v,
            Err(e) => return internal("reading a request", e.detail.message),
        };
        let row = RequestRow {
            id: r.id.to_string(),
            kind: view.kind,
            user: view.user,
            policy: view.policy,
            serial: view.serial.unwrap_or_else(|| "any".into()),
            state: r.state.as_str().into(),
            state_label: r.state.label(),
            requested_by: crate::web::user::actor_label(&r.requested_by),
            decided_by: r
                .decided_by
                .as_deref()
                .map(crate::web::user::actor_label)
                .unwrap_or_default(),
            since: when(r.created_at),
            batch: r.batch_id.map(|b| b.to_string()).unwrap_or_default(),
            decidable: r.state == RequestState::Pending && r.requested_by != me,
            cancellable: matches!(r.state, RequestState::Pending | RequestState::Approved),
        };
        match r.state {
            RequestState::Pending => pending.push(row),
            RequestState::Approved => approved.push(row),
            _ => closed.push(row),
        }
    }
    closed.truncate(50);
    render(&RequestsPage {
        nav: user.nav("/requests"),
        pending,
        approved,
        closed,
        can_import: user.can(Permission::DevicesIssue),
    })
}
