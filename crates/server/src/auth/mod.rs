//! Who is calling: an API token (`Authorization: Bearer kw_…`) or a browser
//! session (the `kw_session` cookie, HttpOnly, SameSite=Strict). Every route
//! takes a [`Caller`] and checks exactly one [`Permission`]: no caller is 401,
//! a caller whose role lacks the permission is 403.
//!
//! Session callers must send the session's CSRF token in `X-CSRF-Token` on
//! every state-changing request; a session whose password is a one-time one
//! may only change it (or sign out).

pub mod sessions;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use keyward_domain::{Permission, Role};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::ApiError;

pub const SESSION_COOKIE: &str = "kw_session";
/// Its name over HTTPS (`__Host-`: Secure, this host only, Path=/).
pub const SECURE_SESSION_COOKIE: &str = "__Host-kw_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Paths a session with a one-time password may still use.
const ALLOWED_BEFORE_PASSWORD_CHANGE: &[&str] = &[
    "/api/v1/auth/password",
    "/api/v1/auth/session",
    "/api/v1/me",
];

#[derive(Debug, Clone)]
pub enum Via {
    Token {
        id: Uuid,
        name: String,
    },
    Session {
        account_id: Uuid,
        session_hash: Vec<u8>,
    },
    /// A paired workstation agent (crates/server/src/agents), accepted only
    /// on the agent endpoints and on the relay of its sessions.
    Agent {
        id: Uuid,
        name: String,
    },
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub login: String,
    pub role: Role,
    pub via: Via,
    /// The user record behind a self-service account.
    pub user_id: Option<Uuid>,
}

impl Caller {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(
                ApiError::forbidden(permission.label()).details(serde_json::json!({
                    "required_permission": permission.as_str(),
                    "role": self.role.as_str(),
                })),
            )
        }
    }

    /// How the audit trail names this caller.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Token { name, .. } => format!("token:{name}"),
            Via::Session { .. } => format!("account:{}", self.login),
            Via::Agent { id, .. } => format!("agent:{id}"),
        }
    }

    pub fn account_id(&self) -> Option<Uuid> {
        match &self.via {
            Via::Session { account_id, .. } => Some(*account_id),
            Via::Token { .. } | Via::Agent { .. } => None,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| ApiError::unauthenticated())?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or_else(ApiError::unauthenticated)?
                .trim();
            return caller_from_token(state, token).await;
        }
        let Some(session) = cookie_session(state, &parts.headers).await? else {
            return Err(ApiError::unauthenticated());
        };
        if is_state_changing(&parts.method) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !bool::from(sent.as_bytes().ct_eq(session.csrf_token.as_bytes())) || sent.is_empty()
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf_token_invalid",
                    "state-changing requests made with a session need its X-CSRF-Token",
                ));
            }
        }
        // Under `nest`, `uri` has lost its `/api/v1` prefix; the original has it.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        if session.must_change_password && !ALLOWED_BEFORE_PASSWORD_CHANGE.contains(&path.as_str())
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "password_change_required",
                "change the one-time password first (POST /api/v1/auth/password)",
            ));
        }
        Ok(session.caller)
    }
}

async fn caller_from_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if token.is_empty() || token.len() > 512 {
        return Err(ApiError::unauthenticated());
    }
    let hash = state.tokens.hash(token);
    let record = state
        .store
        .find_api_token(&hash)
        .await
        .map_err(|e| ApiError::internal("checking the API token", e))?
        .ok_or_else(ApiError::unauthenticated)?;
    if record.revoked_at.is_some() {
        return Err(ApiError::unauthenticated());
    }
    let now = time::OffsetDateTime::now_utc();
    if record.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "this API token has expired: an administrator creates a new one",
        ));
    }
    // Last use, kept within a minute (not a write on every request).
    if record
        .last_used_at
        .is_none_or(|t| now - t > time::Duration::minutes(1))
    {
        if let Err(e) = state.store.touch_api_token(record.id, now).await {
            tracing::warn!(error = %e, "recording a token's use failed");
        }
    }
    Ok(Caller {
        login: format!("token:{}", record.name),
        role: record.role,
        user_id: None,
        via: Via::Token {
            id: record.id,
            name: record.name,
        },
    })
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A signed-in session, as the cookie of a request names it.
pub struct CookieSession {
    pub caller: Caller,
    /// State-changing requests of the session carry it (`X-CSRF-Token`).
    pub csrf_token: String,
    pub must_change_password: bool,
}

/// The session the request's session cookie names, with its account (not
/// disabled); `None` when there is none. The API and the portal both read
/// sessions through it.
pub async fn cookie_session(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<CookieSession>, ApiError> {
    let Some(session_id) = cookie(headers, crate::sign_in::session_cookie_name(state)) else {
        return Ok(None);
    };
    let hash = state.tokens.hash(&session_id);
    let now = time::OffsetDateTime::now_utc();
    let internal = |e| ApiError::internal("checking the session", e);
    let Some(session) = state
        .store
        .get_session(&hash, now)
        .await
        .map_err(internal)?
    else {
        return Ok(None);
    };
    let account = match crate::api::found(state.store.get_account(session.account_id).await)
        .map_err(internal)?
    {
        Some(a) if !a.disabled => a,
        _ => return Ok(None),
    };
    Ok(Some(CookieSession {
        caller: Caller {
            login: account.login.clone(),
            role: account.role,
            user_id: account.user_id,
            via: Via::Session {
                account_id: account.id,
                session_hash: hash,
            },
        },
        csrf_token: session.csrf_token,
        must_change_password: account.must_change_password,
    }))
}

/// The value of one cookie.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A caller whose role has the permission `P`, checked before anything else
/// in the request (the body included) is looked at: a caller without it gets
/// 403 even for a malformed body.
pub struct Allowed<P: perm::Needs>(pub Caller, pub std::marker::PhantomData<P>);

impl<P: perm::Needs + Send> FromRequestParts<AppState> for Allowed<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(P::PERMISSION)?;
        Ok(Allowed(caller, std::marker::PhantomData))
    }
}

/// One marker type per permission, for [`Allowed`].
pub mod perm {
    use keyward_domain::Permission;

    pub trait Needs {
        const PERMISSION: Permission;
    }

    macro_rules! markers {
        ($($name:ident),+ $(,)?) => {
            $(
                pub struct $name;
                impl Needs for $name {
                    const PERMISSION: Permission = Permission::$name;
                }
            )+
        };
    }

    markers!(
        UsersRead,
        UsersWrite,
        DevicesRead,
        DevicesImport,
        DevicesIssue,
        DevicesLifecycle,
        DevicesSuspend,
        DevicesReplace,
        DevicesRecycle,
        DevicesUnlock,
        DevicesUpdate,
        PoliciesRead,
        PoliciesWrite,
        SettingsRead,
        SettingsWrite,
        PasskeyServicesRead,
        PasskeyServicesWrite,
        OperatorsManage,
        TokensManage,
        AuditRead,
        JobsManage,
        SelfService,
    );
}
