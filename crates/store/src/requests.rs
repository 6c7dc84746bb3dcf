//! Requests (issue 18): issuances and replacements waiting for a second
//! person's approval, and the batches a bulk CSV makes. The rules of who
//! decides are `keyward_domain::request`'s; here, each move is a conditional
//! write from the state it leaves, so two deciders (or two sessions) cannot
//! both win.

use keyward_domain::RequestState;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{AuditDraft, Backend, Store, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: Uuid,
    /// `issuance` or `replacement`.
    pub kind: String,
    pub user_id: Uuid,
    pub policy_id: Uuid,
    pub serial: Option<String>,
    pub replaces: Option<String>,
    pub reason: Option<String>,
    pub batch_id: Option<Uuid>,
    pub state: RequestState,
    pub requested_by: String,
    pub created_at: OffsetDateTime,
    pub decided_by: Option<String>,
    pub decided_at: Option<OffsetDateTime>,
    pub note: Option<String>,
    pub session_id: Option<Uuid>,
    pub used_at: Option<OffsetDateTime>,
}

/// A bulk batch: the requests one CSV made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBatch {
    pub id: Uuid,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub rows_count: i64,
}

impl Store {
    /// Writes `requests` (and their batch) in one transaction, with the
    /// audit record.
    pub async fn create_requests(
        &self,
        batch: Option<&RequestBatch>,
        requests: &[Request],
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, create_requests(&key, batch, requests, audit))
    }

    pub async fn get_request(&self, id: Uuid) -> StoreResult<Request> {
        on_backend!(self, get_request(id))
    }

    /// Requests by state and batch (newest first).
    pub async fn list_requests(
        &self,
        state: Option<RequestState>,
        batch: Option<Uuid>,
    ) -> StoreResult<Vec<Request>> {
        on_backend!(self, list_requests(state, batch))
    }

    /// Moves a request from `from` to `to` (decided by, a note), with its
    /// audit record; a request that is not in `from` any more: conflict
    /// `request_moved`.
    pub async fn move_request(
        &self,
        id: Uuid,
        from: &[RequestState],
        to: RequestState,
        decided_by: Option<&str>,
        note: Option<&str>,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        let key = self.key();
        on_writer!(
            self,
            move_request(&key, id, from, to, decided_by, note, audit)
        )
    }

    /// An approved request carried out by `session` (once): approved →
    /// used; anything else: conflict `request_used`.
    pub async fn use_request(&self, id: Uuid, session: Uuid) -> StoreResult<()> {
        on_writer!(self, use_request(id, session))
    }

    /// The session that would have carried it out did not start: used →
    /// approved again.
    pub async fn release_request(&self, id: Uuid, session: Uuid) -> StoreResult<()> {
        on_writer!(self, release_request(id, session))
    }

    pub async fn get_request_batch(&self, id: Uuid) -> StoreResult<RequestBatch> {
        on_backend!(self, get_request_batch(id))
    }
}
