//! Update requests (issue 17): a policy re-applied to an issued device,
//! pending until the device is next connected (one open request per
//! device); and the flag of a device whose PIN an offline unlock set.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{AuditDraft, Backend, Store, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub id: Uuid,
    pub device_id: Uuid,
    /// The policy the device is brought to.
    pub policy_id: Uuid,
    /// The applied changes (JSON list of `keyward_domain::update::AppliedChange`).
    pub changes: String,
    /// `operator` (Request Update) or `renewal` (the daily scan).
    pub origin: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    /// `pending`, `done`, `cancelled`.
    pub state: String,
    /// The last session that carried it out.
    pub session_id: Option<Uuid>,
    pub ended_at: Option<OffsetDateTime>,
}

/// What an update session's end does to its request and the device
/// (written with the end, in its transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub request: Uuid,
    /// The request is carried out (else it stays pending).
    pub done: bool,
    /// Certificates the update replaced or removed, with the CRL reason
    /// code they are revoked with (superseded 4, cessationOfOperation 5).
    pub revoke: Vec<(Uuid, u8)>,
    /// Certificates whose key moved to a retired slot, with that slot
    /// (`82` to `95`): their record's slot follows the key.
    pub retire: Vec<(Uuid, String)>,
    /// The device's policy from now on.
    pub device_policy: Option<Uuid>,
}

impl Store {
    /// Writes a new pending request (with its audit record); a device with
    /// one already: conflict `update_pending`.
    pub async fn create_update_request(
        &self,
        request: &UpdateRequest,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, create_update_request(&key, request, audit))
    }

    /// The device's pending request.
    pub async fn pending_update_request(
        &self,
        device_id: Uuid,
    ) -> StoreResult<Option<UpdateRequest>> {
        on_backend!(self, pending_update_request(device_id))
    }

    /// The changes of a pending request as computed again when it is
    /// carried out.
    pub async fn refresh_update_request(&self, id: Uuid, changes: &str) -> StoreResult<()> {
        on_writer!(self, refresh_update_request(id, changes))
    }

    /// Every pending request (the devices page; the renewal scan).
    pub async fn pending_update_requests(&self) -> StoreResult<Vec<UpdateRequest>> {
        on_backend!(self, pending_update_requests())
    }

    /// Cancel Update Request: a pending request withdrawn (with its audit
    /// record); one that is not pending any more: conflict.
    pub async fn cancel_update_request(&self, id: Uuid, audit: &AuditDraft) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, cancel_update_request(&key, id, audit))
    }

    /// Flags (or clears) a device whose PIN an offline unlock set: its next
    /// update asks for a PIN that meets the policy's rules.
    pub async fn set_pin_check_due(
        &self,
        device_id: Uuid,
        due: bool,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, set_pin_check_due(&key, device_id, due, audit))
    }

    /// Whether the device's PIN awaits the policy's check.
    pub async fn pin_check_due(&self, device_id: Uuid) -> StoreResult<bool> {
        on_backend!(self, pin_check_due(device_id))
    }
}
