//! Workstation agents (`keyward agent`): pairing by device code, the
//! agent's credential, the devices it reports, and the delivery of the
//! command batches of the sessions it relays.
//!
//! * [`pairing`]: `POST /agents/pair` (the agent, unauthenticated) gets a
//!   pairing code `XXXX-XXXX` and a polling secret; a signed-in account
//!   (`POST /agents/approve`) or an administrator (`keyward admin agent
//!   approve CODE`) approves it; the agent's next poll picks up its bearer
//!   credential (`kwa_…`), once. List and revoke.
//! * [`credential`]: the agent's credential is accepted on the agent
//!   endpoints and on the relay of a session bound to the agent whose device
//!   it reports now, nowhere else ([`RelayCaller`]).
//! * [`reports`]: the agent reports its devices on every change; the portal
//!   reads the signed-in account's agents' devices (long-poll on changes).
//! * [`work`]: the agent long-polls for command batches; an issuance started
//!   with `via: "agent"` is bound to the agent that reports the device.
//!
//! The in-memory [`Hub`] wakes long-polls and remembers which agent a
//! session is bound to (a binding never changes once written, so a
//! remembered one is as good as the store's); every other decision reads
//! the store, so another node on the same PostgreSQL serves an agent as well.

mod credential;
mod pairing;
mod reports;
mod work;

use std::time::Duration;

use keyward_store::Agent;
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{Caller, Via};

pub use credential::{
    agent_of_session, check_relay_batch, AgentAuth, RelayCaller, AGENT_CREDENTIAL_PREFIX,
};
pub use keyward_proto::agent::AgentView;
pub use work::{bind_session, choose_for_start};

/// An agent not heard from for this long is offline (its long-poll
/// returns every [`MAX_WAIT`] at most).
pub const ONLINE_WINDOW: Duration = Duration::from_secs(60);
/// The longest a long-poll waits.
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// Pairing codes live this long.
pub const PAIRING_TTL: Duration = Duration::from_secs(600);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pairing::request_pairing))
        .routes(routes!(pairing::poll_pairing))
        .routes(routes!(pairing::approve))
        .routes(routes!(pairing::list))
        .routes(routes!(pairing::revoke))
        .routes(routes!(pairing::me))
        .routes(routes!(reports::report_devices))
        .routes(routes!(reports::list_devices))
        .routes(routes!(work::work))
}

/// Wakes the long-polls: `work` when a session moved (started, relayed,
/// retried, cancelled), `devices` when an agent's devices changed.
pub struct Hub {
    work: watch::Sender<u64>,
    devices: watch::Sender<u64>,
    /// The server is stopping: every long-poll answers at once (a graceful
    /// stop waits for open requests, and a long-poll holds one 25 s).
    stopping: watch::Sender<bool>,
    /// Session id -> the agent it is bound to. Written once per session in
    /// the store (`agent_sessions` primary key), so never stale; a node
    /// that has not seen the binding reads the store.
    bound: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, uuid::Uuid>>,
}

/// The binding cache is dropped whole past this many sessions (it refills
/// from the store), so it cannot grow without end.
const BOUND_CACHE_MAX: usize = 100_000;

impl Default for Hub {
    fn default() -> Self {
        Hub {
            work: watch::channel(0).0,
            devices: watch::channel(0).0,
            stopping: watch::channel(false).0,
            bound: Default::default(),
        }
    }
}

