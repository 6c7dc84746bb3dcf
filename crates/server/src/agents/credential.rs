//! The agent's credential (`Authorization: Bearer kwa_…`). It is not an API
//! token: the general [`Caller`] extractor does not know it (401 anywhere
//! else). [`AgentAuth`] accepts it on the agent endpoints; [`RelayCaller`]
//! accepts it on a session's relay endpoint only when the session is bound
//! to this agent, the agent reports the session's device now, and the batch
//! out is a command batch (prompts are answered by the person's client).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use keyward_domain::Role;
use keyward_store::Agent;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{perm, Allowed, Caller, Via};
use crate::error::ApiError;

/// Prefix of agent credentials (recognisable by secret scanners, and told
/// apart from API tokens `kw_…`).
pub const AGENT_CREDENTIAL_PREFIX: &str = "kwa_";

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn not_paired() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "agent_not_paired",
        "this agent is not paired (unknown credential): start `keyward agent` to pair it",
    )
}

/// A paired, not revoked agent, by its credential.
pub struct AgentAuth(pub Agent);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // No credential at all is the API's plain 401; an unknown one means
        // this agent must pair (again).
        let token = bearer(parts).ok_or_else(ApiError::unauthenticated)?;
        if !token.starts_with(AGENT_CREDENTIAL_PREFIX) || token.len() > 200 {
            return Err(not_paired());
        }
        let agent = state
            .store
            .find_agent_by_credential(&state.tokens.hash(token))
            .await
            .map_err(|e| ApiError::internal("checking the agent credential", e))?
            .ok_or_else(not_paired)?;
        if agent.status != "paired" {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_revoked",
                "this agent was revoked: pair it again (`keyward agent`)",
            ));
        }
        Ok(AgentAuth(agent))
    }
}

/// The caller of `POST /issuance/{id}/relay`: a person's client with the
/// permission to issue devices, or the agent the session is bound to.
pub struct RelayCaller(pub Caller);

impl FromRequestParts<AppState> for RelayCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let is_agent = bearer(parts).is_some_and(|t| t.starts_with(AGENT_CREDENTIAL_PREFIX));
        if !is_agent {
            let caller = Caller::from_request_parts(parts, state).await?;
            // A user's self-service account answers the prompts of its own
            // user's session (issuance engineer's wiring).
            if !caller.role.allows(keyward_domain::Permission::DevicesIssue) {
                let own = match Path::<String>::from_request_parts(parts, state).await {
                    Ok(Path(id)) => match Uuid::parse_str(&id) {
                        Ok(id) => {
                            crate::issuance::may_relay_own_session(state, &caller, id).await?
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if !own {
                    let Allowed(caller, _) =
                        Allowed::<perm::DevicesIssue>::from_request_parts(parts, state).await?;
                    return Ok(RelayCaller(caller));
                }
            }
            return Ok(RelayCaller(caller));
        }
        let AgentAuth(agent) = AgentAuth::from_request_parts(parts, state).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("id_invalid", "session id must be a UUID"))?;
        let id = Uuid::parse_str(&id).map_err(|_| {
            ApiError::bad_request("id_invalid", "session id must be a UUID").field("id")
        })?;
        // The binding here; the device and the batch in the relay handler,
        // which loads and opens the session anyway ([`check_relay_batch`]).
        may_relay(state, &agent, id).await?;
        touch(state, &agent).await;
        Ok(RelayCaller(agent_caller(&agent)))
    }
}

fn refuse(code: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// The agent a session is bound to (remembered, else read from the store).
pub async fn agent_of_session(
    state: &AppState,
    session_id: Uuid,
) -> Result<Option<Uuid>, ApiError> {
    if let Some(a) = state.agents.bound_agent(session_id) {
        return Ok(Some(a));
    }
    let a = state
        .store
        .agent_of_session(session_id)
        .await
        .map_err(|e| ApiError::internal("reading the session's agent", e))?;
    if let Some(a) = a {
        state.agents.remember_binding(session_id, a);
    }
    Ok(a)
}

/// "An agent cannot act on a session of a device it does not report":
/// first, the session must be bound to this agent.
async fn may_relay(state: &AppState, agent: &Agent, session_id: Uuid) -> Result<(), ApiError> {
    let bound = agent_of_session(state, session_id).await?;
    if bound != Some(agent.id) {
        return Err(refuse(
            "agent_not_bound",
            "this session's device commands are not relayed by this agent",
        ));
    }
    Ok(())
}

/// The rest of the agent's checks, by the relay handler once it has the
/// session open (no second read, no second unsealing): the agent reports
/// the session's device now (the store decides: a device reported removed
/// on another node is refused here too), and the batch out is a command
/// batch (prompts are answered by the person's client). Nothing for other
/// callers.
pub async fn check_relay_batch(
    state: &AppState,
    caller: &Caller,
    session: &keyward_store::IssuanceSession,
    serial: u64,
    batch_has_commands: bool,
) -> Result<(), ApiError> {
    let Via::Agent { id: agent_id, .. } = &caller.via else {
        return Ok(());
    };
    if !state
        .store
        .agent_reports_device(*agent_id, &serial.to_string())
        .await
        .map_err(|e| ApiError::internal("reading the agent's devices", e))?
    {
        return Err(refuse(
            "device_not_reported",
            "this agent does not report the session's device",
        ));
    }
    if session.status == keyward_domain::SessionStatus::Running && !batch_has_commands {
        return Err(refuse(
            "prompt_batch",
            "the batch out asks the person: their client answers it, not the agent",
        ));
    }
    Ok(())
}

/// Records the agent was heard from (at most what the long-poll does).
pub(super) async fn touch(state: &AppState, agent: &Agent) {
    let fresh = agent
        .last_seen_at
        .is_some_and(|t| time::OffsetDateTime::now_utc() - t < time::Duration::seconds(10));
    if !fresh {
        if let Err(e) = state
            .store
            .touch_agent(agent.id, keyward_store::now())
            .await
        {
            tracing::warn!(agent = %agent.id, error = %e, "recording the agent's activity failed");
        }
    }
}

/// How the relay handler and the audit trail see an agent. Its role is the
/// least one: the agent's rights come from the checks above, not a role.
fn agent_caller(agent: &Agent) -> Caller {
    Caller {
        login: format!("agent:{}", agent.name),
        role: Role::User,
        via: Via::Agent {
            id: agent.id,
            name: agent.name.clone(),
        },
        user_id: None,
    }
}
