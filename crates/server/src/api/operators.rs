//! Operators (and self-service accounts) and the roles they hold; locking
//! an account out: disable and enable it, change its role, reset its
//! password (a one-time password, changed at the next sign-in), end its
//! browser sessions. Disabling, resetting and signing out end the account's
//! sessions in the same transaction. The last enabled administrator cannot
//! be disabled or demoted, and nobody disables or demotes themselves.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{Account, Role};
use keyward_proto::{
    OperatorChanged, OperatorCreate, OperatorCreated, OperatorRoleChange, OperatorView, RoleView,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::session::random_b64;
use super::{audit, found, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(roles))
        .routes(routes!(disable))
        .routes(routes!(enable))
        .routes(routes!(set_role))
        .routes(routes!(reset_password))
        .routes(routes!(sign_out))
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
    let phc = crate::secrets::hash_bounded(&state, one_time_password.clone()).await;
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

/// The account `login`, for a change by `caller`.
async fn load(state: &AppState, login: &str) -> ApiResult<Account> {
    found(state.store.get_account_by_login(login).await)
        .map_err(|e| store_error("reading the account", e))?
        .ok_or_else(|| ApiError::not_found("account").field("login"))
}

/// Refuses what would lock everyone out: changing one's own account this
/// way, or leaving no enabled administrator.
async fn keep_an_administrator(
    state: &AppState,
    caller: &Caller,
    account: &Account,
    next: &Account,
) -> ApiResult<()> {
    if caller.account_id() == Some(account.id) && (next.disabled || next.role != account.role) {
        return Err(ApiError::conflict(
            "own_account",
            "you cannot disable your own account or change its role: ask another administrator",
        )
        .field("login"));
    }
    let was_admin = account.role == Role::Administrator && !account.disabled;
    let stays_admin = next.role == Role::Administrator && !next.disabled;
    if was_admin && !stays_admin {
        let others = state
            .store
            .list_accounts()
            .await
            .map_err(|e| store_error("reading the accounts", e))?
            .iter()
            .filter(|a| a.id != account.id && a.role == Role::Administrator && !a.disabled)
            .count();
        if others == 0 {
            return Err(ApiError::conflict(
                "last_administrator",
                format!("{} is the last enabled administrator", account.login),
            )
            .field("login"));
        }
    }
    Ok(())
}

/// Writes `next` (and ends the account's sessions when `end_sessions`).
async fn change(
    state: &AppState,
    caller: &Caller,
    account: &Account,
    next: Account,
    end_sessions: bool,
    action: &str,
    details: serde_json::Value,
) -> ApiResult<Json<OperatorChanged>> {
    keep_an_administrator(state, caller, account, &next).await?;
    let ended = state
        .store
        .update_account_ending_sessions(
            &next,
            end_sessions,
            &audit(caller, action, format!("account:{}", next.login), details),
        )
        .await
        .map_err(|e| store_error("changing the account", e))?;
    Ok(Json(OperatorChanged {
        operator: view(&next, None),
        sessions_ended: ended,
    }))
}

/// Disable an account: it can no longer sign in, its sessions end.
#[utoipa::path(post, path = "/operators/{login}/disable", operation_id = "disableOperator", tag = "operators", params(("login" = String, Path)),
    responses((status = 200, body = OperatorChanged), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn disable(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::OperatorsManage>,
    Path(login): Path<String>,
) -> ApiResult<Json<OperatorChanged>> {
    set_disabled(&state, &caller, &login, true).await
}

/// Enable a disabled account.
#[utoipa::path(post, path = "/operators/{login}/enable", operation_id = "enableOperator", tag = "operators", params(("login" = String, Path)),
    responses((status = 200, body = OperatorChanged), (status = 404, body = ErrorBody)))]
async fn enable(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::OperatorsManage>,
    Path(login): Path<String>,
) -> ApiResult<Json<OperatorChanged>> {
    set_disabled(&state, &caller, &login, false).await
}

/// Disables (ending the account's sessions) or enables `login`.
async fn set_disabled(
    state: &AppState,
    caller: &Caller,
    login: &str,
    disabled: bool,
) -> ApiResult<Json<OperatorChanged>> {
    let account = load(state, login).await?;
    let next = Account {
        disabled,
        ..account.clone()
    };
    let action = if disabled {
        "operator.disable"
    } else {
        "operator.enable"
    };
    change(
        state,
        caller,
        &account,
        next,
        disabled,
        action,
        serde_json::json!({}),
    )
    .await
}

/// Change an account's role (it applies to the account's next request).
#[utoipa::path(put, path = "/operators/{login}/role", operation_id = "setOperatorRole", tag = "operators", params(("login" = String, Path)),
    request_body = OperatorRoleChange,
    responses((status = 200, body = OperatorChanged), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_role(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::OperatorsManage>,
    Path(login): Path<String>,
    ApiJson(req): ApiJson<OperatorRoleChange>,
) -> ApiResult<Json<OperatorChanged>> {
    let role = Role::parse_field(&req.role, "role").map_err(invalid)?;
    let account = load(&state, &login).await?;
    // A self-service account is its user's; an operator is nobody's.
    if (role == Role::User) != (account.role == Role::User) {
        return Err(ApiError::bad_request(
            "role_not_allowed",
            "a self-service account stays a user's, an operator stays an operator: create another account",
        )
        .field("role"));
    }
    let next = Account {
        role,
        ..account.clone()
    };
    change(
        &state,
        &caller,
        &account,
        next,
        false,
        "operator.set_role",
        serde_json::json!({ "from": account.role, "to": role }),
    )
    .await
}

/// Reset an account's password: a new one-time password (shown once,
/// changed at the next sign-in); the account's sessions end.
#[utoipa::path(post, path = "/operators/{login}/reset-password", operation_id = "resetOperatorPassword", tag = "operators", params(("login" = String, Path)),
    responses((status = 200, body = OperatorCreated), (status = 404, body = ErrorBody)))]
async fn reset_password(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::OperatorsManage>,
    Path(login): Path<String>,
) -> ApiResult<Json<OperatorCreated>> {
    let account = load(&state, &login).await?;
    let one_time_password = random_b64(15);
    let phc = crate::secrets::hash_bounded(&state, one_time_password.clone()).await;
    let next = Account {
        password_hash: Some(phc),
        must_change_password: true,
        ..account.clone()
    };
    let changed = change(
        &state,
        &caller,
        &account,
        next,
        true,
        "operator.reset_password",
        serde_json::json!({}),
    )
    .await?;
    Ok(Json(OperatorCreated {
        operator: changed.0.operator,
        one_time_password,
    }))
}

/// End all of an account's browser sessions.
#[utoipa::path(post, path = "/operators/{login}/sign-out", operation_id = "signOutOperator", tag = "operators", params(("login" = String, Path)),
    responses((status = 200, body = OperatorChanged), (status = 404, body = ErrorBody)))]
async fn sign_out(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::OperatorsManage>,
    Path(login): Path<String>,
) -> ApiResult<Json<OperatorChanged>> {
    let account = load(&state, &login).await?;
    change(
        &state,
        &caller,
        &account,
        account.clone(),
        true,
        "operator.sign_out",
        serde_json::json!({}),
    )
    .await
}
