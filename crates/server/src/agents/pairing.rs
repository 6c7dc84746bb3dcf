//! Pairing by device code. The agent asks (`POST /agents/pair`), prints the
//! pairing code and polls with its polling secret; a person approves the
//! code; the next poll answers the agent's credential, once. Codes expire
//! after ten minutes, are single-use, and are stored as HMACs only, as are
//! the polling secret and the credential.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::{AuditDraft, AuditOutcome, Permission};
use keyward_store::{Agent, AgentOwner};
use rand::Rng;
use uuid::Uuid;

use super::{AgentAuth, AgentView, PAIRING_TTL};
use crate::api::{audit, found, store_error};
use crate::app::AppState;
use crate::auth::{Caller, Via};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::secrets::generate_token;
use keyward_proto::agent::{ApproveRequest, PairRequest, PairingStarted, PollAnswer, PollRequest};

/// Letters and digits no one confuses when reading them aloud or off a
/// screen: no 0/O, 1/I/L.
pub const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Pending pairings at most (unauthenticated requests cannot fill the store).
const MAX_PENDING: u64 = 1000;

/// A new pairing code `XXXX-XXXX` (31^8, about 2^39.6 codes).
pub fn new_code() -> String {
    let mut rng = rand::rngs::OsRng;
    let chars: String = (0..8)
        .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

/// The code as typed (any case, with or without the dash or spaces) in its
/// canonical form, or None when it cannot be a code.
pub fn normalise_code(typed: &str) -> Option<String> {
    let c: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (c.len() == 8 && c.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(c)
}

fn code_hmac(state: &AppState, canonical: &str) -> Vec<u8> {
    state
        .tokens
        .hash(&format!("agent-pairing-code:{canonical}"))
}

/// A workstation agent asks to be paired (no credential needed): the answer
/// has the pairing code to show and the secret to poll with.
#[utoipa::path(post, path = "/agents/pair", operation_id = "requestPairing", tag = "agents", request_body = PairRequest, security(()),
    responses((status = 201, body = PairingStarted), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(super) async fn request_pairing(
    State(state): State<AppState>,
    crate::limits::ClientIp(ip): crate::limits::ClientIp,
    ApiJson(req): ApiJson<PairRequest>,
) -> ApiResult<(StatusCode, Json<PairingStarted>)> {
    // Unauthenticated: a few requests a minute per address.
    if let Err(wait) = state
        .limits
        .pairing_address
        .take(&ip.to_string(), std::time::Instant::now())
    {
        return Err(crate::limits::too_many(wait, "pairing requests"));
    }
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control()) {
        return Err(
            ApiError::bad_request("name_invalid", "name: 1 to 100 printable characters")
                .field("name"),
        );
    }
    let now = time::OffsetDateTime::now_utc();
    // Pairings nobody approved in time are gone for good (their rows would
    // otherwise pile up from unauthenticated requests).
    state
        .store
        .purge_expired_pairings(now)
        .await
        .map_err(|e| store_error("purging expired pairings", e))?;
    let pending = state
        .store
        .count_pending_pairings(now)
        .await
        .map_err(|e| store_error("counting pending agents", e))?;
    if pending >= MAX_PENDING {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pairings",
            "too many pairing requests are waiting; try again in a few minutes",
        ));
    }
    let code = new_code();
    let poll_secret = format!("kwp_{}", &generate_token()[3..]);
    let agent = Agent {
        id: Uuid::new_v4(),
        name: name.to_string(),
        status: "pending".into(),
        owner_kind: None,
        owner_id: None,
        owner_login: None,
        code_hmac: Some(code_hmac(&state, &normalise_code(&code).expect("own code"))),
        poll_hmac: Some(state.tokens.hash(&poll_secret)),
        credential_hmac: None,
        code_expires_at: keyward_store::now()
            + time::Duration::try_from(PAIRING_TTL).expect("fits"),
        created_at: keyward_store::now(),
        approved_at: None,
        approved_by: None,
        revoked_at: None,
        last_seen_at: None,
    };
    let draft = AuditDraft {
        actor: format!("agent:{}", agent.id),
        action: "agent.pair_request".into(),
        target: format!("agent:{}", agent.id),
        outcome: AuditOutcome::Success,
        details: serde_json::json!({ "name": agent.name }),
    };
    state
        .store
        .create_agent(&agent, &draft)
        .await
        .map_err(|e| store_error("recording the pairing request", e))?;
    tracing::info!(agent = %agent.id, name = %agent.name, "agent pairing requested");
    Ok((
        StatusCode::CREATED,
        Json(PairingStarted {
            agent_id: agent.id.to_string(),
            code,
            poll_secret,
            expires_in_seconds: PAIRING_TTL.as_secs(),
            interval_seconds: 1,
        }),
    ))
}

