//! API tokens for automation: created with a role, shown once, revocable.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::Role;
use keyward_proto::{TokenCreate, TokenCreated, TokenView};
use keyward_store::ApiToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::secrets::generate_token;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

fn view(t: &ApiToken) -> TokenView {
    TokenView {
        id: t.id.to_string(),
        name: t.name.clone(),
        role: t.role.as_str().into(),
        created_at: t.created_at,
        revoked: t.revoked_at.is_some(),
        expires_at: t.expires_at,
        last_used_at: t.last_used_at,
    }
}

/// Every API token (values are never shown again).
#[utoipa::path(get, path = "/tokens", operation_id = "listTokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::TokensManage>,
) -> ApiResult<Json<Vec<TokenView>>> {
    let tokens = state
        .store
        .list_api_tokens()
        .await
        .map_err(|e| store_error("listing tokens", e))?;
    Ok(Json(tokens.iter().map(view).collect()))
}

/// Create an API token with a role; the response carries the token once.
#[utoipa::path(post, path = "/tokens", operation_id = "createToken", tag = "tokens",
    request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::TokensManage>,
    ApiJson(req): ApiJson<TokenCreate>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let role = Role::parse_field(&req.role, "role").map_err(invalid)?;
    keyward_domain::validate::name("name", &req.name).map_err(invalid)?;
    // The name is how the audit trail and a session's creator name the
    // token: two live tokens of one name would be one party.
    let taken = state
        .store
        .list_api_tokens()
        .await
        .map_err(|e| store_error("reading the tokens", e))?
        .iter()
        .any(|t| t.revoked_at.is_none() && t.name == req.name);
    if taken {
        return Err(ApiError::conflict(
            "duplicate_name",
            format!(
                "a token named {} exists: revoke it or choose another name",
                req.name
            ),
        )
        .field("name"));
    }
    let days = match req.days {
        None => state.config.token_days,
        Some(d) if (1..=state.config.token_days).contains(&d) => d,
        Some(_) => {
            return Err(ApiError::bad_request(
                "days_invalid",
                format!("a token lasts 1 to {} days", state.config.token_days),
            )
            .field("days"))
        }
    };
    let token = generate_token();
    let now = time::OffsetDateTime::now_utc();
    let record = ApiToken {
        id: Uuid::new_v4(),
        name: req.name,
        role,
        token_hmac: state.tokens.hash(&token),
        created_by: caller.actor(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
        expires_at: Some(now + time::Duration::days(i64::from(days))),
    };
    state
        .store
        .create_api_token(
            &record,
            &audit(
                &caller,
                "token.create",
                format!("token:{}", record.name),
                serde_json::json!({ "role": role }),
            ),
        )
        .await
        .map_err(|e| store_error("creating the token", e))?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token_info: view(&record),
            token,
        }),
    ))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/tokens/{id}", operation_id = "revokeToken", tag = "tokens", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::TokensManage>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("id_invalid", "token id must be a UUID").field("id"))?;
    state
        .store
        .revoke_api_token(
            id,
            &audit(
                &caller,
                "token.revoke",
                format!("token:{id}"),
                serde_json::json!({}),
            ),
        )
        .await
        .map_err(|e| store_error("revoking the token", e))?;
    Ok(StatusCode::NO_CONTENT)
}
