//! Who may act on a session: operators with "devices.issue" on any; an
//! operator on the sessions it started itself (the help desk's Replace
//! Device and Recycle); a user's self-service account on the sessions of
//! its own user (to follow progress and answer prompts), and Retry only
//! when "Enable issuance retry for user" is on.

use keyward_domain::Permission;
use keyward_store::IssuanceSession;
use uuid::Uuid;

use crate::api::store_error;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

pub(crate) fn is_own(caller: &Caller, s: &IssuanceSession) -> bool {
    caller.role.allows(Permission::SelfService) && caller.user_id == Some(s.user_id)
}

/// An operator's own session: it started it (its role allowed the start).
pub(crate) fn is_started_by(caller: &Caller, s: &IssuanceSession) -> bool {
    caller.role.is_operator() && s.created_by == caller.actor()
}

/// The session `id` for `caller`: to anyone without "devices.issue" a
/// session that is not there is refused as a foreign one would be (403),
/// so ids cannot be probed.
pub(crate) async fn load_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<IssuanceSession> {
    match crate::issuance::load(state, id).await {
        Ok(s) => Ok(s),
        Err(_) if !caller.role.allows(Permission::DevicesIssue) => Err(caller
            .require(Permission::DevicesIssue)
            .err()
            .unwrap_or_else(ApiError::unauthenticated)),
        Err(e) => Err(e),
    }
}

/// What a caller is to a session it may see. Its bound agent relays
/// through its own credential (`agents::RelayCaller`), not as one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    /// Started it: follows it, answers its prompts, and relays its device
    /// commands when no agent is bound.
    Creator,
    /// The person it is for (their self-service account): follows it and
    /// answers its prompts, never posts device responses.
    Person,
    /// An administrator: reads its status, nothing more.
    Auditor,
}

pub(crate) fn party(caller: &Caller, s: &IssuanceSession) -> Option<Party> {
    if !matches!(caller.via, crate::auth::Via::Agent { .. }) && s.created_by == caller.actor() {
        Some(Party::Creator)
    } else if is_own(caller, s) {
        Some(Party::Person)
    } else if caller.role.allows(Permission::OperatorsManage) {
        Some(Party::Auditor)
    } else {
        None
    }
}

/// The session `id` and what `caller` is to it. A session belongs to its
/// creator, its bound agent and the person it is for: anyone else gets the
/// same 404 as for a session that does not exist (its batches carry the
/// PIN, the PUK and the management key inside device commands).
pub(crate) async fn load_visible(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<(IssuanceSession, Party)> {
    let s = crate::issuance::load(state, id).await?;
    match party(caller, &s) {
        Some(p) => Ok((s, p)),
        None => Err(ApiError::not_found("issuance session").field("id")),
    }
}

/// Retry a failed attempt: operators always; the session's own user only
/// under "Enable issuance retry for user".
pub(crate) async fn may_retry(
    state: &AppState,
    caller: &Caller,
    s: &IssuanceSession,
) -> ApiResult<()> {
    if caller.role.allows(Permission::DevicesIssue) || is_started_by(caller, s) {
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
        Ok(s) => Ok(party(caller, &s).is_some_and(|p| p != Party::Auditor)),
        Err(keyward_store::StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_error("reading the session", e)),
    }
}

/// The caller of `POST /issuance`: one with "devices.issue", or a
/// self-service account linked to a user (whose narrow case `may_start`
/// decides once the request is read). Checked before the body is read, so a
/// role with neither is refused with 403 whatever it sends.
pub(crate) struct MayStart(pub Caller);

impl axum::extract::FromRequestParts<AppState> for MayStart {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let self_service = caller.role.allows(Permission::SelfService) && caller.user_id.is_some();
        // Replace Device is an issuance the help desk may start too
        // (`may_start` checks it against the request).
        if !self_service && !caller.role.allows(Permission::DevicesReplace) {
            caller.require(Permission::DevicesIssue)?;
        }
        Ok(MayStart(caller))
    }
}

/// Starting an issuance: operators with "devices.issue" any (the checks of
/// `start` follow); a self-service account only when "Who can bind the
/// device to the user?" is User, and only to complete a device Assigned to
/// its own user, with the policy it was assigned with, through one of its
/// own paired agents (`via`). Everything else is refused with 403, before
/// anything else is looked at, so devices cannot be probed.
pub(crate) async fn may_start(
    state: &AppState,
    caller: &Caller,
    req: &keyward_proto::StartIssuance,
) -> ApiResult<()> {
    if req.replaces.is_some() {
        return caller.require(Permission::DevicesReplace);
    }
    if caller.role.allows(Permission::DevicesIssue) {
        return Ok(());
    }
    let (Some(user_id), true) = (caller.user_id, caller.role.allows(Permission::SelfService))
    else {
        return caller.require(Permission::DevicesIssue);
    };
    let refuse = |code: &str, message: &str| {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            code,
            message.to_string(),
        ))
    };
    let settings = state
        .store
        .get_settings()
        .await
        .map_err(|e| store_error("reading settings", e))?;
    if settings.who_can_bind != keyward_domain::WhoCanBind::User {
        return refuse(
            "binding_not_allowed_for_users",
            "users may not complete the issuance of their devices: \"Who can bind the device to the user?\" is Issuance Operator; ask an operator",
        );
    }
    if !matches!(req.action.as_deref(), None | Some("issue")) {
        return refuse(
            "assign_not_allowed_for_users",
            "users may only complete the issuance of a device assigned to them",
        );
    }
    if matches!(req.via.as_deref(), None | Some("local")) {
        return refuse(
            "agent_required_for_users",
            "users complete issuance through their own paired workstation agent: give via `agent` or the agent's id",
        );
    }
    let not_assigned = || {
        refuse(
            "device_not_assigned_to_you",
            "the device is not assigned to you with that policy, or is not waiting for issuance",
        )
    };
    let Ok(serial) = keyward_domain::Serial::parse("serial", &req.serial) else {
        return not_assigned();
    };
    let device = match state.store.get_device_by_serial(serial).await {
        Ok(d) => d,
        Err(keyward_store::StoreError::NotFound { .. }) => return not_assigned(),
        Err(e) => return Err(store_error("reading the device", e)),
    };
    let own_user = crate::api::users::load(state, &req.user)
        .await
        .is_ok_and(|u| u.id == user_id);
    let policy_ok = match (
        device.device_policy,
        crate::api::policies::load(state, &req.policy).await,
    ) {
        (Some(assigned), Ok(p)) => p.id == assigned,
        _ => false,
    };
    if device.state != keyward_domain::DeviceState::Assigned
        || device.assigned_user != Some(user_id)
        || !own_user
        || !policy_ok
    {
        return not_assigned();
    }
    Ok(())
}
