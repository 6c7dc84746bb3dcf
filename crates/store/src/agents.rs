//! Workstation agents: records and the store's API for them. The SQL is in
//! `agents_repo.rs`, compiled for each backend like `repo.rs`.
//!
//! An agent starts `pending` with a pairing code (shown to the person) and a
//! polling secret (kept by the agent), both stored as HMACs only; an approval
//! makes it `paired` to an owner (an account or an API token); the agent then
//! picks up its bearer credential once (stored as an HMAC only); `revoked`
//! is final.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{pg_repo, sqlite_repo, AuditDraft, Backend, Store, StoreResult};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    /// `pending`, `paired` or `revoked`.
    pub status: String,
    /// `account` or `token` once approved.
    pub owner_kind: Option<String>,
    pub owner_id: Option<Uuid>,
    pub owner_login: Option<String>,
    #[serde(skip)]
    pub code_hmac: Option<Vec<u8>>,
    #[serde(skip)]
    pub poll_hmac: Option<Vec<u8>>,
    #[serde(skip)]
    pub credential_hmac: Option<Vec<u8>>,
    #[serde(with = "time::serde::rfc3339")]
    pub code_expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub approved_at: Option<OffsetDateTime>,
    pub approved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The HMACs are not secrets, but nothing reads them in a log either.
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("status", &self.status)
            .field("owner_kind", &self.owner_kind)
            .field("owner_login", &self.owner_login)
            .finish_non_exhaustive()
    }
}

/// Who an approved agent works for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOwner {
    /// `account` or `token`.
    pub kind: String,
    pub id: Uuid,
    pub login: String,
}

/// One device an agent reports connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDevice {
    pub agent_id: Uuid,
    /// Decimal serial number.
    pub serial: String,
    /// JSON object: device_type, firmware, applets, transports, reader.
    pub info: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

macro_rules! on_backend_audited {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {{
        let key = $self.key();
        match &$self.backend {
            Backend::Sqlite(p) => sqlite_repo::$f(p, &key, $($arg),*).await,
            Backend::Postgres(p) => pg_repo::$f(p, &key, $($arg),*).await,
        }
    }};
}

impl Store {
    /// A new pending agent (pairing requested).
    pub async fn create_agent(&self, agent: &Agent, audit: &AuditDraft) -> StoreResult<()> {
        on_backend_audited!(self, create_agent(agent, audit))
    }

    /// The pending agent with this pairing code becomes paired to `owner`;
    /// the code is used up. Not found: no such pending code; conflict
    /// `pairing_code_expired` after its time.
    pub async fn approve_agent(
        &self,
        code_hmac: &[u8],
        owner: &AgentOwner,
        approved_by: &str,
        audit: &AuditDraft,
    ) -> StoreResult<Agent> {
        let agent = on_backend_audited!(self, approve_agent(code_hmac, owner, approved_by, audit))?;
        self.publish(crate::Change::Agents).await;
        Ok(agent)
    }

    pub async fn find_agent_by_poll(&self, poll_hmac: &[u8]) -> StoreResult<Option<Agent>> {
        on_backend!(self, find_agent_by_poll(poll_hmac))
    }

    /// Gives a paired agent its credential, once: false when it already has
    /// one (or is not paired).
    pub async fn set_agent_credential(
        &self,
        id: Uuid,
        credential_hmac: &[u8],
        audit: &AuditDraft,
    ) -> StoreResult<bool> {
        on_backend_audited!(self, set_agent_credential(id, credential_hmac, audit))
    }

    pub async fn find_agent_by_credential(
        &self,
        credential_hmac: &[u8],
    ) -> StoreResult<Option<Agent>> {
        on_backend!(self, find_agent_by_credential(credential_hmac))
    }

    pub async fn get_agent(&self, id: Uuid) -> StoreResult<Agent> {
        on_backend!(self, get_agent(id))
    }

    /// Pending pairings whose code is still valid at `now`, counted in SQL.
    pub async fn count_pending_pairings(&self, now: OffsetDateTime) -> StoreResult<u64> {
        on_backend!(self, count_pending_pairings(now))
    }

    /// Deletes pending pairings whose code expired before `before`.
    pub async fn purge_expired_pairings(&self, before: OffsetDateTime) -> StoreResult<u64> {
        on_writer!(self, purge_expired_pairings(before))
    }

    pub async fn list_agents(&self) -> StoreResult<Vec<Agent>> {
        on_backend!(self, list_agents())
    }

    /// Revokes an agent (final); its device reports are dropped.
    pub async fn revoke_agent(&self, id: Uuid, audit: &AuditDraft) -> StoreResult<()> {
        on_backend_audited!(self, revoke_agent(id, audit))?;
        self.publish(crate::Change::Agents).await;
        Ok(())
    }

    /// Records that the agent was heard from (not audited).
    pub async fn touch_agent(&self, id: Uuid, at: OffsetDateTime) -> StoreResult<()> {
        on_backend!(self, touch_agent(id, at))
    }

    /// Replaces the devices the agent reports (not audited: the server logs
    /// arrivals and removals).
    pub async fn replace_agent_devices(
        &self,
        agent_id: Uuid,
        devices: &[AgentDevice],
    ) -> StoreResult<()> {
        on_backend!(self, replace_agent_devices(agent_id, devices))?;
        self.publish(crate::Change::Agents).await;
        Ok(())
    }

    /// Whether the agent reports the device (serial, decimal) connected now.
    pub async fn agent_reports_device(&self, agent_id: Uuid, serial: &str) -> StoreResult<bool> {
        on_backend!(self, agent_reports_device(agent_id, serial))
    }

    /// Every device of every paired agent.
    pub async fn list_agent_devices(&self) -> StoreResult<Vec<AgentDevice>> {
        on_backend!(self, list_agent_devices())
    }

    /// The session's command batches go to this agent.
    pub async fn bind_agent_session(&self, session_id: Uuid, agent_id: Uuid) -> StoreResult<()> {
        on_backend!(self, bind_agent_session(session_id, agent_id))?;
        self.publish(crate::Change::Session { id: session_id })
            .await;
        Ok(())
    }

    pub async fn agent_of_session(&self, session_id: Uuid) -> StoreResult<Option<Uuid>> {
        on_backend!(self, agent_of_session(session_id))
    }

    /// The running sessions bound to the agent.
    pub async fn agent_running_sessions(
        &self,
        agent_id: Uuid,
    ) -> StoreResult<Vec<crate::IssuanceSession>> {
        on_backend!(self, agent_running_sessions(agent_id))
    }
}
