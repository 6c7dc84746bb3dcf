//! Sign-in with a password (browser sessions), sign-out, password change,
//! first password by one-time enrollment code, and `GET /me`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_domain::{AuditDraft, AuditOutcome, Permission};
use keyward_proto::{EnrollRequest, PasswordChangeRequest, SessionInfo, SignInRequest, WhoAmI};
use rand::RngCore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{audit, store_error};
use crate::app::AppState;
use crate::auth::{Caller, Via};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_in, sign_out))
        .routes(routes!(change_password))
        .routes(routes!(enroll))
        .routes(routes!(me))
}

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_LEN: usize = 10;

pub fn random_b64(len: usize) -> String {
    use base64::Engine;
    let mut raw = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub fn check_new_password(password: &str, field: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            "password_too_short",
            format!("a password has at least {MIN_PASSWORD_LEN} characters"),
        )
        .field(field));
    }
    if password.len() > 256 {
        return Err(
            ApiError::bad_request("password_too_long", "a password has at most 256 bytes")
                .field(field),
        );
    }
    Ok(())
}

/// Sign in with login and password; sets the `kw_session` cookie.
#[utoipa::path(post, path = "/auth/session", operation_id = "signIn", tag = "auth", security(()),
    request_body = SignInRequest,
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody)))]
async fn sign_in(
    State(state): State<AppState>,
    crate::limits::ClientIp(ip): crate::limits::ClientIp,
    ApiJson(req): ApiJson<SignInRequest>,
) -> ApiResult<Response> {
    let outcome = crate::sign_in::sign_in(
        &state,
        &req.login,
        req.password,
        crate::sign_in::Channel::Api,
        ip,
    )
    .await
    .map_err(|(context, e)| store_error(context, e))?;
    let signed_in = match outcome {
        crate::sign_in::Outcome::SignedIn(s) => s,
        crate::sign_in::Outcome::Refused => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "sign_in_failed",
                "unknown login or wrong password",
            ))
        }
        crate::sign_in::Outcome::Limited(wait) => {
            return Err(crate::limits::too_many(wait, "sign-in attempts"))
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&crate::sign_in::session_cookie(
            &state,
            &signed_in.session_id,
        ))
        .expect("cookie is ASCII"),
    );
    let account = signed_in.account;
    Ok((
        headers,
        Json(SessionInfo {
            login: account.login,
            role: account.role.as_str().into(),
            csrf_token: signed_in.csrf_token,
            must_change_password: account.must_change_password,
        }),
    )
        .into_response())
}

/// Sign out: ends the session and clears the cookie.
#[utoipa::path(delete, path = "/auth/session", operation_id = "signOut", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn sign_out(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    if let Via::Session { session_hash, .. } = &caller.via {
        state
            .store
            .delete_session(
                session_hash,
                &audit(
                    &caller,
                    "auth.sign_out",
                    format!("account:{}", caller.login),
                    serde_json::json!({}),
                ),
            )
            .await
            .map_err(|e| store_error("signing out", e))?;
    }
    let clear = crate::sign_in::clear_session_cookie(&state);
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

/// Change one's own password (required after a one-time password).
#[utoipa::path(post, path = "/auth/password", operation_id = "changePassword", tag = "auth",
    request_body = PasswordChangeRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<PasswordChangeRequest>,
) -> ApiResult<StatusCode> {
    let Some(account_id) = caller.account_id() else {
        return Err(ApiError::bad_request(
            "not_an_account",
            "API tokens have no password",
        ));
    };
    check_new_password(&req.new_password, "new_password")?;
    if req.new_password == req.current_password {
        return Err(ApiError::bad_request(
            "password_unchanged",
            "choose a password different from the current one",
        )
        .field("new_password"));
    }
    let account = state
        .store
        .get_account(account_id)
        .await
        .map_err(|e| store_error("changing the password", e))?;
    if !crate::sign_in::password_matches(
        &state,
        req.current_password,
        account.password_hash.clone(),
    )
    .await
    {
        return Err(
            ApiError::bad_request("wrong_password", "the current password is wrong")
                .field("current_password"),
        );
    }
    let phc = crate::secrets::hash_bounded(&state, req.new_password).await;
    // The account's other sessions end: whoever else held one must sign in
    // with the new password.
    let keep = match &caller.via {
        Via::Session { session_hash, .. } => Some(session_hash.as_slice()),
        _ => None,
    };
    state
        .store
        .change_own_password(
            account_id,
            &phc,
            keep,
            &audit(
                &caller,
                "auth.password_change",
                format!("account:{}", caller.login),
                serde_json::json!({}),
            ),
        )
        .await
        .map_err(|e| store_error("changing the password", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user sets their first password with a one-time enrollment code.
#[utoipa::path(post, path = "/auth/enroll", operation_id = "enroll", tag = "auth", security(()),
    request_body = EnrollRequest,
    responses((status = 204), (status = 400, body = ErrorBody)))]
async fn enroll(
    State(state): State<AppState>,
    crate::limits::ClientIp(ip): crate::limits::ClientIp,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<StatusCode> {
    check_new_password(&req.password, "password")?;
    if let Some(wait) = crate::sign_in::brake(&state, ip, &req.login, "enroll")
        .await
        .map_err(|(context, e)| store_error(context, e))?
    {
        return Err(crate::limits::too_many(wait, "enrollment attempts"));
    }
    let draft = AuditDraft {
        actor: format!("account:{}", crate::sign_in::printable(&req.login)),
        action: "auth.enroll".into(),
        target: format!("user:{}", crate::sign_in::printable(&req.login)),
        outcome: AuditOutcome::Success,
        details: serde_json::json!({}),
    };
    // The code is checked before the password is hashed (argon2 is the
    // expensive part: a wrong code costs nothing).
    let done = crate::enrollment::redeem(&state, &req.login, &req.code, req.password, &draft)
        .await
        .map_err(|e| store_error("enrolling", e))?;
    if !done {
        let _ = state
            .limits
            .sign_in_login
            .take(&req.login.trim().to_lowercase(), std::time::Instant::now());
        return Err(ApiError::bad_request(
            "enrollment_code_invalid",
            "unknown login, or the code is wrong, used or expired",
        )
        .field("code"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Who the caller is and what their role allows.
#[utoipa::path(get, path = "/me", operation_id = "getMe", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn me(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        login: caller.login.clone(),
        role: caller.role.as_str().into(),
        via: match caller.via {
            Via::Token { .. } => "token".into(),
            Via::Session { .. } => "session".into(),
            Via::Agent { .. } => "agent".into(),
        },
        permissions: caller
            .role
            .permissions()
            .into_iter()
            .map(|p: Permission| p.as_str().to_string())
            .collect(),
    })
}
