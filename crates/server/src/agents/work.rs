//! Delivery of command batches to agents. An issuance started with
//! `via: "agent"` (or an agent's id) is bound to the agent that reports the
//! device; the agent long-polls `POST /agents/me/work` and gets the command
//! batches of its running sessions whose device it reports, except those it
//! says it is running already (`busy`). Prompt batches are not delivered:
//! the person's client answers them.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::Serial;
use uuid::Uuid;

use super::{is_online, may_use, AgentAuth, MAX_WAIT};
use crate::api::store_error;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use keyward_proto::agent::{BusyBatch, WorkAnswer, WorkItem, WorkRequest};

/// The agent re-reads the store this often while waiting, in case a wake-up
/// came from another node.
const RECHECK: Duration = Duration::from_secs(5);

/// The agent's long-poll for command batches: answers as soon as there is
/// one (a session bound to this agent moved on), or empty after the wait.
#[utoipa::path(post, path = "/agents/me/work", operation_id = "pollAgentWork", tag = "agents", request_body = WorkRequest,
    responses((status = 200, body = WorkAnswer), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn work(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiJson(req): ApiJson<WorkRequest>,
) -> ApiResult<Json<WorkAnswer>> {
    let wait = Duration::from_secs(req.wait_seconds.unwrap_or(25)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let busy: HashSet<BusyBatch> = req.busy.into_iter().collect();
    super::credential::touch(&state, &agent).await;
    let mut rx = state.agents.watch_work();
    loop {
        rx.borrow_and_update();
        let (items, running) = pending_batches(&state, agent.id, &busy).await?;
        let released: Vec<String> = req
            .held
            .iter()
            .filter(|id| !running.contains(id.as_str()))
            .cloned()
            .collect();
        if !items.is_empty()
            || !released.is_empty()
            || tokio::time::Instant::now() >= deadline
            || state.agents.is_stopping()
        {
            return Ok(Json(WorkAnswer { items, released }));
        }
        let until = deadline.min(tokio::time::Instant::now() + RECHECK);
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = state.agents.stopped() => {}
        }
        // Revoked while waiting: stop at once.
        let now = state
            .store
            .get_agent(agent.id)
            .await
            .map_err(|e| store_error("reading the agent", e))?;
        if now.status != "paired" {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_revoked",
                "this agent was revoked: pair it again (`keyward agent`)",
            ));
        }
    }
}

/// The batches to deliver, and the ids of every running session bound to
/// the agent.
async fn pending_batches(
    state: &AppState,
    agent_id: Uuid,
    busy: &HashSet<BusyBatch>,
) -> ApiResult<(Vec<WorkItem>, HashSet<String>)> {
    let mut out = Vec::new();
    let mut running = HashSet::new();
    for s in state
        .store
        .agent_running_sessions(agent_id)
        .await
        .map_err(|e| store_error("reading the agent's sessions", e))?
    {
        let (mut batch, serial) = crate::issuance::outstanding_batch(state, &s).await?;
        running.insert(batch.session_id.clone());
        if batch.commands.is_empty()
            || busy.contains(&BusyBatch {
                session_id: batch.session_id.clone(),
                seq: batch.seq,
            })
        {
            continue;
        }
        if !state
            .store
            .agent_reports_device(agent_id, &serial.to_string())
            .await
            .map_err(|e| store_error("reading the agent's devices", e))?
        {
            continue;
        }
        // Informational prompts only; never a value meant for the person.
        for p in &mut batch.prompts {
            p.value = None;
        }
        out.push(WorkItem {
            serial: serial.to_string(),
            batch,
        });
    }
    Ok((out, running))
}

/// For `POST /issuance`: the agent whose relay the caller asks for with
/// `via` (`local` or absent: none; `agent`: the online agent the caller may
/// use that reports the device, the most recently heard from; or an agent's
/// id). Checked before the device is touched: 409 `no_agent_for_device`.
pub async fn choose_for_start(
    state: &AppState,
    caller: &Caller,
    via: Option<&str>,
    serial: Serial,
) -> ApiResult<Option<Uuid>> {
    let wanted = match via {
        None | Some("local") => return Ok(None),
        Some("agent") => None,
        Some(id) => Some(Uuid::parse_str(id).map_err(|_| {
            ApiError::bad_request("via_invalid", "via: `local`, `agent` or an agent's id")
                .field("via")
        })?),
    };
    let serial = serial.to_string();
    let agents = state
        .store
        .list_agents()
        .await
        .map_err(|e| store_error("listing agents", e))?;
    let reporting: HashSet<Uuid> = state
        .store
        .list_agent_devices()
        .await
        .map_err(|e| store_error("listing the agents' devices", e))?
        .into_iter()
        .filter(|d| d.serial == serial)
        .map(|d| d.agent_id)
        .collect();
    let mut candidates: Vec<_> = agents
        .iter()
        .filter(|a| {
            reporting.contains(&a.id)
                && is_online(a)
                && may_use(caller, a)
                && wanted.is_none_or(|w| w == a.id)
        })
        .collect();
    // The caller's own agents first; an administrator's use of another's
    // agent is audited.
    candidates.sort_by_key(|a| (!super::owns(caller, a), std::cmp::Reverse(a.last_seen_at)));
    match candidates.first() {
        Some(a) if !super::owns(caller, a) => {
            let draft = crate::api::audit(
                caller,
                "agent.use_other",
                format!("agent:{}", a.id),
                serde_json::json!({
                    "serial": serial,
                    "owner": super::owner_label(a),
                }),
            );
            state
                .store
                .append_audit(&draft)
                .await
                .map_err(|e| store_error("auditing the use of another's agent", e))?;
            Ok(Some(a.id))
        }
        Some(a) => Ok(Some(a.id)),
        None => Err(ApiError::conflict(
            "no_agent_for_device",
            format!(
                "no online agent you may use reports device {serial}: start and pair `keyward agent` on the workstation with the device"
            ),
        )
        .field("via")),
    }
}

/// Binds a started session to its agent and wakes the agent's long-poll.
pub async fn bind_session(state: &AppState, session_id: Uuid, agent_id: Uuid) -> ApiResult<()> {
    state
        .store
        .bind_agent_session(session_id, agent_id)
        .await
        .map_err(|e| store_error("binding the session to the agent", e))?;
    // The store's change feed wakes the agent's long-poll.
    state.agents.remember_binding(session_id, agent_id);
    Ok(())
}
