//! The device lifecycle in the store: what a device's move did to its
//! credentials (written in the move's transaction, see `lifecycle_repo.rs`),
//! the durable jobs that carry out what needs another service, and what a
//! CRL or an OCSP answer lists.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::changes::Change;
use crate::{Backend, Store, StoreResult};
use keyward_domain::{AuditDraft, RevocationReason};

/// The job that deletes a passkey at its Passkey-Enabled Service; its
/// payload names the credential (`{"credential": id}`).
pub const JOB_DELETE_PASSKEY: &str = "delete_passkey";

/// The job that ends a temporary device when its time is up; its payload
/// names the device (`{"device": id}`), due at the device's end.
pub const JOB_EXPIRE_TEMPORARY: &str = "expire_temporary_device";

/// The daily renewal scan (issue 17): requests the update of every device
/// with a certificate inside its renewal window, then writes the next scan
/// a day later. Target `renewals`, payload `{}`.
pub const JOB_RENEWAL_SCAN: &str = "renewal_scan";
/// Its target.
pub const RENEWALS_TARGET: &str = "renewals";

/// What the effects of a device's move did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EffectsDone {
    /// Certificates revoked for good (held ones included).
    pub revoked: u64,
    pub held: u64,
    pub released: u64,
    /// Jobs written (passkeys to delete).
    pub jobs: u64,
}

impl EffectsDone {
    pub fn add(&mut self, other: &EffectsDone) {
        self.revoked += other.revoked;
        self.held += other.held;
        self.released += other.released;
        self.jobs += other.jobs;
    }

    /// Something a CRL or OCSP answer shows changed.
    pub fn changes_revocation(&self) -> bool {
        self.revoked + self.held + self.released > 0
    }
}

/// A job to write with the change that causes it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    /// JSON; never a secret.
    pub payload: String,
    /// What it is about (`device:SERIAL`).
    pub target: String,
    pub not_before: OffsetDateTime,
}

keyward_domain::canonical_enum! {
    /// Where a job is.
    pub enum JobState (field = "state") {
        /// Waiting, running under a lease, or failed and waiting to be tried again.
        Pending = "pending", "Pending";
        Done = "done", "Done";
        /// Closed by an administrator: it will not run again.
        Closed = "closed", "Closed";
    }
}

/// A durable job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub payload: String,
    pub target: String,
    pub state: JobState,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_until: Option<OffsetDateTime>,
    pub leased_by: Option<String>,
    /// Why the last attempt failed (no secret).
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A revoked (or held) certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Hex.
    pub serial: String,
    pub at: OffsetDateTime,
    /// `None`: revoked before reasons were stored (cessationOfOperation).
    pub reason: Option<RevocationReason>,
}

impl Store {
    /// Writes a job on its own (with its audit record); the job runners
    /// hear of it.
    pub async fn enqueue_job(&self, job: &NewJob, audit: &AuditDraft) -> StoreResult<Uuid> {
        let key = self.key();
        let id = on_writer!(self, enqueue_job(&key, job, audit))?;
        self.publish(Change::Jobs).await;
        Ok(id)
    }

    /// Claims a due job for `lease` (none: nothing is due).
    pub async fn claim_job(&self, worker: &str, lease: time::Duration) -> StoreResult<Option<Job>> {
        on_writer!(self, claim_job(worker, lease))
    }

    /// A claimed job succeeded (`error` None), or failed and is tried again
    /// at `retry_at`.
    pub async fn finish_job(
        &self,
        id: Uuid,
        worker: &str,
        error: Option<&str>,
        retry_at: OffsetDateTime,
    ) -> StoreResult<()> {
        on_writer!(self, finish_job(id, worker, error, retry_at))
    }

    pub async fn list_jobs(
        &self,
        state: Option<JobState>,
        target: Option<&str>,
    ) -> StoreResult<Vec<Job>> {
        on_backend!(self, list_jobs(state, target))
    }

    pub async fn get_job(&self, id: Uuid) -> StoreResult<Job> {
        on_backend!(self, get_job(id))
    }

    /// Closes a pending job by hand (audited).
    pub async fn close_job(&self, id: Uuid, audit: &AuditDraft) -> StoreResult<()> {
        let key = self.key();
        on_writer!(self, close_job(&key, id, audit))
    }

    /// The next CRL number of `issuer` (at least `floor`), the same
    /// sequence for every node.
    pub async fn next_crl_number(&self, issuer: &str, floor: i64) -> StoreResult<i64> {
        on_writer!(self, next_crl_number(issuer, floor))
    }

    /// Every revoked or held certificate.
    pub async fn revocations(&self) -> StoreResult<Vec<Revocation>> {
        on_backend!(self, revocations())
    }

    /// One certificate's state by serial (hex): `None` when none is on
    /// record, `Some(None)` when it is valid.
    pub async fn certificate_status(
        &self,
        serial: &str,
    ) -> StoreResult<Option<Option<Revocation>>> {
        on_backend!(self, certificate_status(serial))
    }

    /// Every certificate on record with its device's serial.
    pub async fn certificates_with_devices(
        &self,
    ) -> StoreResult<Vec<(crate::Credential, keyward_domain::Serial)>> {
        on_backend!(self, certificates_with_devices())
    }

    /// Tells every node that revocations changed (their CRLs and OCSP).
    pub(crate) async fn revocations_changed(&self, done: &EffectsDone) {
        if done.changes_revocation() {
            self.publish(Change::Revocations).await;
        }
        if done.jobs > 0 {
            self.publish(Change::Jobs).await;
        }
    }
}

impl Store {
    /// Suspends or resumes an issued device (see `lifecycle_repo::set_suspended`).
    pub async fn set_device_suspended(
        &self,
        id: Uuid,
        expected_version: i64,
        suspend: bool,
        note: Option<&str>,
        audit: &AuditDraft,
    ) -> StoreResult<(keyward_domain::Device, EffectsDone)> {
        let key = self.key();
        let out = on_writer!(
            self,
            set_suspended(&key, id, expected_version, suspend, note, audit)
        )?;
        self.revocations_changed(&out.1).await;
        Ok(out)
    }

    /// The devices issued in place of `original` and not ended.
    pub async fn replacements_of(
        &self,
        original: Uuid,
    ) -> StoreResult<Vec<keyward_domain::Device>> {
        on_backend!(self, replacements_of(original))
    }

    /// Ends a temporary device whose time is up at `at`.
    pub async fn expire_temporary_device(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        audit: &AuditDraft,
    ) -> StoreResult<Option<keyward_domain::Device>> {
        let key = self.key();
        let (device, done) = on_writer!(self, expire_temporary_device(&key, id, at, audit))?;
        self.revocations_changed(&done).await;
        Ok(device)
    }
}
