//! Users: search by login or display-name prefix, a page at a time.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{Permission, User};
use keyward_store::{UserSearch, UserSearchField};
use serde::Deserialize;

use super::{internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/users", get(page))
}

#[derive(Deserialize, Default)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    by: String,
    after: Option<String>,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    q: String,
    by_name: bool,
    users: Vec<User>,
    next: Option<String>,
}

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    Query(query): Query<SearchQuery>,
) -> Response {
    if let Err(r) = user.require(Permission::UsersRead) {
        return r;
    }
    let by_name = query.by == "display_name";
    let found = state
        .store
        .search_users(&UserSearch {
            prefix: query.q.trim().to_string(),
            by: if by_name {
                UserSearchField::DisplayName
            } else {
                UserSearchField::Login
            },
            after: query.after.clone().filter(|a| !a.is_empty()),
            limit: 50,
        })
        .await;
    let page = match found {
        Ok(p) => p,
        Err(e) => return internal("searching users", e),
    };
    render(&UsersPage {
        nav: user.nav("/users"),
        q: query.q,
        by_name,
        users: page.items,
        next: page.next,
    })
}