/// The agent polls: 202 while pending, 200 with the credential once
/// approved (once only), 410 when the code expired, 403 when revoked.
#[utoipa::path(post, path = "/agents/pair/poll", operation_id = "pollPairing", tag = "agents", request_body = PollRequest, security(()),
    responses((status = 200, body = PollAnswer), (status = 202, body = PollAnswer), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(super) async fn poll_pairing(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PollRequest>,
) -> ApiResult<(StatusCode, Json<PollAnswer>)> {
    let unknown = || {
        ApiError::not_found("pairing request").details(serde_json::json!({
            "hint": "the pairing was already completed or never asked for: restart `keyward agent` to pair again"
        }))
    };
    if !req.poll_secret.starts_with("kwp_") || req.poll_secret.len() > 200 {
        return Err(unknown());
    }
    let agent = state
        .store
        .find_agent_by_poll(&state.tokens.hash(&req.poll_secret))
        .await
        .map_err(|e| store_error("reading the pairing request", e))?
        .ok_or_else(unknown)?;
    match agent.status.as_str() {
        "pending" if agent.code_expires_at <= time::OffsetDateTime::now_utc() => {
            Err(ApiError::new(
                StatusCode::GONE,
                "pairing_code_expired",
                "the pairing code expired before it was approved: restart `keyward agent` for a new one",
            ))
        }
        "pending" => Ok((
            StatusCode::ACCEPTED,
            Json(PollAnswer {
                status: "pending".into(),
                agent_id: agent.id.to_string(),
                credential: None,
                owner: None,
            }),
        )),
        "paired" => {
            let credential = format!(
                "{}{}",
                super::AGENT_CREDENTIAL_PREFIX,
                &generate_token()[3..]
            );
            let draft = AuditDraft {
                actor: format!("agent:{}", agent.id),
                action: "agent.paired".into(),
                target: format!("agent:{}", agent.id),
                outcome: AuditOutcome::Success,
                details: serde_json::json!({ "name": agent.name, "owner": super::owner_label(&agent) }),
            };
            let set = state
                .store
                .set_agent_credential(agent.id, &state.tokens.hash(&credential), &draft)
                .await
                .map_err(|e| store_error("giving the agent its credential", e))?;
            if !set {
                return Err(unknown());
            }
            tracing::info!(agent = %agent.id, name = %agent.name, "agent paired");
            Ok((
                StatusCode::OK,
                Json(PollAnswer {
                    status: "paired".into(),
                    agent_id: agent.id.to_string(),
                    credential: Some(credential),
                    owner: super::owner_label(&agent),
                }),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "agent_revoked",
            "this agent was revoked",
        )),
    }
}

/// Approve a pairing code: the agent is paired to the signed-in account (or,
/// for an API token, to that token; an administrator may name another
/// account with `account`).
#[utoipa::path(post, path = "/agents/approve", operation_id = "approveAgent", tag = "agents", request_body = ApproveRequest,
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ApproveRequest>,
) -> ApiResult<Json<AgentView>> {
    let canonical = normalise_code(&req.code).ok_or_else(|| {
        ApiError::bad_request(
            "code_invalid",
            "a pairing code is 8 letters and digits, XXXX-XXXX",
        )
        .field("code")
    })?;
    let owner = match (&req.account, &caller.via) {
        (Some(login), _) => {
            caller.require(Permission::OperatorsManage)?;
            let account = found(state.store.get_account_by_login(login).await)
                .map_err(|e| store_error("reading the account", e))?
                .ok_or_else(|| ApiError::not_found("account").field("account"))?;
            AgentOwner {
                kind: "account".into(),
                id: account.id,
                login: account.login,
            }
        }
        (None, Via::Session { account_id, .. }) => AgentOwner {
            kind: "account".into(),
            id: *account_id,
            login: caller.login.clone(),
        },
        (None, Via::Token { id, name }) => AgentOwner {
            kind: "token".into(),
            id: *id,
            login: name.clone(),
        },
        (None, Via::Agent { .. }) => return Err(ApiError::forbidden("agents to approve agents")),
    };
    let draft = audit(
        &caller,
        "agent.approve",
        "agent:(set by the store)",
        serde_json::json!({ "owner": format!("{}:{}", owner.kind, owner.login) }),
    );
    let agent = state
        .store
        .approve_agent(&code_hmac(&state, &canonical), &owner, &caller.actor(), &draft)
        .await
        .map_err(|e| match e {
            keyward_store::StoreError::NotFound { .. } => ApiError::not_found("pairing code")
                .field("code")
                .details(serde_json::json!({ "hint": "check the code the agent printed; a code works once" })),
            other => store_error("approving the agent", other),
        })?;
    tracing::info!(agent = %agent.id, name = %agent.name, owner = %format!("{}:{}", owner.kind, owner.login), "agent approved");
    Ok(Json(super::agent_view(&agent)))
}

/// The agents the caller may see: their own (paired to their account or
/// API token), all of them for administrators.
#[utoipa::path(get, path = "/agents", operation_id = "listAgents", tag = "agents",
    responses((status = 200, body = Vec<AgentView>), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<AgentView>>> {
    let admin = caller.role.allows(Permission::OperatorsManage);
    let agents = state
        .store
        .list_agents()
        .await
        .map_err(|e| store_error("listing agents", e))?;
    Ok(Json(
        agents
            .iter()
            .filter(|a| admin || (a.owner_kind.is_some() && owns(&caller, a)))
            .map(super::agent_view)
            .collect(),
    ))
}

/// Whether the caller is the agent's owner.
fn owns(caller: &Caller, a: &Agent) -> bool {
    match &caller.via {
        Via::Session { account_id, .. } => {
            a.owner_kind.as_deref() == Some("account") && a.owner_id == Some(*account_id)
        }
        Via::Token { id, .. } => {
            a.owner_kind.as_deref() == Some("token") && a.owner_id == Some(*id)
        }
        Via::Agent { .. } => false,
    }
}

/// Revoke an agent: its credential stops working at once (403
/// `agent_revoked`), its devices disappear from the lists. Its owner or an
/// administrator.
#[utoipa::path(post, path = "/agents/{id}/revoke", operation_id = "revokeAgent", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentView>> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("id_invalid", "agent id must be a UUID").field("id"))?;
    let agent = state
        .store
        .get_agent(id)
        .await
        .map_err(|e| store_error("reading the agent", e))?;
    if !caller.role.allows(Permission::OperatorsManage) && !owns(&caller, &agent) {
        return Err(ApiError::forbidden(
            "revoking an agent paired to someone else",
        ));
    }
    let draft = audit(
        &caller,
        "agent.revoke",
        format!("agent:{id}"),
        serde_json::json!({ "name": agent.name, "owner": super::owner_label(&agent) }),
    );
    state
        .store
        .revoke_agent(id, &draft)
        .await
        .map_err(|e| store_error("revoking the agent", e))?;
    tracing::info!(agent = %id, name = %agent.name, "agent revoked");
    let agent = state
        .store
        .get_agent(id)
        .await
        .map_err(|e| store_error("reading the agent", e))?;
    Ok(Json(super::agent_view(&agent)))
}

/// The calling agent itself (agents check their credential with it).
#[utoipa::path(get, path = "/agents/me", operation_id = "getAgentSelf", tag = "agents",
    responses((status = 200, body = AgentView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn me(AgentAuth(agent): AgentAuth) -> ApiResult<Json<AgentView>> {
    Ok(Json(super::agent_view(&agent)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_the_unambiguous_alphabet_and_normalise() {
        for _ in 0..200 {
            let c = new_code();
            assert_eq!(c.len(), 9);
            assert_eq!(&c[4..5], "-");
            assert!(!c.contains(['0', 'O', '1', 'I', 'L']));
            assert_eq!(normalise_code(&c).unwrap(), c.replace('-', ""));
            assert_eq!(
                normalise_code(&c.to_lowercase()).unwrap(),
                c.replace('-', "")
            );
        }
        assert!(normalise_code("ABCD-EFG").is_none());
        assert!(normalise_code("ABCD-EFG0").is_none());
        assert!(normalise_code("ABCD EFGH").is_some());
    }
}
