//! The portal's own CSS and JavaScript, compiled into the binary so that a
//! running server never depends on files beside it.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::AppState;

const FILES: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/common.js"),
    ),
    (
        "add_device.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/add_device.js"),
    ),
    (
        "me.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/me.js"),
    ),
    (
        "prompts.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/prompts.js"),
    ),
    (
        "recycle.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/recycle.js"),
    ),
    (
        "device_actions.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/device_actions.js"),
    ),
    (
        "agents.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/agents.js"),
    ),
    (
        "offline_unlock.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/offline_unlock.js"),
    ),
    (
        "pin_dialog.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/pin_dialog.js"),
    ),
    (
        "update.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/update.js"),
    ),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/static/{name}", get(serve))
        // Browsers ask for it on every page; there is none.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => ([(header::CONTENT_TYPE, *mime)], *body).into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
