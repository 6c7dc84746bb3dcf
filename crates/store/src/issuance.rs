//! Records of issuance sessions and of the credentials they put on devices.
//! The session's engine state is opaque here: the server seals it (it holds
//! PINs and keys) before it reaches the store.

use crate::changes::Change;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuanceSession {
    pub id: Uuid,
    pub device_id: Uuid,
    pub user_id: Uuid,
    pub policy_id: Uuid,
    pub action: keyward_domain::SessionAction,
    pub status: keyward_domain::SessionStatus,
    pub step: String,
    pub seq: i64,
    #[serde(skip)]
    pub sealed_state: Vec<u8>,
    /// JSON failure report.
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A session and the parties it names, as one read gives them; each is
/// not-found if it no longer exists.
#[derive(Debug)]
pub struct IssuanceContext {
    pub session: IssuanceSession,
    pub user: StoreResult<keyward_domain::User>,
    pub policy: StoreResult<keyward_domain::DevicePolicy>,
    pub device: StoreResult<keyward_domain::Device>,
}

impl std::fmt::Debug for IssuanceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuanceSession")
            .field("id", &self.id)
            .field("device_id", &self.device_id)
            .field("status", &self.status)
            .field("step", &self.step)
            .field("seq", &self.seq)
            .field(
                "sealed_state",
                &format_args!("<{} sealed bytes>", self.sealed_state.len()),
            )
            .finish_non_exhaustive()
    }
}

/// The device an issuance replaces (Replace Device): the original as the
/// caller read it, its incident to declare as the session starts (`None`:
/// declared already), and what the new device records.
#[derive(Debug, Clone)]
pub struct Replacing {
    pub original: keyward_domain::Device,
    pub incident: Option<keyward_domain::StateChange>,
    pub replacement: keyward_domain::Replacement,
}

/// What a step of a session changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceUpdate {
    pub status: keyward_domain::SessionStatus,
    pub step: String,
    pub seq: i64,
    pub sealed_state: Vec<u8>,
    pub error: Option<String>,
    /// The device's FIDO application was reset in the session: the
    /// passkeys on record for it (not those recorded with this update) are
    /// marked revoked and a `delete_passkey` job written for each.
    pub passkeys_erased: bool,
    /// Sets the device's "passkey to register again" flag.
    pub passkey_reregistration: Option<bool>,
    /// An update session's end: its request and what it changes.
    pub update: Option<crate::update_requests::UpdateOutcome>,
    /// The session set a PIN checked against the policy's rules (Change
    /// PIN, Unlock, an update's PIN change): an offline unlock's flag is
    /// cleared.
    pub pin_checked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: Uuid,
    pub device_id: Uuid,
    pub session_id: Uuid,
    /// `certificate` or `passkey`.
    pub kind: String,
    pub slot: Option<String>,
    pub serial: String,
    /// Times as RFC 3339 text on the wire (API, `keyward issue --json`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(skip)]
    pub der: Option<Vec<u8>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked (read only: the lifecycle writes it); `None` on a
    /// revoked row from before reasons were stored, or one revoked as it
    /// was recorded (a failed attempt's). `CertificateHold`: on hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<keyward_domain::RevocationReason>,
    /// Whether the device proved it generated the key (PIV attestation, or
    /// the passkey's packed attestation); None: recorded before Keyward
    /// checked, or a credential that cannot be attested.
    #[serde(default)]
    pub attested: Option<bool>,
}

impl Credential {
    /// On hold (certificateHold): valid again when the hold is released.
    pub fn on_hold(&self) -> bool {
        self.revoked_at.is_some()
            && self.revocation_reason == Some(keyward_domain::RevocationReason::CertificateHold)
    }
}

use crate::{AuditDraft, Backend, Store, StoreResult};
use keyward_domain::{Device, StateChange};

impl Store {
    /// Starts an issuance session: the device, as the caller read it, moves
    /// by `change` and the session is written, atomically. Conflicts:
    /// `version_conflict` (the device changed since it was read),
    /// `device_busy` (another active session holds the device).
    pub async fn start_issuance(
        &self,
        session: &IssuanceSession,
        device: &Device,
        change: &StateChange,
        replacing: Option<&Replacing>,
        audit: &AuditDraft,
    ) -> StoreResult<Device> {
        let key = self.key();
        let (device, done) = on_writer!(
            self,
            start_issuance(&key, session, device, change, replacing, audit)
        )?;
        self.publish(Change::Session { id: session.id }).await;
        self.revocations_changed(&done).await;
        Ok(device)
    }

    /// Opens a session without changing the device (Recycle); one active
    /// session per device (`device_busy`).
    pub async fn open_device_session(
        &self,
        session: &IssuanceSession,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, open_device_session(&key, session, audit))?;
        self.publish(Change::Session { id: session.id }).await;
        Ok(())
    }

    /// Revokes the device's live credentials (Recycle); returns how many.
    pub async fn revoke_device_credentials(
        &self,
        device_id: Uuid,
        at: time::OffsetDateTime,
    ) -> StoreResult<u64> {
        on_backend!(self, revoke_device_credentials(device_id, at))
    }

    /// The device's most recent session (issue, assign or recycle), if any.
    pub async fn latest_device_session(
        &self,
        device_id: Uuid,
    ) -> StoreResult<Option<IssuanceSession>> {
        on_backend!(self, latest_device_session(device_id))
    }

    pub async fn get_issuance(&self, id: Uuid) -> StoreResult<IssuanceSession> {
        on_backend!(self, get_issuance(id))
    }

    /// The session with its user, policy and device, in one read.
    pub async fn get_issuance_context(&self, id: Uuid) -> StoreResult<IssuanceContext> {
        on_backend!(self, get_issuance_context(id))
    }

    /// Moves a session on from `expected_seq`, with its audit records (in
    /// order) in the same transaction; see the repository.
    #[allow(clippy::too_many_arguments)]
    pub async fn advance_issuance(
        &self,
        id: Uuid,
        expected_seq: i64,
        update: &IssuanceUpdate,
        device_change: Option<(&keyward_domain::Device, &StateChange)>,
        credentials: &[Credential],
        audits: &[&AuditDraft],
    ) -> StoreResult<()> {
        let key = self.key();
        let done = on_writer!(
            self,
            advance_issuance(
                &key,
                id,
                expected_seq,
                update,
                device_change,
                credentials,
                audits
            )
        )?;
        self.publish(Change::Session { id }).await;
        self.revocations_changed(&done).await;
        Ok(())
    }

    pub async fn get_credential(&self, id: Uuid) -> StoreResult<Credential> {
        on_backend!(self, get_credential(id))
    }

    pub async fn device_credentials(&self, device_id: Uuid) -> StoreResult<Vec<Credential>> {
        on_backend!(self, device_credentials(device_id))
    }

    /// Running or failed sessions with no activity since `before`.
    pub async fn stale_issuances(
        &self,
        before: time::OffsetDateTime,
    ) -> StoreResult<Vec<IssuanceSession>> {
        on_backend!(self, stale_issuances(before))
    }

    /// Serial numbers (hex) and revocation times of revoked certificates.
    pub async fn revoked_certificates(&self) -> StoreResult<Vec<(String, time::OffsetDateTime)>> {
        on_backend!(self, revoked_certificates())
    }
}
