//! Operators (and self-service accounts) and the roles they hold.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{Account, Role};
use keyward_proto::{OperatorCreate, OperatorCreated, OperatorView, RoleView};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::session::random_b64;
use super::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::secrets::hash_password;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(roles))
}

pub fn view(a: &Account, user_login: Option<String>) -> OperatorView {
    OperatorView {
        id: a.id.to_string(),
        login: a.login.clone(),
        role: a.role.as_str().into(),
        user_login,
        must_change_password: a.must_change_password,
        disabled: a.disabled,
    }
}

/// Every account.
#[utoipa::path(get, path = "/operators", operation_id = "listOperators", tag = "operators",
    responses((status = 200, body = Vec<OperatorView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::OperatorsManage>,
) -> ApiResult<Json<Vec<OperatorView>>> {
    let accounts = state
        .store
        .list_accounts()
        .await
        .map_err(|e| store_error("listing operators", e))?;
    let mut views = Vec::with_capacity(accounts.len());
    for a in accounts {
        let user_login = match a.user_id {
            Some(id) => found(state.store.get_user(id).await)
                .map_err(|e| store_error("listing operators", e))?
                .map(|u| u.login),
            None => None,
        };
        views.push(view(&a, user_login));
    }
    Ok(Json(views))
}

/// Create an account with a one-time password (shown once; changed at first sign-in).
#[utoipa::path(post, path = "/operators", operation_id = "createOperator", tag = "operators",
    request_body = OperatorCreate,
    responses((status = 201, body = OperatorCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::OperatorsManage>,
    ApiJson(req): ApiJson<OperatorCreate>,
) -> ApiResult<(StatusCode, Json<OperatorCreated>)> {
    let role = Role::parse_field(&req.role, "role").map_err(invalid)?;
    let user_id = match &req.user_login {
        Some(login) => Some(super::users::load(&state, login).await?.id),
        None => None,
    };
    let one_time_password = random_b64(15);
    let otp = one_time_password.clone();
    let phc = tokio::task::spawn_blocking(move || hash_password(&otp))
        .await
        .expect("hashing does not panic");
    let account = Account {
        id: Uuid::new_v4(),
        login: req.login,
        role,
        password_hash: Some(phc),
        must_change_password: true,
        user_id,
        disabled: false,
    };
    account.validate().map_err(invalid)?;
    state
        .store
        .create_account(
            &account,
            &audit(
                &caller,
                "operator.create",
                format!("account:{}", account.login),
                serde_json::json!({ "role": role }),
            ),
        )
        .await
        .map_err(|e| store_error("creating the operator", e))?;
    Ok((
        StatusCode::CREATED,
        Json(OperatorCreated {
            operator: view(&account, req.user_login),
            one_time_password,
        }),
    ))
}

/// The roles and what each allows.
#[utoipa::path(get, path = "/roles", operation_id = "listRoles", tag = "operators",
    responses((status = 200, body = Vec<RoleView>)))]
async fn roles(
    Allowed(_caller, _): Allowed<perm::OperatorsManage>,
) -> ApiResult<Json<Vec<RoleView>>> {
    Ok(Json(
        Role::ALL
            .iter()
            .map(|r| RoleView {
                name: r.as_str().into(),
                label: r.label().into(),
                permissions: r
                    .permissions()
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .collect(),
            })
            .collect(),
    ))
}
