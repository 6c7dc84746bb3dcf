//! Users: create, update, bulk import (CSV or JSON), search by login or
//! display-name prefix with keyset pagination, and one-time enrollment codes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use keyward_domain::{NewUser, User, UserStatus};
use keyward_proto::views::{ImportQuery, ListQuery};
use keyward_proto::{EnrollmentCode, ImportReport, Page, RowError, UserUpdate};
use keyward_store::{UserSearch, UserSearchField};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::import::{read_rows, row_error, run_import};
use super::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{ApiJson, ApiQuery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update))
        .routes(routes!(enrollment_code))
}

/// The import route, apart: it gets the larger body limit.
pub fn import_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(import))
}

/// Search users by login or display-name prefix, a page at a time.
#[utoipa::path(get, path = "/users", operation_id = "listUsers", tag = "users", params(ListQuery),
    responses((status = 200, body = Object, description = "Page of users"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::UsersRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<User>>> {
    let limit = crate::api::page_limit(&q)?;
    let by = match q.by.as_deref() {
        None | Some("login") => UserSearchField::Login,
        Some("display_name") => UserSearchField::DisplayName,
        Some(other) => {
            return Err(invalid(keyward_domain::ValidationError::unknown_value(
                "by",
                other,
                &["login", "display_name"],
            )));
        }
    };
    let page = state
        .store
        .search_users(&UserSearch {
            prefix: q.prefix.clone().unwrap_or_default(),
            by,
            after: q.after.clone(),
            limit,
        })
        .await
        .map_err(|e| store_error("searching users", e))?;
    Ok(Json(Page {
        items: page.items,
        next: page.next,
    }))
}

/// Create a user.
#[utoipa::path(post, path = "/users", operation_id = "createUser", tag = "users",
    request_body(content = Object, description = "NewUser: login, upn, display_name, email, attributes, status"),
    responses((status = 201, body = Object, description = "The user"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::UsersWrite>,
    ApiJson(new): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let user = new.into_user().map_err(invalid)?;
    state
        .store
        .create_user(
            &user,
            &audit(
                &caller,
                "user.create",
                format!("user:{}", user.login),
                serde_json::json!({}),
            ),
        )
        .await
        .map_err(|e| store_error("creating the user", e))?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// One user by login.
#[utoipa::path(get, path = "/users/{login}", operation_id = "getUser", tag = "users", params(("login" = String, Path)),
    responses((status = 200, body = Object, description = "The user"), (status = 404, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::UsersRead>,
    Path(login): Path<String>,
) -> ApiResult<Json<User>> {
    load(&state, &login).await.map(Json)
}

pub async fn load(state: &AppState, login: &str) -> ApiResult<User> {
    state
        .store
        .get_user_by_login(login)
        .await
        .map_err(|e| store_error("reading the user", e))
}

/// Change a user's fields; absent fields stay as they are.
#[utoipa::path(patch, path = "/users/{login}", operation_id = "updateUser", tag = "users", params(("login" = String, Path)),
    request_body = UserUpdate,
    responses((status = 200, body = Object, description = "The user"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::UsersWrite>,
    Path(login): Path<String>,
    ApiJson(change): ApiJson<UserUpdate>,
) -> ApiResult<Json<User>> {
    let mut user = load(&state, &login).await?;
    let mut changed = Vec::new();
    if let Some(v) = change.upn {
        user.upn = Some(v).filter(|s| !s.is_empty());
        changed.push("upn");
    }
    if let Some(v) = change.display_name {
        user.display_name = v;
        changed.push("display_name");
    }
    if let Some(v) = change.email {
        user.email = Some(v).filter(|s| !s.is_empty());
        changed.push("email");
    }
    if let Some(v) = change.attributes {
        user.attributes = v;
        changed.push("attributes");
    }
    if let Some(v) = change.status {
        user.status = UserStatus::parse_field(&v, "status").map_err(invalid)?;
        changed.push("status");
    }
    user.validate().map_err(invalid)?;
    state
        .store
        .update_user(
            &user,
            &audit(
                &caller,
                "user.update",
                format!("user:{}", user.login),
                serde_json::json!({ "fields": changed }),
            ),
        )
        .await
        .map_err(|e| store_error("updating the user", e))?;
    Ok(Json(user))
}

/// Bulk import users from CSV (`text/csv`: columns `login,upn,display_name,email,status`
/// and any `attr:NAME` columns) or a JSON array of NewUser objects.
#[utoipa::path(post, path = "/users/import", operation_id = "importUsers", tag = "users", params(ImportQuery),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportReport), (status = 400, body = ErrorBody)))]
async fn import(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::UsersWrite>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ImportReport>> {
    let rows = read_rows::<NewUser>(&headers, &body, parse_user_csv)?;
    run_import(&caller, "user", q, rows, |good, mode, draft| async move {
        state.store.import_users(&good, mode, &draft).await
    })
    .await
}

fn parse_user_csv(body: &[u8]) -> ApiResult<Vec<Result<NewUser, RowError>>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request("invalid_utf8", format!("CSV is not valid UTF-8 ({e})"))
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| ApiError::bad_request("csv_malformed", e.to_string()))?
        .clone();
    let known = ["login", "upn", "display_name", "email", "status"];
    for h in headers.iter() {
        if !known.contains(&h) && !h.starts_with("attr:") {
            return Err(ApiError::bad_request(
                "csv_unknown_column",
                format!(
                    "unknown column '{h}'; columns: {}, attr:NAME",
                    known.join(", ")
                ),
            )
            .field(h.to_string()));
        }
    }
    for required in ["login", "display_name"] {
        if !headers.iter().any(|h| h == required) {
            return Err(ApiError::bad_request(
                "csv_missing_column",
                format!("the CSV needs a '{required}' column"),
            )
            .field(required));
        }
    }
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row_no = i + 1;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                rows.push(Err(RowError {
                    row: row_no,
                    code: "csv_malformed".into(),
                    field: String::new(),
                    message: e.to_string(),
                }));
                continue;
            }
        };
        let mut user = NewUser {
            login: String::new(),
            upn: None,
            display_name: String::new(),
            email: None,
            attributes: Default::default(),
            status: UserStatus::Active,
        };
        let mut error = None;
        for (h, v) in headers.iter().zip(record.iter()) {
            match h {
                "login" => user.login = v.to_string(),
                "upn" => user.upn = Some(v.to_string()).filter(|s| !s.is_empty()),
                "display_name" => user.display_name = v.to_string(),
                "email" => user.email = Some(v.to_string()).filter(|s| !s.is_empty()),
                "status" if !v.is_empty() => match UserStatus::parse_field(v, "status") {
                    Ok(s) => user.status = s,
                    Err(e) => error = Some(row_error(row_no, e)),
                },
                "status" => {}
                attr => {
                    if !v.is_empty() {
                        user.attributes
                            .insert(attr["attr:".len()..].to_string(), v.to_string());
                    }
                }
            }
        }
        rows.push(match error {
            Some(e) => Err(e),
            None => Ok(user),
        });
    }
    Ok(rows)
}

/// Create a one-time enrollment code with which the user sets their first
/// password (the code is shown once).
#[utoipa::path(post, path = "/users/{login}/enrollment-code", operation_id = "createEnrollmentCode", tag = "users", params(("login" = String, Path)),
    responses((status = 201, body = EnrollmentCode), (status = 404, body = ErrorBody)))]
async fn enrollment_code(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::UsersWrite>,
    Path(login): Path<String>,
) -> ApiResult<(StatusCode, Json<EnrollmentCode>)> {
    let user = load(&state, &login).await?;
    let draft = audit(
        &caller,
        "user.enrollment_code",
        format!("user:{}", user.login),
        serde_json::json!({}),
    );
    let (code, expires_at) = crate::enrollment::issue(&state, &user, &draft)
        .await
        .map_err(|e| store_error("creating the enrollment code", e))?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentCode { code, expires_at }),
    ))
}
