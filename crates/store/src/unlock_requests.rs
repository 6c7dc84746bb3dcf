//! Unlock requests (issue 16): the help desk creates one for a person's
//! device; the person's own unlock session uses it once, before it expires.
//! And the flag of a device whose PUK was disclosed for an offline unlock.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{AuditDraft, Backend, Store, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockRequest {
    pub id: Uuid,
    pub device_id: Uuid,
    /// The actor who created it (`operator:LOGIN`, `token:NAME`).
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
    pub session_id: Option<Uuid>,
}

impl Store {
    /// Writes a new request (with its audit record).
    pub async fn create_unlock_request(
        &self,
        request: &UnlockRequest,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, create_unlock_request(&key, request, audit))
    }

    /// The device's newest request that is unused and not expired at `now`.
    pub async fn open_unlock_request(
        &self,
        device_id: Uuid,
        now: OffsetDateTime,
    ) -> StoreResult<Option<UnlockRequest>> {
        on_backend!(self, open_unlock_request(device_id, now))
    }

    /// Flags (or clears) a device whose PUK the help desk read for an
    /// offline unlock: the next unlock replaces it. With its audit record.
    pub async fn set_puk_rotation_due(
        &self,
        device_id: Uuid,
        due: bool,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, set_puk_rotation_due(&key, device_id, due, audit))
    }

    /// Marks the request used by `session` (once: a used or expired one is
    /// a conflict, `unlock_request_used`).
    pub async fn use_unlock_request(
        &self,
        id: Uuid,
        session: Uuid,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        on_writer!(self, use_unlock_request(id, session, now))
    }
}
