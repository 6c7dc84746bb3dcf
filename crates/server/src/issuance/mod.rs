//! Issuance sessions on the server: Add Device for a user starts one, the
//! relay endpoints carry its batches to the client next to the device and
//! back, and the engine (`keyward-engine`) decides every device command.
//!
//! A session is durable: after each step its engine state (which holds the
//! PIN, PUK and management keys) is sealed under the KEK and written with the
//! session's sequence number, so a restarted server, or another node on the
//! same PostgreSQL, continues it; a replayed or out-of-order result is refused.

mod agent_delivery;
mod auto_import;
mod change_pin;
mod recycle;
mod relay;
mod replace;
mod retry_cancel;
mod session;
mod start;
mod sweep;
mod unlock;
mod update;

pub use auto_import::reported_unknown;
pub use update::renewal_scan;

use axum::extract::{Path, State};
use axum::Json;
use keyward_engine::{Batch, Channel};
use keyward_proto::{
    RelayBatch, RelayCommand, RelayPrompt, SessionError, SessionView as SessionStatus,
    StartIssuance, RELAY_PROTOCOL_VERSION,
};
use keyward_store::IssuanceSession;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::api::store_error;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};

pub(crate) use crate::auth::sessions::may_relay_own_session;
pub(crate) use agent_delivery::outstanding_batch;
pub use sweep::sweep_abandoned;

use session::unseal;

/// How sure Keyward is of a device's PUK (None: no session with it): from
/// the sealed state its latest session carries forward.
pub(crate) async fn puk_custody(
    state: &AppState,
    device_id: Uuid,
) -> ApiResult<Option<keyward_engine::session::PukCustody>> {
    let Some(last) = state
        .store
        .latest_device_session(device_id)
        .await
        .map_err(|e| store_error("reading the device's sessions", e))?
    else {
        return Ok(None);
    };
    Ok(Some(unseal(state, &last)?.puk_custody()))
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start::start))
        .routes(routes!(status))
        .routes(routes!(current_batch))
        .routes(routes!(relay::relay))
        .routes(routes!(retry_cancel::cancel))
        .routes(routes!(retry_cancel::retry))
        .routes(routes!(recycle::recycle))
        .routes(routes!(change_pin::start))
        .routes(routes!(unlock::start))
        .routes(routes!(unlock::create_request))
        .routes(routes!(unlock::start_own))
        .routes(routes!(unlock::offline))
        .routes(routes!(update::preview))
        .routes(routes!(
            update::create_request,
            update::get_request,
            update::cancel_request
        ))
        .routes(routes!(update::start))
        .routes(routes!(update::start_own))
        .routes(routes!(update::scan))
        .routes(routes!(update::list))
}

pub(super) fn relay_batch(
    id: Uuid,
    seq: i64,
    status: keyward_domain::SessionStatus,
    batch: &Batch,
) -> RelayBatch {
    RelayBatch {
        protocol: RELAY_PROTOCOL_VERSION,
        session_id: id.to_string(),
        seq: seq as u64,
        commands: batch
            .commands
            .iter()
            .map(|c| RelayCommand {
                channel: match c.channel {
                    Channel::Piv => "piv".into(),
                    Channel::Ctap => "ctap".into(),
                },
                bytes: hex::encode(&c.bytes),
                expect: c.expect.iter().map(|sw| format!("{sw:04x}")).collect(),
                step: c.step.to_string(),
                secret: c.secret,
            })
            .collect(),
        prompts: relay_prompts(batch),
        state: status,
        step: batch.step(),
    }
}

/// The batch's prompts as the protocol carries them (`value`: the PIN a
/// `show_initial_pin` shows; clients never log it).
pub(super) fn relay_prompts(batch: &Batch) -> Vec<RelayPrompt> {
    batch
        .prompts
        .iter()
        .map(|p| RelayPrompt {
            kind: p.kind.as_str().into(),
            message: p.message.clone(),
            value: p.value.as_ref().map(|v| v.expose().to_string()),
        })
        .collect()
}

pub(crate) async fn load(state: &AppState, id: &str) -> ApiResult<IssuanceSession> {
    state
        .store
        .get_issuance(session_id(id)?)
        .await
        .map_err(|e| store_error("reading the session", e))
}

fn session_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::bad_request("id_invalid", "session id must be a UUID").field("id"))
}

/// [`load`] with the session's user, policy and device, read together.
pub(super) async fn load_context(
    state: &AppState,
    id: &str,
) -> ApiResult<keyward_store::IssuanceContext> {
    state
        .store
        .get_issuance_context(session_id(id)?)
        .await
        .map_err(|e| store_error("reading the session", e))
}

/// A session's state, step and credentials.
#[utoipa::path(get, path = "/issuance/{id}", operation_id = "getIssuance", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = SessionStatus), (status = 404, body = ErrorBody)))]
pub(super) async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionStatus>> {
    let (s, _) = crate::auth::sessions::load_visible(&state, &caller, &id).await?;
    let data = unseal(&state, &s)?;
    let prompts =
        if s.status == keyward_domain::SessionStatus::Running && data.batch().awaits_answers() {
            relay_prompts(data.batch())
        } else {
            vec![]
        };
    let credentials = state
        .store
        .device_credentials(s.device_id)
        .await
        .map_err(|e| store_error("reading credentials", e))?
        .into_iter()
        .filter(|c| c.session_id == s.id)
        .map(crate::api::credential_view)
        .collect();
    Ok(Json(SessionStatus {
        session_id: s.id.to_string(),
        serial: data.serial.to_string(),
        user: data.user_login.clone(),
        policy: data.policy_name.clone(),
        status: s.status,
        step: s.step,
        seq: s.seq,
        action: s.action,
        error: s
            .error
            .and_then(|e| serde_json::from_str::<SessionError>(&e).ok()),
        credentials,
        prompts,
        agent: crate::agents::agent_of_session(&state, s.id)
            .await?
            .map(|a| a.to_string()),
        notice: data.notice().map(|n| keyward_proto::SessionNotice {
            code: n.code.clone(),
            message: n.message.clone(),
        }),
    }))
}

/// The batch out now (idempotent: fetch it again after a dropped connection).
#[utoipa::path(get, path = "/issuance/{id}/batch", operation_id = "getIssuanceBatch", tag = "issuance", params(("id" = String, Path)),
    responses((status = 200, body = RelayBatch), (status = 404, body = ErrorBody)))]
pub(super) async fn current_batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RelayBatch>> {
    // The device commands go to whoever relays them: the creator's own
    // client when no agent is bound, else only the agent (its work poll).
    let (s, party) = crate::auth::sessions::load_visible(&state, &caller, &id).await?;
    let bound = crate::agents::agent_of_session(&state, s.id)
        .await?
        .is_some();
    if party != crate::auth::sessions::Party::Creator || bound {
        return Err(ApiError::not_found("issuance session").field("id"));
    }
    let data = unseal(&state, &s)?;
    Ok(Json(relay_batch(s.id, s.seq, s.status, data.batch())))
}