impl Hub {
    pub fn work_changed(&self) {
        self.work.send_modify(|v| *v = v.wrapping_add(1));
    }
    pub fn devices_changed(&self) {
        self.devices.send_modify(|v| *v = v.wrapping_add(1));
    }
    /// Ends every long-poll now and the ones to come (the server stops).
    pub fn stop_long_polls(&self) {
        self.stopping.send_replace(true);
    }
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }
    /// Resolves when the server stops.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
    pub fn devices_version(&self) -> u64 {
        *self.devices.borrow()
    }
    fn bound_agent(&self, session_id: uuid::Uuid) -> Option<uuid::Uuid> {
        self.bound
            .lock()
            .ok()
            .and_then(|m| m.get(&session_id).copied())
    }
    fn remember_binding(&self, session_id: uuid::Uuid, agent_id: uuid::Uuid) {
        if let Ok(mut m) = self.bound.lock() {
            if m.len() >= BOUND_CACHE_MAX {
                m.clear();
            }
            m.insert(session_id, agent_id);
        }
    }
    fn watch_work(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }
    fn watch_devices(&self) -> watch::Receiver<u64> {
        self.devices.subscribe()
    }
}

/// Follows the store's change feed (every node's changes, see
/// `keyward_store::changes`) and wakes the long-polls: the agents' work on
/// any session change (started, relayed, retried, cancelled, recycled, a PIN
/// change, bound to an agent: whatever the route), the device lists on any
/// agent change. Ends with the state.
pub fn follow_changes(state: &AppState) {
    use keyward_store::Change;
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = state.store.changes();
    let weak = std::sync::Arc::downgrade(&state.0);
    tokio::spawn(async move {
        loop {
            let change = rx.recv().await;
            let Some(inner) = weak.upgrade() else { return };
            match change {
                Ok(Change::Session { .. }) => inner.agents.work_changed(),
                // A device back in its reader may have a batch waiting.
                Ok(Change::Agents | Change::Resync) | Err(RecvError::Lagged(_)) => {
                    inner.agents.devices_changed();
                    inner.agents.work_changed();
                }
                Ok(Change::Revocations | Change::Jobs) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Whether the agent was heard from recently.
pub fn is_online(agent: &Agent) -> bool {
    agent.status == "paired"
        && agent.last_seen_at.is_some_and(|t| {
            time::OffsetDateTime::now_utc() - t
                <= time::Duration::try_from(ONLINE_WINDOW).unwrap_or(time::Duration::MINUTE)
        })
}

/// Whether `agent` is `caller`'s own: paired to the signed-in account, or
/// to the API token itself. A token has no account behind it, so it acts
/// only through agents paired to it.
pub fn owns(caller: &Caller, agent: &Agent) -> bool {
    let owner = |kind: &str, id: Uuid| {
        agent.owner_kind.as_deref() == Some(kind) && agent.owner_id == Some(id)
    };
    match &caller.via {
        Via::Session { account_id, .. } => owner("account", *account_id),
        Via::Token { id, .. } => owner("token", *id),
        Via::Agent { .. } => false,
    }
}

/// Whether `caller` may see and use `agent`: its owner, and administrators
/// (who may use any; their use of another's agent is audited where a
/// session is bound to it).
pub fn may_use(caller: &Caller, agent: &Agent) -> bool {
    owns(caller, agent)
        || caller
            .role
            .allows(keyward_domain::Permission::OperatorsManage)
}

/// How owners are shown: `account:alice`, `token:ci`.
pub fn owner_label(agent: &Agent) -> Option<String> {
    match (&agent.owner_kind, &agent.owner_login) {
        (Some(k), Some(l)) => Some(format!("{k}:{l}")),
        _ => None,
    }
}

fn rfc3339(t: Option<time::OffsetDateTime>) -> Option<String> {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
}

/// An agent as the API shows it.
pub fn agent_view(a: &Agent) -> AgentView {
    let status = if a.status == "pending" && a.code_expires_at <= time::OffsetDateTime::now_utc() {
        "expired".to_string()
    } else {
        a.status.clone()
    };
    AgentView {
        id: a.id.to_string(),
        name: a.name.clone(),
        status,
        owner: owner_label(a),
        online: is_online(a),
        created_at: rfc3339(Some(a.created_at)).unwrap_or_default(),
        approved_at: rfc3339(a.approved_at),
        approved_by: a.approved_by.clone(),
        revoked_at: rfc3339(a.revoked_at),
        last_seen_at: rfc3339(a.last_seen_at),
    }
}
