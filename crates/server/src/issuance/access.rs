//! Who may act on a session: operators with "devices.issue" on any; a
//! user's self-service account on the sessions of its own user (to follow
//! progress and answer prompts), and Retry only when "Enable issuance retry
//! for user" is on.

use keyward_domain::Permission;
use keyward_store::IssuanceSession;
use uuid::Uuid;

use crate::api::store_error;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

fn is_own(caller: &Caller, s: &IssuanceSession) -> bool {
    caller.role.allows(Permission::SelfService) && caller.user_id == Some(s.user_id)
}

/// The session `id` for `caller`: to anyone without "devices.issue" a
/// session that is not there is refused as a foreign one would be (403),
/// so ids cannot be probed.
pub(super) async fn load_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<IssuanceSession> {
    match super::load(state, id).await {
        Ok(s) => Ok(s),
        Err(_) if !caller.role.allows(Permission::DevicesIssue) => Err(caller
            .require(Permission::DevicesIssue)
            .err()
            .unwrap_or_else(ApiError::unauthenticated)),
        Err(e) => Err(e),
    }
}

/// Read the session (status, the batch out).
pub(super) fn may_see(caller: &Caller, s: &IssuanceSession) -> ApiResult<()> {
    if caller.role.allows(Permission::DevicesIssue) || is_own(caller, s) {
        return Ok(());
    }
    caller.require(Permission::DevicesIssue)
}

/// Retry a failed attempt: operators always; the session's own user only
/// under "Enable issuance retry for user".
pub(super) async fn may_retry(
    state: &AppState,
    caller: &Caller,
    s: &IssuanceSession,
) -> ApiResult<()> {
    if caller.role.allows(Permission::DevicesIssue) {
        return Ok(());
    }
    if !is_own(caller, s) {
        return caller.require(Permission::DevicesIssue);
    }
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    if settings.enable_issuance_retry_for_user {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "retry_not_enabled_for_users",
            "users may not retry their own issuance: \"Enable issuance retry for user\" is off; ask an operator",
        ))
    }
}

/// For the relay endpoint's caller check: a self-service account answering
/// the prompts of its own user's session (its device commands come from an
/// operator's client or a workstation agent).
pub(crate) async fn may_relay_own_session(
    state: &AppState,
    caller: &Caller,
    session_id: Uuid,
) -> ApiResult<bool> {
    // No such session: not theirs (the permission check answers 403).
    match state.store.get_issuance(session_id).await {
        Ok(s) => Ok(is_own(caller, &s)),
        Err(keyward_store::StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_error("reading the session", e)),
    }
}
