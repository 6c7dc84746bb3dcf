//! Administration: operators and self-service accounts with their roles.
//! New accounts get a one-time password, shown once on this page.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{Permission, Role};

use super::{internal, render, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/operators", get(page))
}

pub struct AccountRow {
    pub login: String,
    pub role: String,
    pub user_login: String,
    pub must_change_password: bool,
    pub disabled: bool,
}

pub struct RoleRow {
    pub value: &'static str,
    pub label: &'static str,
    pub permissions: String,
}

#[derive(Template)]
#[template(path = "operators.html")]
struct OperatorsPage {
    nav: Nav,
    accounts: Vec<AccountRow>,
    roles: Vec<RoleRow>,
}

async fn page(State(state): State<AppState>, user: WebUser) -> Response {
    if let Err(r) = user.require(Permission::OperatorsManage) {
        return r;
    }
    let accounts = match state.store.list_accounts().await {
        Ok(a) => a,
        Err(e) => return internal("listing operators", e),
    };
    let mut rows = Vec::with_capacity(accounts.len());
    for a in accounts {
        let user_login = match a.user_id {
            Some(id) => match crate::api::found(state.store.get_user(id).await) {
                Ok(u) => u.map(|u| u.login).unwrap_or_default(),
                Err(e) => return internal("listing operators", e),
            },
            None => String::new(),
        };
        rows.push(AccountRow {
            login: a.login,
            role: a.role.label().to_string(),
            user_login,
            must_change_password: a.must_change_password,
            disabled: a.disabled,
        });
    }
    render(&OperatorsPage {
        nav: user.nav("/admin/operators"),
        accounts: rows,
        roles: Role::ALL
            .iter()
            .map(|r| RoleRow {
                value: r.as_str(),
                label: r.label(),
                permissions: r
                    .permissions()
                    .iter()
                    .map(|p| p.label())
                    .collect::<Vec<_>>()
                    .join("; "),
            })
            .collect(),
    })
}
